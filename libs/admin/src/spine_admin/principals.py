"""Issuing and revoking principals: credentials file, ACLs, SCRAM credentials — one code path
for ``spine-admin``, ``make up`` and the test fixtures.

Issuing is idempotent and in this order: the credentials file (its password made once and
kept), the ACLs (reconciled with :mod:`.acls`: missing ones added, stale ones deleted), and
last the SCRAM credential — so a principal can never log in before its ACLs are in place.
Revoking replaces the SCRAM credential first with one of a password nobody holds (no new
login; never a deletion, see :func:`.scram.revoke`), then deletes every ACL of the
principal, then (by default) its file. Calls block (confluent-kafka's futures); an async
caller runs them with ``asyncio.to_thread``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import bindings, scram
from . import credentials as creds
from .acls import (
    SERVICES,
    Acl,
    agent_grants,
    agent_principal,
    check_agent_id,
    service_grants,
    service_principal,
)
from .connection import Broker


@dataclass(frozen=True)
class PrincipalIssued:
    """What issuing one principal did."""

    principal: str
    credentials_file: Path
    created_password: bool
    acls: int
    acls_created: int
    acls_deleted: int


def _issue(
    broker: Broker, principal: str, acls: Iterable[Acl], credentials_dir: Path
) -> PrincipalIssued:
    found, created = creds.load_or_create(credentials_dir, principal)
    wanted = list(acls)
    applied = bindings.apply(broker, principal, wanted)
    scram.upsert(broker, found)
    return PrincipalIssued(
        principal,
        creds.path_for(credentials_dir, principal),
        created,
        len(wanted),
        applied.created,
        applied.deleted,
    )


def issue_service(
    broker: Broker, name: str, *, prefix: str = "", credentials_dir: Path = creds.DEFAULT_DIR
) -> PrincipalIssued:
    """The service's principal (``<prefix><name>``): its file, ACLs and SCRAM credential."""
    grants = service_grants(name, prefix)
    return _issue(broker, service_principal(name, prefix), (g.acl for g in grants), credentials_dir)


def issue_services(
    broker: Broker, *, prefix: str = "", credentials_dir: Path = creds.DEFAULT_DIR
) -> list[PrincipalIssued]:
    return [
        issue_service(broker, name, prefix=prefix, credentials_dir=credentials_dir)
        for name in SERVICES
    ]


def issue_agent_credentials(
    broker: Broker, agent_id: str, *, prefix: str = "", credentials_dir: Path = creds.DEFAULT_DIR
) -> PrincipalIssued:
    """The agent's principal (``<prefix>agent-<id>``): its file, LITERAL ACLs and SCRAM
    credential. Its tasks topic and signing key are other steps of issuing an agent."""
    grants = agent_grants(agent_id, prefix)
    return _issue(
        broker, agent_principal(agent_id, prefix), (g.acl for g in grants), credentials_dir
    )


@dataclass(frozen=True)
class AclsReconciled:
    principal: str
    acls: int
    acls_created: int
    acls_deleted: int


def issued_agents(broker: Broker, *, prefix: str = "") -> list[str]:
    """The ids of this installation's agents whose principal holds ACLs: every agent issued
    and not revoked (revoking deletes all of a principal's ACLs, so it is not found here)."""
    head = f"{prefix}agent-"
    found = set()
    for principal in bindings.principals_with_acls(broker):
        if not principal.startswith(head):
            continue
        try:
            found.add(check_agent_id(principal.removeprefix(head)))
        except ValueError:
            continue  # not a name this installation's table makes
    return sorted(found)


def grant_agents(broker: Broker, *, prefix: str = "") -> list[AclsReconciled]:
    """Reconcile every issued agent's ACLs with today's table (a topic an agent newly
    writes, such as the progress topic, reaches agents issued before it existed). ACLs
    only: no password, SCRAM credential, key or topic is touched, and a revoked agent
    (no ACLs left) stays revoked."""
    out = []
    for agent_id in issued_agents(broker, prefix=prefix):
        principal = agent_principal(agent_id, prefix)
        wanted = [g.acl for g in agent_grants(agent_id, prefix)]
        applied = bindings.apply(broker, principal, wanted)
        out.append(AclsReconciled(principal, len(wanted), applied.created, applied.deleted))
    return out


@dataclass(frozen=True)
class PrincipalRevoked:
    principal: str
    had_scram: bool
    acls_deleted: int
    file_deleted: bool


def _revoke(
    broker: Broker, principal: str, credentials_dir: Path, delete_file: bool
) -> PrincipalRevoked:
    had = scram.revoke(broker, principal)
    deleted = bindings.revoke(broker, principal)
    removed = creds.delete(credentials_dir, principal) if delete_file else False
    return PrincipalRevoked(principal, had, deleted, removed)


def revoke_agent_credentials(
    broker: Broker,
    agent_id: str,
    *,
    prefix: str = "",
    credentials_dir: Path = creds.DEFAULT_DIR,
    delete_file: bool = True,
) -> PrincipalRevoked:
    """No more logins for the agent, no ACLs left. Connections already open stay open
    until they reconnect, but every request they make is refused from now on."""
    return _revoke(broker, agent_principal(agent_id, prefix), credentials_dir, delete_file)


def revoke_principal(
    broker: Broker, principal: str, *, credentials_dir: Path = creds.DEFAULT_DIR
) -> PrincipalRevoked:
    """Any principal by its full name (a service's or an agent's, prefix included)."""
    return _revoke(broker, principal, credentials_dir, True)
