"""Every factory hands its config's security to aiokafka, and none lets a caller drop it.

Faked at the boundary: the aiokafka classes the factories call are replaced by a recorder,
so the arguments each client would be built with are checked without a broker.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import SecretStr
from spine_kafka import clients
from spine_kafka.clients import KafkaConfig, make_admin, make_consumer, make_producer
from spine_kafka.security import KafkaSecurity

SASL = KafkaSecurity(
    security_protocol="SASL_PLAINTEXT",
    sasl_username="orchestrator",
    sasl_password=SecretStr("s3cret"),
)
WANTED = {
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "orchestrator",
    "sasl_plain_password": "s3cret",
}
CFG = KafkaConfig("k:9092", client_id="orchestrator", security=SASL)


class _Recorder:
    def __init__(self, *topics: str, **kwargs: Any) -> None:
        self.topics = topics
        self.kwargs = kwargs


@pytest.fixture(autouse=True)
def _record(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"):
        monkeypatch.setattr(clients, name, type(name, (_Recorder,), {}))


def _kwargs(client: object) -> dict[str, Any]:
    assert isinstance(client, _Recorder)
    return client.kwargs


@pytest.mark.parametrize(
    "build",
    [
        lambda: make_producer(CFG),
        lambda: make_producer(CFG, transactional_id="orchestrator-0"),
        lambda: make_consumer(CFG, "topic", group_id="orchestrator"),
        lambda: make_consumer(CFG.background(), group_id=None),
        lambda: make_admin(CFG),
        lambda: make_admin(CFG, client_id="gateway-lag"),
    ],
    ids=["producer", "transactional", "consumer", "background", "admin", "admin-named"],
)
def test_every_factory_passes_the_security_of_its_config(build: Any) -> None:
    kwargs = _kwargs(build())
    assert {k: kwargs[k] for k in WANTED} == WANTED
    assert kwargs["bootstrap_servers"] == "k:9092"


def test_the_admin_client_takes_the_config_s_client_id_unless_named() -> None:
    assert _kwargs(make_admin(CFG))["client_id"] == "orchestrator"
    assert _kwargs(make_admin(CFG, client_id="gateway-lag"))["client_id"] == "gateway-lag"


def test_plaintext_is_said_explicitly() -> None:
    plain = KafkaConfig("k:9092", security=KafkaSecurity())
    for client in (make_producer(plain), make_consumer(plain, group_id=None), make_admin(plain)):
        assert _kwargs(client)["security_protocol"] == "PLAINTEXT"
        assert "sasl_plain_password" not in _kwargs(client)


def test_an_override_cannot_replace_the_login() -> None:
    with pytest.raises(TypeError, match="security_protocol"):
        make_producer(CFG, security_protocol="PLAINTEXT")
    with pytest.raises(TypeError, match="sasl_plain_password"):
        make_consumer(CFG, group_id=None, sasl_plain_password="guess")


def test_a_config_without_security_cannot_be_built() -> None:
    with pytest.raises(TypeError, match="security"):
        KafkaConfig("k:9092")  # type: ignore[call-arg]


def test_derived_configs_keep_the_security() -> None:
    assert CFG.background().security == SASL and CFG.batched().security == SASL
