"""``spine-admin``'s agent commands: issue, revoke and show one agent.

Issuing makes the agent's signing key, its tasks topic, on a secured broker its Kafka
principal (credentials file, LITERAL ACLs, SCRAM: :mod:`.principals`), and records its key
and owner on the bus (:mod:`.issue`). Kafka settings come from the environment like every
process's (``KAFKA_BOOTSTRAP_SERVERS``, ``SPINE_TOPIC_PREFIX``, the admin's login...).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spine_contracts import topics
from spine_contracts.signing import RELAY_SIGNER
from spine_kafka.clients import KafkaConfig

from .issue import DEFAULT_KEY_DIR, issue, latest_entry, revoke, show

COMMANDS = ("issue-agent", "revoke-agent", "show-agent")


def _say(line: str) -> None:
    print(line, flush=True)


def add_commands(commands: Any) -> None:
    """Add this module's sub-commands to an ``add_subparsers()`` object."""
    issue_p = commands.add_parser(
        "issue-agent",
        help="the agent's signing key, tasks topic, Kafka principal; record its key and owner",
        description="Issue an agent: its Ed25519 signing key (0600 file, reused when "
        "present), its tasks topic, on a secured broker its principal agent-<id> "
        "(credentials file 0600, LITERAL ACLs, SCRAM-SHA-512), and IssueAgent on "
        f"{topics.REGISTRY_ADMIN.base}. "
        f"'{RELAY_SIGNER}' issues the relay (its SPINE_RELAY_SIGNING_KEY_FILE, no topic).",
    )
    issue_p.add_argument("agent_id")
    issue_p.add_argument(
        "--owner",
        help="'system' or a user id (default: keep the entry's owner; system when new)",
    )
    issue_p.add_argument("--key-dir", type=Path, default=DEFAULT_KEY_DIR)
    issue_p.add_argument("--key-file", type=Path, help="the key file (default: in --key-dir)")
    issue_p.add_argument(
        "--credentials-dir", type=Path, help="default: SPINE_KAFKA_CREDENTIALS_DIR"
    )
    issue_p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait until the registry's catalogue shows the key (needs the registry running)",
    )

    revoke_p = commands.add_parser(
        "revoke-agent",
        help="forget the agent's key and delete its principal: refused from now on",
    )
    revoke_p.add_argument("agent_id")
    revoke_p.add_argument("--key-dir", type=Path, default=DEFAULT_KEY_DIR)
    revoke_p.add_argument(
        "--delete-key", action="store_true", help="also delete the key file (a new key next time)"
    )
    revoke_p.add_argument("--credentials-dir", type=Path)

    show_p = commands.add_parser("show-agent", help="the agent's catalogue entry and key")
    show_p.add_argument("agent_id")
    show_p.add_argument("--key-dir", type=Path, default=DEFAULT_KEY_DIR)


async def run(args: argparse.Namespace, cfg: KafkaConfig) -> int:
    if args.command == "issue-agent":
        _say(f"issuing agent {args.agent_id}")
        issued = await issue(
            cfg,
            args.agent_id,
            owner=args.owner,
            key_dir=args.key_dir,
            key_file=args.key_file,
            credentials_dir=args.credentials_dir,
            progress=lambda line: _say(f"  {line}"),
        )
        if args.wait > 0:
            await latest_entry(
                cfg, args.agent_id, until=lambda e: e.data.key_id == issued.key_id, within=args.wait
            )
            _say("  the registry's catalogue shows the key")
        _say(f"issued {issued.agent_id}: its key is {issued.key_file}")
        return 0
    if args.command == "revoke-agent":
        await revoke(
            cfg,
            args.agent_id,
            key_dir=args.key_dir,
            delete_key=args.delete_key,
            credentials_dir=args.credentials_dir,
            progress=lambda line: _say(f"  {line}"),
        )
        _say(f"revoked {args.agent_id}")
        return 0
    shown = await show(cfg, args.agent_id, key_dir=args.key_dir)
    _say(f"agent {shown.agent_id}")
    if shown.entry is None:
        _say("  catalogue: no entry (never issued nor registered)")
    else:
        d = shown.entry.data
        _say(f"  owner: {d.owner}")
        _say(f"  registered: {str(d.registered).lower()}, active: {str(d.active).lower()}")
        _say(f"  transport: {d.agent.transport}")
        _say(f"  key id: {d.key_id or 'none (not issued, or revoked)'}")
    local = shown.local_key_id or "none"
    _say(f"  key file: {shown.key_file} (key id {local})")
    return 0
