"""The ``spine-admin`` command line: parse, run one command, print progress on stdout.

Errors go to stderr as one line and exit 1; a bad setting exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from confluent_kafka import KafkaException

from . import broker_cli
from .connection import LoginFailed
from .credentials import CredentialsError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spine-admin",
        description="Operator actions on the AI Spine bus (never a gateway route).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    broker_cli.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        code = broker_cli.run(args)
    except (
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
