"""Reliability battery: interrupted, resumed and concurrent runs (issue-style repros as tests)."""
