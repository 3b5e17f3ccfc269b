"""The AsyncAPI 3.0 document of every topic, and of the gateway's WebSockets, generated from
the registries (``topics``, ``sockets``).

The committed ``docs/asyncapi.yaml`` is this module's output, so agent authors can read what to
subscribe to without reading Python. Regenerate it with ``make asyncapi``; CI runs
``--check`` so a contract change cannot land without the document. The output depends only on
the code (no timestamps, fixed key order), so it is byte-stable between runs.

    python -m spine_contracts.asyncapi                 # print to stdout
    python -m spine_contracts.asyncapi --write PATH    # (re)write the document
    python -m spine_contracts.asyncapi --check PATH    # exit 1 if PATH is stale
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from . import sockets, topics
from .envelope import Message
from .sockets import CLOSE_MEANINGS, SocketSpec
from .topics import TopicSpec

# A JSON Schema or AsyncAPI object: genuinely free-form, so ``Any`` is the honest type here.
JSONObject = dict[str, Any]

ASYNCAPI_VERSION = "3.0.0"
KAFKA_BINDING_VERSION = "0.5.0"
WS_BINDING_VERSION = "0.1.0"
CONTENT_TYPE = "application/json"
SCHEMA_REF = "#/components/schemas/{model}"

# Keys the Kafka channel binding 0.5.0 allows in ``topicConfiguration``.
_TOPIC_CONFIG_KEYS = frozenset(
    {
        "cleanup.policy",
        "retention.ms",
        "retention.bytes",
        "delete.retention.ms",
        "max.message.bytes",
    }
)
_PARAMETER = re.compile(r"\{(\w+)\}")

_DESCRIPTION = """\
Every Kafka topic of AI Spine with the messages it carries. Generated from `spine_contracts` \
by `python -m spine_contracts.asyncapi` (`make asyncapi`); do not edit by hand.

Every message is a UTF-8 JSON object in one envelope: `message_id` (UUID, the idempotency key), \
`type` (the discriminator, e.g. `execution.node_completed`), `version` (readers accept older \
versions), `occurred_at` (UTC), `correlation_id`, `causation_id`, `tenant_id`, `trace` (W3C \
traceparent) and the typed body in `data`. Python readers call `spine_contracts.parse(bytes)`.

Topic names may carry an installation prefix (`SPINE_TOPIC_PREFIX`) in front of the addresses \
below. Partition counts not given here follow the deployment; the co-partitioned topics \
(`x-co-partitioned`) always share one count and the key `execution_id`.

The gateway's WebSockets (server `gateway`) are here too, since OpenAPI cannot describe them: \
their frames, their authentication and their close codes (`x-close-codes`).
"""


def channel_id(spec: TopicSpec) -> str:
    """``spine.executions.commands`` → ``executionsCommands``; parameters are dropped."""
    parts = [p for p in spec.base.split(".")[1:] if not _PARAMETER.fullmatch(p)]
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])


def _message_name(cls: type[Message]) -> str:
    return cls.__name__


def _message_type(cls: type[Message]) -> str:
    return str(cls.model_fields["type"].default)


def _summary(cls: type[Message]) -> str | None:
    body = cls.model_fields["data"].annotation
    for doc in (cls.__dict__.get("__doc__"), getattr(body, "__dict__", {}).get("__doc__")):
        if isinstance(doc, str) and doc.strip():
            return doc.strip().splitlines()[0]
    return None


def _merge_schemas(into: dict[str, JSONObject], defs: dict[str, JSONObject], owner: str) -> None:
    """Add one model's ``$defs``; two different models under one name are an error."""
    for name, schema in defs.items():
        existing = into.setdefault(name, schema)
        if existing != schema:
            raise ValueError(
                f"schema name {name!r} (used by {owner}) means two different models; "
                "rename one so components/schemas stays unambiguous"
            )


def _message(cls: type[Message], spec: TopicSpec, schemas: dict[str, JSONObject]) -> JSONObject:
    payload = cls.model_json_schema(ref_template=SCHEMA_REF)
    _merge_schemas(schemas, payload.pop("$defs", {}), cls.__name__)
    message: JSONObject = {"name": _message_type(cls), "title": cls.__name__}
    summary = _summary(cls)
    if summary:
        message["summary"] = summary
    message["contentType"] = CONTENT_TYPE
    message["payload"] = payload
    message["bindings"] = {
        "kafka": {
            "key": {"type": "string", "description": f"the message's {spec.key}"},
            "bindingVersion": KAFKA_BINDING_VERSION,
        }
    }
    message["x-version"] = cls.VERSION
    return message


def _topic_configuration(spec: TopicSpec) -> JSONObject:
    config: JSONObject = {}
    for key, value in spec.kafka_config().items():
        if key == "cleanup.policy":
            config[key] = value.split(",")
        elif key in _TOPIC_CONFIG_KEYS:
            config[key] = int(value)
    return config


def _channel(spec: TopicSpec) -> JSONObject:
    parameters = _PARAMETER.findall(spec.base)
    description = f"{spec.description}\n\nKey: `{spec.key}`. Retention: {spec.retention_label}."
    if spec.co_partitioned:
        others = ", ".join(f"`{t.base}`" for t in topics.ALL if t.co_partitioned and t is not spec)
        description += f" Co-partitioned (same key, same partition count) with {others}."
    channel: JSONObject = {
        "address": spec.base,
        "title": spec.base,
        "description": description,
        "messages": {
            _message_name(cls): {"$ref": f"#/components/messages/{_message_name(cls)}"}
            for cls in spec.messages
        },
    }
    if parameters:
        channel["parameters"] = {
            name: {"$ref": f"#/components/parameters/{name}"} for name in parameters
        }
    kafka: JSONObject = {}
    if not parameters:
        kafka["topic"] = spec.base
    if spec.partitions is not None:
        kafka["partitions"] = spec.partitions
    kafka["topicConfiguration"] = _topic_configuration(spec)
    kafka["bindingVersion"] = KAFKA_BINDING_VERSION
    channel["servers"] = [{"$ref": "#/servers/kafka"}]
    channel["bindings"] = {"kafka": kafka}
    channel["x-key"] = spec.key
    channel["x-retention"] = spec.retention_label
    channel["x-co-partitioned"] = spec.co_partitioned
    return channel


def _operations(spec: TopicSpec) -> dict[str, JSONObject]:
    cid = channel_id(spec)
    name = cid[:1].upper() + cid[1:]
    refs = [{"$ref": f"#/channels/{cid}/messages/{_message_name(cls)}"} for cls in spec.messages]
    send: JSONObject = {
        "action": "send",
        "channel": {"$ref": f"#/channels/{cid}"},
        "summary": f"Publish to {spec.base}.",
        "messages": refs,
    }
    receive: JSONObject = {
        "action": "receive",
        "channel": {"$ref": f"#/channels/{cid}"},
        "summary": f"Consume {spec.base}.",
        "messages": refs,
    }
    if spec is topics.AGENT_TASKS:
        receive["bindings"] = {
            "kafka": {
                "groupId": {
                    "type": "string",
                    "description": "the agent_id: an agent's replicas share one consumer group",
                },
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        }
    return {f"send{name}": send, f"receive{name}": receive}


def _parameters() -> dict[str, JSONObject]:
    return {
        "agent_id": {
            "description": (
                "The agent's id, as registered; it must match "
                f"`{topics._AGENT_ID.pattern}` (see `spine_contracts.topics.agent_tasks`)."
            ),
            "examples": ["summarizer"],
        }
    }


def _servers() -> JSONObject:
    return {
        "kafka": {
            "host": "localhost:9092",
            "protocol": "kafka",
            "description": "The bus (KAFKA_BOOTSTRAP_SERVERS); SASL as the deployment sets.",
        },
        "gateway": {
            "host": "localhost:8000",
            "protocol": "ws",
            "pathname": "/api/v1",
            "description": (
                "The HTTP gateway's WebSockets (`wss` behind TLS); every path is served at "
                "the root too."
            ),
            "security": [{"$ref": "#/components/securitySchemes/apiKey"}],
        },
    }


def _security_schemes() -> JSONObject:
    return {
        "apiKey": {
            "type": "httpApiKey",
            "name": "Authorization",
            "in": "header",
            "description": (
                "`Bearer <key>` on the upgrade request, or (browsers cannot set headers on "
                "a WebSocket) a first `SocketAuth` message; see each channel."
            ),
        }
    }


def _socket_message(cls: type[BaseModel]) -> JSONObject:
    payload = cls.model_json_schema(ref_template=SCHEMA_REF)
    if "$defs" in payload:
        raise ValueError(f"{cls.__name__}: a socket frame's schema must be self-contained")
    doc = (cls.__doc__ or "").strip()
    message: JSONObject = {"name": cls.__name__, "title": cls.__name__}
    if doc:
        message["summary"] = " ".join(doc.split())
    message["contentType"] = CONTENT_TYPE
    message["payload"] = payload
    return message


def _socket_channel(spec: SocketSpec) -> JSONObject:
    codes = "\n".join(f"- {int(c)}: {CLOSE_MEANINGS[c]}" for c in spec.close_codes)
    channel: JSONObject = {
        "address": spec.path,
        "title": spec.title,
        "description": f"{spec.description}\n\nClose codes:\n{codes}",
        "servers": [{"$ref": "#/servers/gateway"}],
        "messages": {cls.__name__: _socket_message(cls) for cls in (*spec.sends, *spec.receives)},
    }
    if spec.parameters:
        channel["parameters"] = {
            name: {"description": text} for name, text in spec.parameters.items()
        }
    channel["bindings"] = {
        "ws": {
            "method": "GET",
            "query": spec.query,
            "headers": {
                "type": "object",
                "properties": {"Authorization": {"type": "string", "description": "Bearer <key>"}},
            },
            "bindingVersion": WS_BINDING_VERSION,
        }
    }
    channel["x-close-codes"] = {str(int(c)): CLOSE_MEANINGS[c] for c in spec.close_codes}
    return channel


def _socket_operations(spec: SocketSpec) -> dict[str, JSONObject]:
    """What the gateway does on the socket: send its frames, receive the client's."""
    name = spec.channel_id[:1].upper() + spec.channel_id[1:]
    operations: dict[str, JSONObject] = {}
    for action, models in (("send", spec.sends), ("receive", spec.receives)):
        if models:
            operations[f"{action}{name}"] = {
                "action": action,
                "channel": {"$ref": f"#/channels/{spec.channel_id}"},
                "summary": f"The gateway {action}s on {spec.path}.",
                "messages": [
                    {"$ref": f"#/channels/{spec.channel_id}/messages/{cls.__name__}"}
                    for cls in models
                ],
            }
    return operations


def document() -> JSONObject:
    """The whole AsyncAPI document as plain data, in a fixed key order."""
    channels: JSONObject = {}
    operations: JSONObject = {}
    messages: JSONObject = {}
    schemas: dict[str, JSONObject] = {}
    for spec in topics.ALL:
        cid = channel_id(spec)
        if cid in channels:
            raise ValueError(f"two topics map to the channel id {cid!r}")
        channels[cid] = _channel(spec)
        operations.update(_operations(spec))
        for cls in spec.messages:
            name = _message_name(cls)
            found = _message(cls, spec, schemas)
            # one component per message: a message on two topics must read the same on both
            if messages.setdefault(name, found) != found:
                raise ValueError(f"message name {name!r} is used twice, differently")
    for socket in sockets.ALL:
        if socket.channel_id in channels:
            raise ValueError(f"two channels have the id {socket.channel_id!r}")
        channels[socket.channel_id] = _socket_channel(socket)
        operations.update(_socket_operations(socket))
    declared = {p for spec in topics.ALL for p in _PARAMETER.findall(spec.base)}
    parameters = {k: v for k, v in _parameters().items() if k in declared}
    if missing := declared - parameters.keys():
        raise ValueError(f"no description for channel parameters {sorted(missing)}")
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "AI Spine",
            "version": package_version("spine-contracts"),
            "description": _DESCRIPTION,
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": _servers(),
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": dict(sorted(schemas.items())),
            "parameters": parameters,
            "securitySchemes": _security_schemes(),
        },
    }


class _Dumper(yaml.SafeDumper):
    """Never emits anchors/aliases: shared dicts are written out, so readers need no YAML tricks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # Multi-line descriptions as literal blocks read far better than escaped one-liners.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)

_HEADER = (
    "# Generated by `python -m spine_contracts.asyncapi --write docs/asyncapi.yaml`"
    " (make asyncapi).\n# Do not edit by hand: change libs/contracts and regenerate.\n"
)


def render() -> str:
    """The document as YAML text; identical for identical code."""
    body = yaml.dump(
        document(),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=100,
    )
    return _HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spine_contracts.asyncapi",
        description="Generate the AsyncAPI 3.0 document of every AI Spine topic.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", metavar="PATH", type=Path, help="exit 1 if PATH is stale")
    mode.add_argument("--write", metavar="PATH", type=Path, help="write the document to PATH")
    args = parser.parse_args(argv)
    text = render().encode("utf-8")
    if args.write is not None:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        args.write.write_bytes(text)
        return 0
    if args.check is not None:
        current = args.check.read_bytes() if args.check.is_file() else None
        if current != text:
            state = "is missing" if current is None else "is out of date"
            print(
                f"{args.check} {state} with spine_contracts; run `make asyncapi` to regenerate it",
                file=sys.stderr,
            )
            return 1
        return 0
    sys.stdout.buffer.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
