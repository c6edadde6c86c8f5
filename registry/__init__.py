"""The model registry's conventions: champion and challenger (registry.champion)."""
