#!/usr/bin/env python3
"""Render the local broker's server.properties, and make its credentials files once.

Used by scripts/infra.sh before the project's virtualenv exists: the standard library only.
Two jobs that both touch secrets, kept out of shell so that no password is ever an argument
of a process (``ps`` shows arguments to every user of the machine):

``credentials DIR NAME...``
    Make ``DIR/<NAME>.json`` — ``{"username": NAME, "password": <random>}``, the format every
    client reads through ``KAFKA_CREDENTIALS_FILE`` (docs/security.md) — unless it exists.
    The directory is 0700 and each file 0600, written atomically; an existing file is kept
    (its password is the one the broker knows) but must name the same user.

``render --security sasl|plaintext [--migration] ...``
    Concatenate deploy/local/kafka/server.properties.tmpl and the listeners of the mode,
    fill in the placeholders (the broker's and the controller's passwords from their
    credentials files), and write the result 0600. ``--migration`` also lets the static
    ``admin`` user log in with SASL PLAIN on the client listener: the one broker start that
    turns an unsecured data directory into a secured one (scripts/kafka_scram.py).

``scram-argfile --out FILE --credentials DIR --users NAME,... -- MAIN ARG...``
    Write a java launcher argument file (0600): the main class and its arguments, then one
    ``--add-scram`` per user for ``kafka.tools.StorageTool format``. ``java @FILE`` keeps
    the passwords out of the command line (the launcher expands argument files only up to
    the main class, so the file holds the whole tail).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import sys
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9_\-]+$")
#: what secrets.token_urlsafe yields; no quoting needed in JAAS, properties or argfiles
_SAFE_PASSWORD = re.compile(r"^[A-Za-z0-9_\-]{16,}$")


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)  # an older tmp file may have had other bits
    os.replace(tmp, path)


def private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def read_password(directory: Path, name: str) -> str:
    try:
        raw = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"kafka_config: cannot read {directory / name}.json: {type(exc).__name__}"
        ) from None
    if not isinstance(raw, dict) or raw.get("username") != name:
        raise SystemExit(f"kafka_config: {directory / name}.json must name the user {name!r}")
    password = raw.get("password")
    if not isinstance(password, str) or not _SAFE_PASSWORD.fullmatch(password):
        raise SystemExit(
            f"kafka_config: {directory / name}.json: the password must be 16+ characters of "
            "[A-Za-z0-9_-] (delete the file to get a new one)"
        )
    return password


def credentials(directory: Path, names: list[str]) -> None:
    private_dir(directory)
    for name in names:
        if not _NAME.fullmatch(name):
            raise SystemExit(f"kafka_config: bad principal name {name!r}")
        path = directory / f"{name}.json"
        if path.exists():
            os.chmod(path, 0o600)
            read_password(directory, name)  # checks it
            continue
        body = {"username": name, "password": secrets.token_urlsafe(32)}
        _write_private(path, json.dumps(body) + "\n")
        print(f"==> kafka: wrote {path} (user {name}, a new random password; 0600)")


def render(args: argparse.Namespace) -> None:
    base = args.templates / "server.properties.tmpl"
    listeners = args.templates / f"listeners.{args.security}.tmpl"
    text = base.read_text(encoding="utf-8") + listeners.read_text(encoding="utf-8")
    values = {
        "KAFKA_HOST": args.host,
        "KAFKA_PORT": str(args.port),
        "CONTROLLER_PORT": str(args.controller_port),
        "KAFKA_DATA_DIR": str(args.data),
    }
    if args.security == "sasl":
        values["BROKER_PASSWORD"] = read_password(args.credentials, "broker")
        values["CONTROLLER_PASSWORD"] = read_password(args.credentials, "controller")
        values["CLIENT_MECHANISMS"] = "SCRAM-SHA-512,PLAIN" if args.migration else "SCRAM-SHA-512"
        if args.migration:
            admin = read_password(args.credentials, "admin")
            text += (
                "\n# --- migration run only (scripts/infra.sh): the static admin may log in with\n"
                "# PLAIN to create the SCRAM users; the next start is SCRAM-only again.\n"
                "listener.name.client.plain.sasl.jaas.config="
                "org.apache.kafka.common.security.plain.PlainLoginModule required "
                f'user_admin="{admin}";\n'
            )
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise SystemExit(f"kafka_config: unfilled placeholders {left}")
    _write_private(args.out, text)


def scram_argfile(out: Path, directory: Path, names: list[str], before: list[str]) -> None:
    lines = list(before)
    for name in names:
        password = read_password(directory, name)
        lines += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]"]
    _write_private(out, "\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("credentials")
    c.add_argument("directory", type=Path)
    c.add_argument("names", nargs="+")
    r = sub.add_parser("render")
    r.add_argument("--templates", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--security", choices=("sasl", "plaintext"), required=True)
    r.add_argument("--migration", action="store_true")
    r.add_argument("--host", required=True)
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--controller-port", type=int, required=True)
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--credentials", type=Path)
    a = sub.add_parser("scram-argfile")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--credentials", type=Path, required=True)
    a.add_argument("--users", required=True, help="comma-separated principal names")
    argv = sys.argv[1:]
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    if args.command == "credentials":
        credentials(args.directory, args.names)
    elif args.command == "render":
        if args.security == "sasl" and args.credentials is None:
            parser.error("--security sasl needs --credentials DIR")
        render(args)
    else:
        if not tail:
            parser.error("scram-argfile needs -- MAIN ARG... (the java main class and arguments)")
        scram_argfile(args.out, args.credentials, args.users.split(","), tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
