"""The demo agents that ship with AI Spine (docs/agents.md): real agents over the real bus.

* :mod:`.zoe` — conversational intake: asks for the missing ``required_fields``.
* :mod:`.eddie` — deterministic credit-risk scoring.
* :mod:`.echo` — returns its input; knobs for tests and benchmarks.
* :mod:`.echo_http` — the original HTTP agent contract, for the registry's relay.
"""
