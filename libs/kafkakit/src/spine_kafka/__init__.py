"""What every process on the bus needs, a service or an agent: Kafka clients and settings,
logging, the ops endpoint, the event loop, and tracing (with the ``otel`` extra).

It depends on neither PostgreSQL nor Redis, so an agent installs it without them; the
services' plumbing (projections, the transactional loop) is ``spine_servicekit``, which
builds on this.

* :mod:`spine_kafka.settings` — ``KafkaSettings``, ``ProcessSettings``, ``load_settings``;
* :mod:`spine_kafka.security` — ``KafkaSecurity``: how every client logs in (SASL/TLS)
  and its aiokafka arguments;
* :mod:`spine_kafka.clients` — ``KafkaConfig``, producer/consumer/admin factories, topics,
  ``Incoming``/``Outgoing``, dead letters;
* :mod:`spine_kafka.logging` — structlog set-up;
* :mod:`spine_kafka.ops` — ``/metrics``, ``/health``, ``/ready`` and the shared metrics;
* :mod:`spine_kafka.aio` — ``run_loop`` (uvloop), ``wait_any``;
* :mod:`spine_kafka.tracing` — OpenTelemetry across the bus; importable only with the
  ``otel`` extra (``spine-kafkakit[otel]``).
"""
