"""The registry refuses what the relay could not serve safely (real Kafka and PostgreSQL):
a metadata endpoint, decimal and IPv4-mapped loopback, a name resolving to loopback, a
``file:`` endpoint and an unknown agent type change nothing and are dead-lettered with the
reason; a name that does not resolve yet is accepted (the relay's connect-time guard
judges it at each call)."""

from __future__ import annotations

import pytest
from crash.helpers import dead_letters, origin_of, publish_raw, registry_service
from spine_contracts import AgentInfo, AgentRegistered, RegisterAgent, topics
from spine_servicekit.kafka import KafkaConfig
from support import fresh_topics, read_to_end

pytestmark = pytest.mark.integration


def register(agent_id: str, endpoint: str, agent_type: str = "processor") -> RegisterAgent:
    info = AgentInfo(agent_id=agent_id, transport="http", endpoint=endpoint, agent_type=agent_type)
    return RegisterAgent.build(agent=info, owner="system")  # the admin's, as the gateway sends it


async def test_refused_registrations_are_dead_lettered_with_the_reason(
    kafka: KafkaConfig, database_url: str, pg_schema: str
) -> None:
    cfg = await fresh_topics(kafka)
    refused = {
        "meta": (
            register("meta", "http://169.254.169.254/latest/meta-data"),
            "refused to connect to 169.254.169.254: cloud metadata address, "
            "not allowed by SPINE_RELAY_ALLOWED_NETWORKS",
        ),
        "decimal": (
            register("decimal", "http://2130706433:8101"),
            "2130706433 (127.0.0.1): loopback address",
        ),
        "mapped": (
            register("mapped", "http://[::ffff:127.0.0.1]:8101"),
            "::ffff:127.0.0.1: IPv4-mapped loopback address",
        ),
        "name": (  # a host name that resolves to a refused address
            register("name", "http://localhost:8101"),
            "refused to connect to localhost (127.0.0.1): loopback address",
        ),
        "file": (
            register("file", "file:///etc/passwd"),
            "only http and https endpoints are accepted",
        ),
        "boss": (
            register("boss", "http://agent.invalid", agent_type="superuser"),
            "agent_type 'superuser' is not one of",
        ),
    }
    accepted = register("later", "http://agent-not-yet-in-dns.invalid:8080")
    items = [(k, cmd, None) for k, (cmd, _) in refused.items()] + [("later", accepted, None)]
    async with registry_service(cfg, database_url, pg_schema):
        metas = await publish_raw(cfg, cfg.topic(topics.REGISTRY_REQUESTS), items)
        for meta, (_cmd, reason) in zip(metas, refused.values(), strict=False):
            [letter] = await dead_letters(cfg, origin_of(meta))
            assert letter.data.error_type == "RegistrationRefused"
            assert reason in letter.data.error, letter.data.error
        entries = await read_to_end(cfg, topics.REGISTRY_EVENTS, at_least=1)
    assert [(type(m), m.data.agent.agent_id) for m in entries] == [(AgentRegistered, "later")]
