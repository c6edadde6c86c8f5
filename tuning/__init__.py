"""Hyperparameter search with Optuna over the features the pipeline built (flows.tune)."""
