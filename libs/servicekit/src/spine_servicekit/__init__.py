"""The services' plumbing: projector base, transactional loop, PostgreSQL, runtime, rebuild.

What agents share with services (Kafka clients and settings, logging, ops, tracing) lives in
``spine_kafka``; ``spine_servicekit.kafka``, ``.logging``, ``.ops`` and ``.tracing`` are
those same modules under their old names.
"""
