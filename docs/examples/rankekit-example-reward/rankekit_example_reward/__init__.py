"""Example rankekit plugin package: a custom reward (see rewards.py)."""
