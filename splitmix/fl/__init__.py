"""Federated core: the engine that drives rounds, the Algorithm interface, aggregation."""
