"""Months over time: the window rule of retraining and backtests, and the months a source has."""
