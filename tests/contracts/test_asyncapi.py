"""The committed AsyncAPI document is current, complete and stable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from spine_contracts import MESSAGE_TYPES, sockets, topics
from spine_contracts.asyncapi import channel_id, document, main, render
from spine_contracts.sockets import CLOSE_MEANINGS, CloseCode

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.yaml"


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    return document()


@pytest.fixture(scope="module")
def rendered() -> str:
    return render()


def test_committed_document_is_current(rendered: str) -> None:
    assert COMMITTED.is_file(), "docs/asyncapi.yaml is missing; run `make asyncapi`"
    assert COMMITTED.read_text(encoding="utf-8") == rendered, (
        "docs/asyncapi.yaml is stale; run `make asyncapi` and commit the result"
    )


def test_output_is_byte_stable_across_processes(rendered: str) -> None:
    # Another interpreter with another hash seed: no set or dict-order luck in the output.
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    out = subprocess.run(
        [sys.executable, "-m", "spine_contracts.asyncapi"],
        env=env,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert out == rendered.encode("utf-8")
    assert render() == rendered


def test_yaml_loads_back_to_the_document(doc: dict[str, Any], rendered: str) -> None:
    assert yaml.safe_load(rendered) == doc


def test_document_header(doc: dict[str, Any]) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] == "AI Spine"
    assert doc["info"]["version"]
    assert doc["defaultContentType"] == "application/json"


def _kafka_channels(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: c for k, c in doc["channels"].items() if "kafka" in c["bindings"]}


def test_one_channel_per_topic(doc: dict[str, Any]) -> None:
    channels = _kafka_channels(doc)
    assert len(channels) == len(topics.ALL)
    assert [c["address"] for c in channels.values()] == [spec.base for spec in topics.ALL]
    assert set(doc["channels"]) == set(channels) | {s.channel_id for s in sockets.ALL}


@pytest.mark.parametrize("spec", topics.ALL, ids=lambda s: s.base)
def test_channel_describes_its_topic(doc: dict[str, Any], spec: topics.TopicSpec) -> None:
    channel = doc["channels"][channel_id(spec)]
    kafka = channel["bindings"]["kafka"]

    assert spec.description in channel["description"]
    assert f"`{spec.key}`" in channel["description"]
    assert spec.retention_label in channel["description"]
    assert channel["x-key"] == spec.key
    assert channel["x-retention"] == spec.retention_label
    assert channel["x-co-partitioned"] == spec.co_partitioned
    assert kafka["topicConfiguration"]["cleanup.policy"] == [spec.cleanup_policy]
    if spec.cleanup_policy == "delete":
        assert kafka["topicConfiguration"]["retention.ms"] == spec.retention_ms
    assert kafka.get("partitions") == spec.partitions
    assert list(channel["messages"]) == [cls.__name__ for cls in spec.messages]
    for cls in spec.messages:
        key = doc["components"]["messages"][cls.__name__]["bindings"]["kafka"]["key"]
        assert spec.key in key["description"]


def test_agent_tasks_channel_is_parameterised(doc: dict[str, Any]) -> None:
    channel = doc["channels"][channel_id(topics.AGENT_TASKS)]
    assert channel["address"] == "spine.agents.{agent_id}.tasks"
    assert set(channel["parameters"]) == {"agent_id"}
    assert "topic" not in channel["bindings"]["kafka"]
    assert set(doc["components"]["parameters"]) == {"agent_id"}
    for spec in topics.STATIC:
        assert "parameters" not in doc["channels"][channel_id(spec)]


def test_every_channel_has_a_send_and_a_receive_operation(doc: dict[str, Any]) -> None:
    seen: dict[str, set[str]] = {}
    for operation in doc["operations"].values():
        cid = operation["channel"]["$ref"].removeprefix("#/channels/")
        seen.setdefault(cid, set()).add(operation["action"])
        declared = set(doc["channels"][cid]["messages"])
        carried = {m["$ref"].rsplit("/", 1)[1] for m in operation["messages"]}
        # a topic carries its messages both ways; a socket's frames each go one way
        assert carried == declared if cid in _kafka_channels(doc) else carried < declared
    assert seen == {channel_id(spec): {"send", "receive"} for spec in topics.ALL} | {
        s.channel_id: {"send", "receive"} for s in sockets.ALL
    }


def test_the_execution_websocket_is_described(doc: dict[str, Any]) -> None:
    """OpenAPI cannot describe a WebSocket: its path, frames, auth and close codes are here."""
    channel = doc["channels"]["executionSocket"]
    assert channel["address"] == "/executions/{execution_id}/ws"
    assert channel["servers"] == [{"$ref": "#/servers/gateway"}]
    assert doc["servers"]["gateway"]["protocol"] == "ws"
    assert set(channel["parameters"]) == {"execution_id"}
    assert set(channel["bindings"]["ws"]["query"]["properties"]) == {"after"}
    frame = channel["messages"]["ExecutionEventFrame"]["payload"]
    assert frame["required"] == ["seq", "type", "data", "occurred_at"]
    auth = channel["messages"]["SocketAuth"]["payload"]
    assert auth["properties"]["type"]["const"] == "auth" and auth["required"] == ["api_key"]
    assert channel["x-close-codes"] == {str(int(c)): CLOSE_MEANINGS[c] for c in CloseCode}
    for code in (1000, 4401, 4403, 4404, 4429):
        assert f"- {code}: " in channel["description"]
    for spec in topics.ALL:  # every topic is on the bus, not the gateway
        assert doc["channels"][channel_id(spec)]["servers"] == [{"$ref": "#/servers/kafka"}]


def test_every_message_type_is_a_component(doc: dict[str, Any]) -> None:
    messages = doc["components"]["messages"]
    assert {m["name"] for m in messages.values()} == set(MESSAGE_TYPES)
    for message_type, cls in MESSAGE_TYPES.items():
        message = messages[cls.__name__]
        assert message["name"] == message_type
        assert message["payload"]["properties"]["type"]["const"] == message_type
        assert message["x-version"] == cls.VERSION
        assert "$defs" not in message["payload"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_every_reference_resolves(doc: dict[str, Any]) -> None:
    refs = set(_refs(doc))
    assert refs
    for ref in refs:
        assert ref.startswith("#/"), ref
        node: Any = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]


def test_every_schema_is_used(doc: dict[str, Any]) -> None:
    refs = set(_refs(doc))
    unused = [n for n in doc["components"]["schemas"] if f"#/components/schemas/{n}" not in refs]
    assert unused == []


def test_check_passes_on_a_fresh_file_and_fails_on_a_stale_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "docs" / "asyncapi.yaml"

    assert main(["--check", str(path)]) == 1
    assert "make asyncapi" in capsys.readouterr().err

    assert main(["--write", str(path)]) == 0
    assert main(["--check", str(path)]) == 0

    path.write_text(path.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    assert main(["--check", str(path)]) == 1
    assert "run `make asyncapi`" in capsys.readouterr().err


def test_stdout_mode_prints_the_document(
    capsysbinary: pytest.CaptureFixture[bytes], rendered: str
) -> None:
    assert main([]) == 0
    assert capsysbinary.readouterr().out == rendered.encode("utf-8")
