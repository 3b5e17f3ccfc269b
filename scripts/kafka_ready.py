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

Usage:
  kafka_ready.py [--bootstrap HOST:PORT[,HOST:PORT...]] [--timeout SECONDS] [--warm] [--quiet]

Exit status 0 when ready (prints a one-line summary), 1 on timeout (prints the last error).
--timeout 0 makes a single attempt.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import time

API_METADATA = 3
API_FIND_COORDINATOR = 10
API_VERSIONS = 18
CLIENT_ID = b"spine-kafka-ready"


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


def _find_coordinator(sock: socket.socket, key: str, key_type: int, corr: int) -> int:
    """FindCoordinator v1 (v0 was removed in Kafka 4.0); returns the error code."""
    raw = key.encode()
    body = struct.pack(">h", len(raw)) + raw + struct.pack(">b", key_type)
    r = _request(sock, API_FIND_COORDINATOR, 1, corr, body)
    r.int32()  # throttle_time_ms
    return r.int16()


def warm(host: str, port: int, timeout: float, deadline: float, interval: float) -> str:
    """Wait until the group and transaction coordinators are available."""
    pending = {"group": (0, "spine-infra-warmup"), "transaction": (1, "spine-infra-warmup")}
    corr = 100
    last = ""
    while True:
        try:
            with socket.create_connection((host, port), timeout=timeout) as sock:
                sock.settimeout(timeout)
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


def probe(host: str, port: int, timeout: float) -> str:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
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
        return (
            f"kafka ready at {host}:{port}: cluster_id={cluster_id} "
            f"brokers={','.join(brokers)} metadata=v{version}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--timeout", type=float, default=90.0, help="0 = single attempt")
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--warm", action="store_true", help="also wait for the coordinators")
    args = parser.parse_args()

    servers = _parse_servers(args.bootstrap)
    deadline = time.monotonic() + args.timeout
    last_error = "no attempt made"
    while True:
        for host, port in servers:
            try:
                summary = probe(host, port, timeout=3.0)
            except (OSError, ProbeError, struct.error) as exc:
                last_error = f"{host}:{port}: {exc.__class__.__name__}: {exc}"
                continue
            if args.warm:
                try:
                    summary += "; " + warm(host, port, 3.0, deadline, args.interval)
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
