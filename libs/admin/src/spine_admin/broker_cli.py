"""``spine-admin``'s commands for Kafka principals: credentials, ACLs and the static topics.

Kept apart from the command-line entry point (:mod:`.cli`) so the agent commands
(:mod:`.agent_cli`) sit beside them: each module adds its sub-commands with
``add_commands`` and runs them with ``run``.

Settings come from the environment like every process's: ``KAFKA_BOOTSTRAP_SERVERS``,
``SPINE_TOPIC_PREFIX``/``_PARTITIONS``/``_REPLICATION``/``_MIN_ISR`` (``KafkaSettings``),
the admin's login (``KafkaConfig.security``) and ``SPINE_KAFKA_CREDENTIALS_DIR``
(default ``.spine/credentials``), where each issued principal's file goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from typing import Any

from spine_kafka.clients import KafkaConfig, ensure_topics
from spine_kafka.settings import KafkaSettings, load_settings

from . import principals
from .acls import SERVICES, _agent_grants, agent_grants, service_grants
from .connection import Broker, credentials_dir

COMMANDS = ("issue-services", "grant-agents", "acls")


def add_commands(commands: Any) -> None:
    """Add this module's sub-commands to an ``add_subparsers()`` object."""
    c = commands.add_parser(
        "issue-services",
        help="create the static topics, then every service principal: file, ACLs, SCRAM",
        description="Idempotent: passwords are made once and kept; ACLs are reconciled with "
        "the table (missing ones added, stale ones deleted). One credentials file per "
        "service in the credentials directory (0600).",
    )
    c.add_argument("--credentials-dir", type=Path, help="default: SPINE_KAFKA_CREDENTIALS_DIR")
    c.add_argument("--no-topics", action="store_true", help="do not create the static topics")
    commands.add_parser(
        "grant-agents",
        help="reconcile every issued agent's ACLs with the table (make up runs it)",
        description="Idempotent: for each agent principal of this installation that holds "
        "ACLs (issued, not revoked), add the ACLs the table grants it now and delete stale "
        "ones. Nothing else changes: passwords, SCRAM credentials, keys and topics stay.",
    )
    t = commands.add_parser("acls", help="print the ACL table (docs/security.md)")
    t.add_argument("--principal", help="one service name, or agent-<id>")


def _settings() -> tuple[KafkaConfig, str]:
    settings = load_settings(KafkaSettings)
    return KafkaConfig.from_settings(settings, client_id="spine-admin"), settings.topic_prefix


def _broker(cfg: KafkaConfig) -> Broker:
    return Broker(cfg.bootstrap_servers, cfg.security)


def _dir(args: argparse.Namespace) -> Path:
    chosen: Path | None = args.credentials_dir
    return chosen or credentials_dir(os.environ)


def _say(issued: principals.PrincipalIssued) -> None:
    state = "new password" if issued.created_password else "password kept"
    print(
        f"  {issued.principal}: {issued.acls} ACLs (+{issued.acls_created} "
        f"-{issued.acls_deleted}), SCRAM-SHA-512 set, {issued.credentials_file} ({state})",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    if args.command == "acls":
        return _print_acls(args.principal)
    cfg, prefix = _settings()
    if args.command == "grant-agents":
        return _grant_agents(cfg, prefix)
    broker = _broker(cfg)
    if not args.no_topics:
        created = asyncio.run(ensure_topics(cfg))
        print(f"static topics ready ({len(created)} created)", flush=True)
    if not cfg.security.sasl:
        print(
            f"the broker is not secured ({cfg.security.describe()}): nobody logs in, no "
            "principals to issue",
            flush=True,
        )
        return 0
    print(f"issuing {len(SERVICES)} service principals", flush=True)
    for issued in principals.issue_services(broker, prefix=prefix, credentials_dir=_dir(args)):
        _say(issued)
    return 0


def _grant_agents(cfg: KafkaConfig, prefix: str) -> int:
    if not cfg.security.sasl:
        print(f"the broker is not secured ({cfg.security.describe()}): no ACLs", flush=True)
        return 0
    done = principals.grant_agents(_broker(cfg), prefix=prefix)
    print(f"{len(done)} issued agents", flush=True)
    for r in done:
        print(f"  {r.principal}: {r.acls} ACLs (+{r.acls_created} -{r.acls_deleted})", flush=True)
    return 0


def _print_acls(principal: str | None) -> int:
    prefix = os.environ.get("SPINE_TOPIC_PREFIX", "")
    names = [principal] if principal else [*SERVICES, "agent-<id>"]
    for name in names:
        if name in SERVICES:
            grants = service_grants(name, prefix)
        elif name == "agent-<id>":
            grants = _agent_grants("<id>", prefix)
        elif name.startswith("agent-"):
            grants = agent_grants(name.removeprefix("agent-"), prefix)
        else:
            print(f"unknown principal {name!r}: a service ({', '.join(SERVICES)}) or agent-<id>")
            return 2
        print(f"{prefix}{name}:")
        for g in grants:
            a = g.acl
            print(
                f"  {a.permission:5} {a.operation:8} {a.resource_type.lower():16} "
                f"{a.pattern_type.lower():8} {a.name}  ({g.why})"
            )
    return 0
