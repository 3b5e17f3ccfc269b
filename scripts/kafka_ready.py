#!/usr/bin/env python3
"""Kafka readiness probe using only the Python standard library.

Used by scripts/infra.sh before the project's virtualenv exists, so it must not import
anything outside the stdlib. It speaks the Kafka wire protocol directly:

  1. ApiVersions v0 (every broker answers it) to learn which Metadata versions are served;
  2. Metadata v4..v7 with an empty topic list (Kafka 4.x removed v0-v3, KIP-896).

The broker counts as ready when the Metadata response lists at least one (unfenced) broker
and a controller id >= 0. An open TCP port alone is not enough: a starting broker accepts
connections before it can serve requests.

With --warm it then also sends FindCoordinator (v1) for a group and for a transactional id
until both coordinators answer, which makes the broker create __consumer_offsets and
__transaction_state now instead of during the first test (where the first consumer group
would otherwise see GroupCoordinatorNotAvailable for a second or two).

With --credentials FILE (a credentials file, ``{"username": ..., "password": ...}``, see
docs/security.md) every connection first logs in with SASL (SaslHandshake v1, then
SaslAuthenticate v1 carrying SCRAM-SHA-512 by default, or --mechanism PLAIN): the secured
local broker serves nothing else. Without it, a SASL listener answers ApiVersions and then
closes the connection at the Metadata request — which is how scripts/infra.sh tells an
unsecured broker (it answers) from a secured one (it refuses).

Usage:
  kafka_ready.py [--bootstrap HOST:PORT[,HOST:PORT...]] [--timeout SECONDS] [--warm] [--quiet]
                 [--credentials FILE [--mechanism SCRAM-SHA-512|PLAIN]]

Exit status 0 when ready (prints a one-line summary), 1 on timeout (prints the last error).
--timeout 0 makes a single attempt.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import secrets
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

API_METADATA = 3
API_FIND_COORDINATOR = 10
API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
CLIENT_ID = b"spine-kafka-ready"
MECHANISMS = ("SCRAM-SHA-512", "PLAIN")


class ProbeError(Exception):
    pass


def _parse_servers(bootstrap: str) -> list[tuple[str, int]]:
    servers = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        if "://" in item:  # PLAINTEXT://host:port
            item = item.split("://", 1)[1]
        if item.startswith("["):  # [::1]:9092
            host, _, port = item[1:].partition("]:")
        else:
            host, _, port = item.rpartition(":")
        servers.append((host or "127.0.0.1", int(port or 9092)))
    if not servers:
        raise SystemExit("kafka_ready: empty bootstrap server list")
    return servers


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ProbeError("truncated response")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def int16(self) -> int:
        return self._take(">h")

    def int32(self) -> int:
        return self._take(">i")

    def string(self) -> str | None:
        length = self.int16()
        if length < 0:
            return None
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", "replace")


@dataclass(frozen=True)
class Login:
    """A SASL identity; ``repr`` never shows the password."""

    username: str
    password: str = field(repr=False)
    mechanism: str = "SCRAM-SHA-512"


def read_login(path: str, mechanism: str = "SCRAM-SHA-512") -> Login:
    """The identity in a credentials file; the error names the file, never its content."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except (OSError, ValueError) as exc:
        raise SystemExit(
            f"kafka_ready: cannot read credentials {path}: {type(exc).__name__}"
        ) from None
    if not isinstance(raw, dict) or not all(
        isinstance(raw.get(k), str) and raw.get(k) for k in ("username", "password")
    ):
        raise SystemExit(f'kafka_ready: {path}: expected {{"username": ..., "password": ...}}')
    return Login(raw["username"], raw["password"], mechanism)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ProbeError("connection closed by broker")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _request(sock: socket.socket, api_key: int, version: int, corr: int, body: bytes) -> _Reader:
    # Request header v1: api_key, api_version, correlation_id, client_id (nullable string).
    header = struct.pack(">hhih", api_key, version, corr, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    reader = _Reader(_recv_exact(sock, size))
    # Response header v0: correlation_id.
    if reader.int32() != corr:
        raise ProbeError("correlation id mismatch")
    return reader


def _bytes_field(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def _string_field(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _sasl_exchange(sock: socket.socket, corr: int, token: bytes) -> bytes:
    """One SaslAuthenticate v1 round trip; returns the server's bytes."""
    r = _request(sock, API_SASL_AUTHENTICATE, 1, corr, _bytes_field(token))
    error = r.int16()
    message = r.string()
    size = r.int32()
    answer = r.data[r.pos : r.pos + max(size, 0)]
    if error != 0:
        raise ProbeError(f"SASL authentication failed (error {error}: {message})")
    return answer


def _saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _scram_sha512(sock: socket.socket, login: Login, corr: int) -> None:
    """RFC 5802 with SHA-512, the client side, verifying the server's signature too."""
    nonce = base64.b64encode(secrets.token_bytes(24)).decode()
    first_bare = f"n={_saslname(login.username)},r={nonce}"
    server_first = _sasl_exchange(sock, corr, f"n,,{first_bare}".encode()).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(",") if "=" in item)
    if "e" in fields:
        raise ProbeError(f"SASL authentication failed ({fields['e']})")
    if not fields.get("r", "").startswith(nonce) or "s" not in fields or "i" not in fields:
        raise ProbeError("SASL authentication failed (unexpected SCRAM server message)")
    salted = hashlib.pbkdf2_hmac(
        "sha512", login.password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.new(salted, b"Client Key", "sha512").digest()
    stored_key = hashlib.sha512(client_key).digest()
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(stored_key, auth_message, "sha512").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{final_bare},p={base64.b64encode(proof).decode()}"
    server_final = _sasl_exchange(sock, corr + 1, final.encode()).decode()
    server_key = hmac.new(salted, b"Server Key", "sha512").digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, "sha512").digest()).decode()
    if server_final != f"v={expected}":
        raise ProbeError("SASL authentication failed (the server's SCRAM signature is wrong)")


def sasl_login(sock: socket.socket, login: Login, corr: int = 50) -> None:
    """SaslHandshake v1 then SaslAuthenticate v1 frames (KIP-152), before any other request
    but ApiVersions."""
    if login.mechanism not in MECHANISMS:
        raise ProbeError(f"unsupported SASL mechanism {login.mechanism}")
    r = _request(sock, API_SASL_HANDSHAKE, 1, corr, _string_field(login.mechanism))
    error = r.int16()
    offered = [r.string() for _ in range(r.int32())]
    if error != 0:
        raise ProbeError(f"SASL mechanism {login.mechanism} refused (error {error}; {offered})")
    if login.mechanism == "PLAIN":
        token = b"\0" + login.username.encode() + b"\0" + login.password.encode()
        _sasl_exchange(sock, corr + 1, token)
    else:
        _scram_sha512(sock, login, corr + 1)


def connect(host: str, port: int, timeout: float, login: Login | None) -> socket.socket:
    """A connection ready for requests: logged in when ``login`` is given."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.settimeout(timeout)
        if login is not None:
            sasl_login(sock, login)
    except BaseException:
        sock.close()
        raise
    return sock


def _find_coordinator(sock: socket.socket, key: str, key_type: int, corr: int) -> int:
    """FindCoordinator v1 (v0 was removed in Kafka 4.0); returns the error code."""
    raw = key.encode()
    body = struct.pack(">h", len(raw)) + raw + struct.pack(">b", key_type)
    r = _request(sock, API_FIND_COORDINATOR, 1, corr, body)
    r.int32()  # throttle_time_ms
    return r.int16()


def warm(
    host: str,
    port: int,
    timeout: float,
    deadline: float,
    interval: float,
    login: Login | None = None,
) -> str:
    """Wait until the group and transaction coordinators are available."""
    pending = {"group": (0, "spine-infra-warmup"), "transaction": (1, "spine-infra-warmup")}
    corr = 100
    last = ""
    while True:
        try:
            with connect(host, port, timeout, login) as sock:
                for name, (key_type, key) in list(pending.items()):
                    corr += 1
                    error = _find_coordinator(sock, key, key_type, corr)
                    if error == 0:
                        del pending[name]
                    else:
                        last = f"{name} coordinator error code {error}"
        except (OSError, ProbeError, struct.error) as exc:
            last = f"{exc.__class__.__name__}: {exc}"
        if not pending:
            return "group and transaction coordinators ready"
        if time.monotonic() >= deadline:
            raise ProbeError(f"coordinators not ready: {last}")
        time.sleep(interval)


def probe(host: str, port: int, timeout: float, login: Login | None = None) -> str:
    with connect(host, port, timeout, login) as sock:
        # ApiVersions v0: empty body. Response: error_code, [api_key, min, max].
        r = _request(sock, API_VERSIONS, 0, 1, b"")
        error = r.int16()
        if error != 0:
            raise ProbeError(f"ApiVersions error code {error}")
        ranges = {}
        for _ in range(r.int32()):
            key, lo, hi = r.int16(), r.int16(), r.int16()
            ranges[key] = (lo, hi)
        if API_METADATA not in ranges:
            raise ProbeError("broker does not serve Metadata")
        lo, hi = ranges[API_METADATA]
        version = min(hi, 7)  # v4..v7 share the request layout below (non-flexible)
        if version < max(lo, 4):
            raise ProbeError(f"no usable Metadata version (broker serves v{lo}-v{hi})")
        # Metadata v4-v7 request: topics (empty array = no topics), allow_auto_topic_creation.
        r = _request(sock, API_METADATA, version, 2, struct.pack(">ib", 0, 0))
        r.int32()  # throttle_time_ms
        brokers = []
        for _ in range(r.int32()):
            node_id, bhost, bport, _rack = r.int32(), r.string(), r.int32(), r.string()
            brokers.append(f"{node_id}@{bhost}:{bport}")
        cluster_id = r.string()
        controller_id = r.int32()
        if not brokers:
            raise ProbeError("metadata lists no live broker yet")
        if controller_id < 0:
            raise ProbeError("metadata has no controller yet")
        who = f" as {login.username} ({login.mechanism})" if login else ""
        return (
            f"kafka ready at {host}:{port}{who}: cluster_id={cluster_id} "
            f"brokers={','.join(brokers)} metadata=v{version}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--timeout", type=float, default=90.0, help="0 = single attempt")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--warm", action="store_true", help="also wait for the coordinators")
    parser.add_argument("--credentials", help="log in with this credentials file (SASL)")
    parser.add_argument("--mechanism", choices=MECHANISMS, default="SCRAM-SHA-512")
    args = parser.parse_args()

    login = read_login(args.credentials, args.mechanism) if args.credentials else None
    servers = _parse_servers(args.bootstrap)
    deadline = time.monotonic() + args.timeout
    last_error = "no attempt made"
    while True:
        for host, port in servers:
            try:
                summary = probe(host, port, timeout=3.0, login=login)
            except (OSError, ProbeError, struct.error) as exc:
                last_error = f"{host}:{port}: {exc.__class__.__name__}: {exc}"
                continue
            if args.warm:
                try:
                    summary += "; " + warm(host, port, 3.0, deadline, args.interval, login)
                except ProbeError as exc:
                    if not args.quiet:
                        print(f"kafka not ready: {host}:{port}: {exc}", file=sys.stderr)
                    return 1
            if not args.quiet:
                print(summary)
            return 0
        if time.monotonic() >= deadline:
            break
        time.sleep(args.interval)
    if not args.quiet:
        print(f"kafka not ready: {last_error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
