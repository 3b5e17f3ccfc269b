"""The relay: delivery to HTTP agents (docs/agents.md), its own process ``spine-relay``.

Kafka tasks of every registered HTTP agent become ``POST {endpoint}/execute`` calls and
their answers ``AgentResult``s; ``GET {endpoint}/health`` probes become the agent's
heartbeats. Every call is signed with the relay's key (:mod:`.signing`). See :mod:`.app`
for the wiring and :mod:`.delivery` for the call itself.

    spine-relay                          run the relay
    spine-relay public-key [--base64]    print the public key agents verify calls with
                                         (creating the key file first if it is missing)
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Sequence

from spine_servicekit.runtime import run_service
from spine_servicekit.settings import load_settings

from .settings import RelaySettings


def public_key_text(settings: RelaySettings, as_base64: bool = False) -> str:
    """The PEM (or the base64 of the 32 raw bytes) of the relay's public key."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from .keyfile import load_or_create, public_pem

    loaded = load_or_create(settings.signing_key_file)
    if loaded.created:
        print(f"created a new signing key at {loaded.path}", file=sys.stderr)
    if loaded.readable_by_others:
        print(f"warning: other users can read {loaded.path}", file=sys.stderr)
    if as_base64:
        raw = loaded.key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return base64.b64encode(raw).decode() + "\n"
    return public_pem(loaded.key).decode()


def run(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="spine-relay", description="Delivery of Kafka tasks to HTTP agents."
    )
    commands = parser.add_subparsers(dest="command")
    show = commands.add_parser(
        "public-key",
        help="print the public key HTTP agents verify the relay's calls with",
        description="Print the relay's public key (SPINE_RELAY_SIGNING_KEY_FILE; created "
        "first when missing), PEM by default.",
    )
    show.add_argument("--base64", action="store_true", help="the 32 raw bytes in base64")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings(RelaySettings)
    if args.command == "public-key":
        from .keyfile import SigningKeyError

        try:
            sys.stdout.write(public_key_text(settings, as_base64=args.base64))
        except SigningKeyError as exc:
            print(f"spine-relay: {exc}", file=sys.stderr)
            raise SystemExit(1) from None
        return
    from .app import main

    run_service("relay", settings, main)


__all__ = ["RelaySettings", "public_key_text", "run"]
