"""Lineage: the MLflow record of the pipeline (record) and the tools that follow it (trace).

python -m lineage models:/nyc-taxi-trip-duration-minutes/latest --verify
"""
