"""A principal's ACL bindings on the broker, reconciled with the table (:mod:`.acls`).

:func:`apply` makes the broker hold exactly the wanted bindings for the principal: it adds
the missing ones and deletes the others, so issuing again after a change of the table
also takes back what the table no longer grants. Then it waits until the broker's own
answer (DescribeAcls) shows the result: the authorizer follows the metadata log, and a
client that connects right after issuing must not meet a missing ACL.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from typing import Any, cast

from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
)

from .acls import Acl
from .connection import Broker


@dataclass(frozen=True)
class Applied:
    created: int
    deleted: int


def kafka_principal(name: str) -> str:
    return f"User:{name}"


def to_binding(principal: str, acl: Acl) -> AclBinding:
    return AclBinding(
        ResourceType[acl.resource_type],
        acl.name,
        ResourcePatternType[acl.pattern_type],
        kafka_principal(principal),
        "*",
        AclOperation[acl.operation],
        AclPermissionType[acl.permission],
    )


def _name(value: object) -> str:
    return value.name if isinstance(value, Enum) else str(value)


def _to_acl(binding: AclBinding) -> Acl:
    return Acl(
        cast(Any, _name(binding.restype)),
        cast(Any, _name(binding.resource_pattern_type)),
        binding.name,
        cast(Any, _name(binding.operation)),
        cast(Any, _name(binding.permission_type)),
    )


def _everything_of(principal: str) -> AclBindingFilter:
    return AclBindingFilter(
        ResourceType.ANY,
        None,  # type: ignore[arg-type]  # None matches any name
        ResourcePatternType.ANY,
        kafka_principal(principal),
        None,  # type: ignore[arg-type]  # any host
        AclOperation.ANY,
        AclPermissionType.ANY,
    )


def _filter(binding: AclBinding) -> AclBindingFilter:
    return AclBindingFilter(
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.principal,
        binding.host,
        binding.operation,
        binding.permission_type,
    )


def current(broker: Broker, principal: str) -> set[Acl]:
    """The principal's bindings as the broker answers them."""
    future = broker.client.describe_acls(
        _everything_of(principal), request_timeout=broker.timeout_s
    )
    found: list[AclBinding] = future.result(timeout=broker.timeout_s)
    return {_to_acl(b) for b in found if b.host == "*"}


def principals_with_acls(broker: Broker) -> set[str]:
    """Every principal name (without ``User:``) that holds at least one binding."""
    everyone = AclBindingFilter(
        ResourceType.ANY,
        None,  # type: ignore[arg-type]  # None matches any name
        ResourcePatternType.ANY,
        None,  # type: ignore[arg-type]  # any principal
        None,  # type: ignore[arg-type]  # any host
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    future = broker.client.describe_acls(everyone, request_timeout=broker.timeout_s)
    found: list[AclBinding] = future.result(timeout=broker.timeout_s)
    return {b.principal.removeprefix("User:") for b in found if b.principal.startswith("User:")}


def apply(broker: Broker, principal: str, wanted: Iterable[Acl]) -> Applied:
    want = set(wanted)
    have = current(broker, principal)
    extra = sorted(have - want)
    missing = sorted(want - have)
    if missing:
        futures = broker.client.create_acls(
            [to_binding(principal, a) for a in missing], request_timeout=broker.timeout_s
        )
        for future in futures.values():
            future.result(timeout=broker.timeout_s)
    if extra:
        filters = [_filter(to_binding(principal, a)) for a in extra]
        deleting = broker.client.delete_acls(filters, request_timeout=broker.timeout_s)
        for done in deleting.values():
            done.result(timeout=broker.timeout_s)
    if missing or extra:
        _wait_until(broker, principal, want)
    return Applied(len(missing), len(extra))


def revoke(broker: Broker, principal: str) -> int:
    """Delete every binding of the principal; how many there were."""
    futures = broker.client.delete_acls(
        [_everything_of(principal)], request_timeout=broker.timeout_s
    )
    deleted = 0
    for future in futures.values():
        deleted += len(future.result(timeout=broker.timeout_s))
    _wait_until(broker, principal, set())
    return deleted


def _wait_until(broker: Broker, principal: str, want: set[Acl]) -> None:
    deadline = time.monotonic() + broker.timeout_s
    delay = 0.02
    while current(broker, principal) != want:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the broker does not show {principal}'s ACLs after {broker.timeout_s}s"
            )
        time.sleep(delay)  # nothing to wait on: the metadata log propagates by itself
        delay = min(delay * 2, 0.5)
