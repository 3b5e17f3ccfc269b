"""Adapters: Kafka (commands out, replies and heartbeats in), PostgreSQL (read model), Redis."""
