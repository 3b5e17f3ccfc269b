#!/usr/bin/env python3
"""Create or update SCRAM-SHA-512 users on a running broker, using only the standard library.

Why it exists: ``StorageTool format --add-scram`` bootstraps SCRAM users only into a *fresh*
data directory, and the controller quorum does not serve AlterUserScramCredentials (KIP-919
left it out), so the one way to give an *existing* unsecured data directory its admin and
broker users is to ask the broker. scripts/infra.sh migrates such a directory by starting
the broker once with SASL PLAIN (a static admin user, loopback only, the authorizer on)
beside SCRAM on the client listener, running this script, and restarting SCRAM-only: no
moment where the data is served without a login. Like kafka_ready.py, it must run before
the project's virtualenv exists.

AlterUserScramCredentials (API 51) v0 is a flexible version: request header v2 and compact
fields. The salted password is computed here (PBKDF2-HMAC-SHA-512, RFC 5802), so the
password itself never travels, and never appears on a command line: the users' passwords
come from their credentials files.

Usage:
  kafka_scram.py --bootstrap HOST:PORT --login FILE [--mechanism PLAIN|SCRAM-SHA-512]
                 --upsert FILE [--upsert FILE ...] [--timeout SECONDS]

Exit status 0 when every user was written, 1 otherwise (the broker's error on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import secrets
import socket
import struct
import sys
import time

from kafka_ready import (
    CLIENT_ID,
    MECHANISMS,
    Login,
    ProbeError,
    _parse_servers,
    _recv_exact,
    connect,
    read_login,
)

API_ALTER_USER_SCRAM_CREDENTIALS = 51
SCRAM_SHA_512 = 2  # the mechanism's id in the protocol (1 is SCRAM-SHA-256)
ITERATIONS = 8192


def _uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _compact_bytes(data: bytes) -> bytes:
    return _uvarint(len(data) + 1) + data


class _CompactReader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, fmt: str) -> int:
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return int(value)

    def uvarint(self) -> int:
        shift = result = 0
        while True:
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7

    def int16(self) -> int:
        return self._take(">h")

    def int32(self) -> int:
        return self._take(">i")

    def compact_string(self) -> str | None:
        size = self.uvarint() - 1
        if size < 0:
            return None
        raw = self.data[self.pos : self.pos + size]
        self.pos += size
        return raw.decode("utf-8", "replace")

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.pos += self.uvarint()


def upsertion(username: str, password: str) -> bytes:
    """One ScramCredentialUpsertion: the salted password, never the password."""
    salt = secrets.token_bytes(32)
    salted = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, ITERATIONS)
    return (
        _compact_bytes(username.encode())
        + struct.pack(">bi", SCRAM_SHA_512, ITERATIONS)
        + _compact_bytes(salt)
        + _compact_bytes(salted)
        + _uvarint(0)
    )


def alter(sock: socket.socket, users: list[Login], corr: int = 500) -> list[str]:
    """Send one AlterUserScramCredentials v0; returns one error line per refused user."""
    body = _uvarint(1)  # no deletions
    body += _uvarint(len(users) + 1) + b"".join(upsertion(u.username, u.password) for u in users)
    body += _uvarint(0)
    header = struct.pack(">hhih", API_ALTER_USER_SCRAM_CREDENTIALS, 0, corr, len(CLIENT_ID))
    payload = header + CLIENT_ID + _uvarint(0) + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    r = _CompactReader(_recv_exact(sock, size))
    if r.int32() != corr:
        raise ProbeError("correlation id mismatch")
    r.skip_tags()  # response header v1
    r.int32()  # throttle_time_ms
    errors = []
    for _ in range(r.uvarint() - 1):
        user, code, message = r.compact_string(), r.int16(), r.compact_string()
        r.skip_tags()
        if code != 0:
            errors.append(f"{user}: error {code}: {message}")
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--login", required=True, help="credentials file of a super user")
    parser.add_argument("--mechanism", choices=MECHANISMS, default="PLAIN")
    parser.add_argument("--upsert", action="append", required=True, help="credentials file")
    parser.add_argument("--timeout", type=float, default=60.0, help="wait this long for it")
    args = parser.parse_args()

    login = read_login(args.login, args.mechanism)
    users = [read_login(path) for path in args.upsert]
    host, port = _parse_servers(args.bootstrap)[0]
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            with connect(host, port, 3.0, login) as sock:
                errors = alter(sock, users)
            break
        except (OSError, ProbeError, struct.error, IndexError) as exc:
            if time.monotonic() >= deadline:
                print(f"kafka_scram: {host}:{port}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)
    for line in errors:
        print(f"kafka_scram: {line}", file=sys.stderr)
    if not errors:
        print(f"kafka_scram: SCRAM-SHA-512 set for {', '.join(u.username for u in users)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
