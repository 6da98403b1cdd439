"""Ladder: calibrate, prune at every granularity, evaluate, and route a causal LM."""
