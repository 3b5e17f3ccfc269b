"""Aggregates execution events into Prometheus metrics and a summary topic."""
