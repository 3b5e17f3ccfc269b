"""Every message type survives ``parse(to_bytes(m))`` unchanged, for generated instances.

Strategies are derived from each model's fields and their pydantic constraints (hypothesis
cannot see ``Field(ge=1)`` or ``min_length`` through ``st.builds``), so optional fields are
exercised too. Values stay inside what JSON via orjson can carry: finite floats, 64-bit ints,
UTC datetimes with microseconds, JSON-able dicts for ``dict[str, Any]``.
"""

from __future__ import annotations

import functools
import re
import types
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel
from spine_contracts import (
    MESSAGE_TYPES,
    FlowDefinition,
    FlowNode,
    Message,
    NodeConfig,
    parse,
    to_bytes,
)

INT64 = (-(2**63), 2**63 - 1)

texts = st.text(max_size=12)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
utc_datetimes = st.datetimes(timezones=st.just(UTC))
json_scalars = st.none() | st.booleans() | st.integers(*INT64) | finite_floats | texts
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
json_objects = st.dictionaries(texts, json_values, max_size=3)
ids = st.from_regex(r"[A-Za-z0-9_.\-]{1,16}", fullmatch=True)


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        for attr in ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern"):
            value = getattr(item, attr, None)
            if value is not None:
                found[attr] = value
    return found


def _strings(metadata: list[Any]) -> st.SearchStrategy[str]:
    b = _bounds(metadata)
    lo, hi = b.get("min_length", 0), b.get("max_length")
    if "pattern" in b:
        pattern = b["pattern"]
        return st.from_regex(pattern, fullmatch=True).filter(
            lambda s: lo <= len(s) <= (hi or len(s)) and re.fullmatch(pattern, s) is not None
        )
    return st.text(min_size=lo, max_size=hi if hi is not None else max(lo, 12))


def _ints(metadata: list[Any]) -> st.SearchStrategy[int]:
    b = _bounds(metadata)
    lo = b["ge"] if "ge" in b else b["gt"] + 1 if "gt" in b else INT64[0]
    hi = b["le"] if "le" in b else b["lt"] - 1 if "lt" in b else INT64[1]
    return st.integers(lo, hi)


def _floats(metadata: list[Any]) -> st.SearchStrategy[float]:
    b = _bounds(metadata)
    return st.floats(
        min_value=b.get("ge", b.get("gt")),
        max_value=b.get("le", b.get("lt")),
        exclude_min="gt" in b,
        exclude_max="lt" in b,
        allow_nan=False,
        allow_infinity=False,
    )


def for_annotation(tp: Any, metadata: list[Any] | None = None) -> st.SearchStrategy[Any]:
    """A strategy of valid values for one field type and its pydantic constraints."""
    metadata = metadata or []
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extra = get_args(tp)
        return for_annotation(base, [*metadata, *extra])
    if origin is Union or origin is types.UnionType:
        return st.one_of(*(for_annotation(arg, metadata) for arg in get_args(tp)))
    if tp is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin is tuple:
        item, ellipsis = get_args(tp)
        assert ellipsis is Ellipsis, f"fixed-length tuples are not generated: {tp}"
        return st.lists(for_annotation(item), max_size=3).map(tuple)
    if origin is dict:
        key, value = get_args(tp)
        if value is Any:
            return json_objects
        return st.dictionaries(for_annotation(key), for_annotation(value), max_size=3)
    if tp is FlowDefinition:
        return flow_definitions()
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return models(tp)
    if tp is str:
        return _strings(metadata)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return _ints(metadata)
    if tp is float:
        return _floats(metadata)
    if tp is uuid.UUID:
        return st.uuids()
    if tp is AwareDatetime or tp is datetime:
        return utc_datetimes
    raise AssertionError(f"no strategy for {tp!r}; teach for_annotation about it")


@functools.cache
def models(cls: type[BaseModel]) -> st.SearchStrategy[Any]:
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for name, info in cls.model_fields.items():
        if issubclass(cls, Message) and name == "version":
            # A message carries the version its class writes; others are the upcasters' job.
            fields[name] = st.just(cls.VERSION)
        else:
            fields[name] = for_annotation(info.annotation, info.metadata)
    return st.builds(cls, **fields)


@st.composite
def node_configs(draw: st.DrawFn) -> NodeConfig:
    known = draw(
        st.fixed_dictionaries(
            {
                n: for_annotation(f.annotation, f.metadata)
                for n, f in NodeConfig.model_fields.items()
            }
        )
    )
    # NodeConfig passes unknown knobs to the agent, so they must survive the trip too.
    extra = draw(
        st.dictionaries(
            st.from_regex(r"[a-z_]{1,10}", fullmatch=True).filter(
                lambda k: k not in NodeConfig.model_fields
            ),
            json_values,
            max_size=2,
        )
    )
    return NodeConfig(**known, **extra)


@st.composite
def flow_definitions(draw: st.DrawFn) -> FlowDefinition:
    """Valid flows: unique node ids, dependencies only on earlier nodes, entry/exit among them."""
    node_ids = draw(st.lists(ids, min_size=1, max_size=4, unique=True))
    nodes = []
    for i, node_id in enumerate(node_ids):
        depends_on = draw(st.lists(st.sampled_from(node_ids[:i]), unique=True)) if i else []
        nodes.append(
            FlowNode(
                id=node_id,
                agent_id=draw(st.none() | ids),
                type="input" if i == 0 else draw(st.sampled_from(["processor", "conditional"])),
                depends_on=tuple(depends_on),
                when=draw(st.none() | texts),
                config=draw(node_configs()),
                metadata=draw(json_objects),
            )
        )
    return FlowDefinition(
        flow_id=draw(ids),
        name=draw(texts),
        description=draw(texts),
        version=draw(st.sampled_from(["1.0.0", "2.3.1"])),
        entry_point=draw(st.sampled_from([None, node_ids[0], (node_ids[0],)])),
        exit_points=draw(st.sampled_from([None, (node_ids[-1],)])),
        nodes=tuple(nodes),
        timeout=draw(st.none() | st.floats(min_value=0.001, max_value=86_400)),
        cost=draw(st.integers(0, 1_000)),
        metadata=draw(json_objects),
    )


ROUND_TRIP_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
MESSAGE_CASES = sorted(MESSAGE_TYPES)


def test_round_trip_covers_every_message_type() -> None:
    assert set(MESSAGE_CASES) == set(MESSAGE_TYPES)
    assert len(MESSAGE_CASES) == len({MESSAGE_TYPES[t] for t in MESSAGE_CASES})


@pytest.mark.parametrize("message_type", MESSAGE_CASES)
@ROUND_TRIP_SETTINGS
@given(data=st.data())
def test_round_trip(message_type: str, data: st.DataObject) -> None:
    cls = MESSAGE_TYPES[message_type]
    message = data.draw(models(cls), label=cls.__name__)

    raw = to_bytes(message)
    back = parse(raw)

    assert type(back) is cls
    assert back == message
    assert to_bytes(back) == raw


@ROUND_TRIP_SETTINGS
@given(flow=flow_definitions())
def test_flow_definition_round_trip_keeps_content_hash(flow: FlowDefinition) -> None:
    back = FlowDefinition.model_validate_json(flow.model_dump_json())

    assert back == flow
    assert back.content_hash() == flow.content_hash()
