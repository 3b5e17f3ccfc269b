"""No Kafka client is built outside the factories, so none connects without the login.

DESIGN §12: every Kafka client, admin clients included, takes its security settings from
``KafkaConfig``. A client built from ``bootstrap_servers`` alone would work against today's
open broker and fail only on a secured one; this scan of the source tree fails first. It
reads the syntax tree (aliases, ``aiokafka.X(...)`` and subclasses included), not text.

The few modules that may call aiokafka's constructors themselves must pass
``**<security kwargs>`` in every call.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("libs", "services", "agents", "scripts", "tests", "bench", "deploy")
CLIENTS = frozenset(
    {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient", "AIOKafkaClient"}
)
#: module -> why it may call aiokafka itself (each call must still spread the security)
ALLOWED = {
    "libs/kafkakit/src/spine_kafka/clients.py": "the factories",
    "bench/floor.py": "the frozen floor: bare aiokafka by design",
    "bench/kafka_roundtrip.py": "measures aiokafka's own defaults beside ours",
}


def client_constructions(source: str) -> list[tuple[int, str, bool]]:
    """``(line, client class, spreads security)`` for each aiokafka client built or
    subclassed in ``source``, by line; "spreads security": a ``**`` argument naming it."""
    return sorted(_constructions(ast.parse(source)))


def _constructions(tree: ast.Module) -> Iterator[tuple[int, str, bool]]:
    names = {name: name for name in CLIENTS}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name in CLIENTS and alias.asname:
                    names[alias.asname] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            target = _client(node.func, names)
            if target:
                spread = any(
                    k.arg is None and "security" in ast.unparse(k.value) for k in node.keywords
                )
                yield node.lineno, target, spread
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                target = _client(base, names)
                if target:
                    yield node.lineno, f"subclass of {target}", False


def _client(node: ast.expr, names: dict[str, str]) -> str | None:
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute) and node.attr in CLIENTS:
        return node.attr
    return None


def _sources() -> Iterator[Path]:
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if not {".venv", "node_modules", "__pycache__"} & set(path.parts):
                yield path


def test_no_kafka_client_is_built_outside_the_factories() -> None:
    found: dict[str, list[tuple[int, str, bool]]] = {}
    for path in _sources():
        hits = client_constructions(path.read_text(encoding="utf-8"))
        if hits:
            found[path.relative_to(ROOT).as_posix()] = hits
    outside = [
        f"{module}:{line}: {cls}"
        for module, hits in found.items()
        if module not in ALLOWED
        for line, cls, _ in hits
    ]
    assert not outside, (
        "build Kafka clients with spine_kafka.clients.make_producer/make_consumer/make_admin "
        "(they carry KafkaConfig.security):\n  " + "\n  ".join(outside)
    )
    bare = [
        f"{module}:{line}: {cls}"
        for module, hits in found.items()
        for line, cls, spread in hits
        if not spread
    ]
    assert not bare, "pass **<KafkaSecurity.client_kwargs()> to:\n  " + "\n  ".join(bare)
    # the scan sees the factories themselves, so an empty result is not a blind scanner
    assert len(found.get("libs/kafkakit/src/spine_kafka/clients.py", ())) == 3
    assert set(found) <= set(ALLOWED)


def test_the_scan_sees_aliases_attributes_and_subclasses() -> None:
    source = """
import aiokafka
from aiokafka import AIOKafkaConsumer as Consumer
from aiokafka.admin import AIOKafkaAdminClient

aiokafka.AIOKafkaProducer(bootstrap_servers="k")
Consumer("t", bootstrap_servers="k", **cfg.security.client_kwargs())
AIOKafkaAdminClient(bootstrap_servers="k", **options)

class Mine(aiokafka.AIOKafkaConsumer):
    pass

make_producer(cfg)
"""
    assert client_constructions(source) == [
        (6, "AIOKafkaProducer", False),
        (7, "AIOKafkaConsumer", True),
        (8, "AIOKafkaAdminClient", False),
        (10, "subclass of AIOKafkaConsumer", False),
    ]
