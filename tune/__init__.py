"""Hyper-parameter search: search spaces, schedulers and divergence stoppers (Ray Tune + Optuna)."""
