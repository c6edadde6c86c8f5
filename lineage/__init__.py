"""Lineage: the tools that follow the pipeline's MLflow record (its scheme is
stage_runtime.record): back to the raw files (trace), forward to what used some bytes
(used_by).

python -m lineage models:/nyc-taxi-trip-duration-minutes/latest --verify
python -m lineage --used-by data/raw/green_tripdata_2024-02.parquet
"""
