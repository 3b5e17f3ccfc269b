"""Shared plumbing: settings, logging, Kafka clients, projector base, transactional loop."""
