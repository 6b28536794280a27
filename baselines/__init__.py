"""Baseline federated methods; every module here registers one or more Algorithms by name."""
