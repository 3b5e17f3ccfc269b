"""The ``spine-admin`` command line: parse, run one command, print progress on stdout.

Errors go to stderr as one line and exit 1; a bad setting exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from aiokafka.errors import KafkaError as AioKafkaError
from confluent_kafka import KafkaException
from spine_kafka.clients import KafkaConfig
from spine_kafka.settings import KafkaSettings, load_settings

from . import agent_cli, broker_cli
from .connection import LoginFailed
from .credentials import CredentialsError
from .issue import IssueError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spine-admin",
        description="Operator actions on the AI Spine bus (never a gateway route).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    agent_cli.add_commands(commands)
    broker_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command in agent_cli.COMMANDS:
            settings = load_settings(KafkaSettings)
            cfg = KafkaConfig.from_settings(settings, client_id="spine-admin")
            code = asyncio.run(agent_cli.run(args, cfg))
        else:
            code = broker_cli.run(args)
    except (
        IssueError,
        AioKafkaError,
        KafkaException,
        CredentialsError,
        LoginFailed,
        TimeoutError,
        OSError,
        KeyError,
        ValueError,
    ) as exc:
        print(f"spine-admin: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)
