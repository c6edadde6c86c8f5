"""Benchmarks of the pipeline against the course's script: speed, memory, scale, overheads."""
