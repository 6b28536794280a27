"""Reliability battery: bad inputs, corrupt files, interrupted, resumed and concurrent runs, each
with its one-line error (issue-style repros as tests)."""
