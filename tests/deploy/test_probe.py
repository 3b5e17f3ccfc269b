"""The container probe of the non-HTTP processes (deploy/k8s/probes/kafka_connected.py).

Run for real: a listening socket on loopback stands in for a broker, and the probe reads
this machine's /proc/net/tcp like it reads the container's.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from .helpers import K8S, load_module

PROBE = K8S / "probes" / "kafka_connected.py"


@pytest.fixture(scope="module")
def probe() -> ModuleType:
    return load_module(PROBE, "spine_kafka_connected")


@pytest.fixture
def broker() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield server
    server.close()


def _run(bootstrap: str, proc_net: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {"KAFKA_BOOTSTRAP_SERVERS": bootstrap}
    if proc_net:
        env["SPINE_PROBE_PROC_NET"] = proc_net
    return subprocess.run(
        [sys.executable, str(PROBE)], env=env, capture_output=True, text=True, timeout=30
    )


def test_ports_of_the_bootstrap_list(probe: ModuleType) -> None:
    assert probe.broker_ports("spine-kafka-bootstrap:9092") == {9092}
    assert probe.broker_ports("a:9092, b:9093,c") == {9092, 9093}
    assert probe.broker_ports("[::1]:19092") == {19092}


def test_reads_only_established_sockets(probe: ModuleType) -> None:
    listing = [
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid",
        "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000",
        "   1: 0A000005:C350 0A00000B:2384 01 00000000:00000000 00:00000000 00000000  1000",
        "   2: 0A000005:C351 0A00000C:2385 06 00000000:00000000 00:00000000 00000000  1000",
    ]
    assert probe.established_remote_ports(listing) == {0x2384}


def test_fails_without_a_connection(tmp_path: Path, broker: socket.socket) -> None:
    port = broker.getsockname()[1]
    result = _run(f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert "no established connection" in result.stderr
    empty = tmp_path / "net"
    empty.mkdir()
    assert _run("kafka:9092", str(empty)).returncode == 1


def test_passes_with_an_established_connection(broker: socket.socket) -> None:
    port = broker.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = broker.accept()
    try:
        result = _run(f"127.0.0.1:{port}")
        assert result.returncode == 0, result.stderr
    finally:
        client.close()
        accepted.close()
