#!/usr/bin/env python3
"""Container probe: does this container hold an established TCP connection to a Kafka broker?

The orchestrator, registry, auth, relay and the Kafka-native agents serve no HTTP, so their
compose healthchecks and Kubernetes probes run this instead (installed in the image as
``spine-kafka-connected``). Each of those processes keeps a producer (it publishes a
heartbeat every ``SPINE_HEARTBEAT_INTERVAL`` seconds) and its consumers connected to the
brokers, so "no established connection to a broker port" means it has not connected yet
or has lost Kafka.

What it cannot see: a process whose event loop is wedged while its sockets stay open. A
crashed service exits (``run_service`` lets the error end the process), which the container
runtime sees without any probe.

It reads ``/proc/net/tcp`` and ``/proc/net/tcp6``, which list the sockets of the network
namespace the probe runs in: the container's (a pod's containers share one). Broker ports
are the ports of ``KAFKA_BOOTSTRAP_SERVERS``: the compose broker and Strimzi's brokers
listen on the bootstrap port. Standard library only. Exit 0 when connected, else 1 with
the reason on stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path

ESTABLISHED = "01"


def broker_ports(bootstrap: str) -> set[int]:
    """The ports of a ``host:port[,host:port]`` list; 9092 where a port is left out."""
    ports: set[int] = set()
    for entry in bootstrap.split(","):
        entry = entry.strip()
        if not entry:
            continue
        _, sep, port = entry.rpartition(":")
        ports.add(int(port) if sep and port.isdigit() else 9092)
    return ports


def established_remote_ports(lines: Iterable[str]) -> set[int]:
    """Remote ports of the ESTABLISHED sockets in a ``/proc/net/tcp``-format listing."""
    ports: set[int] = set()
    for line in lines:
        fields = line.split()
        # sl local_address rem_address st ...; the header line has "local_address" in [1]
        if len(fields) < 4 or fields[3] != ESTABLISHED or ":" not in fields[2]:
            continue
        try:
            ports.add(int(fields[2].rsplit(":", 1)[1], 16))
        except ValueError:
            continue
    return ports


def connected(proc_net: Path, bootstrap: str) -> bool:
    wanted = broker_ports(bootstrap)
    for name in ("tcp", "tcp6"):
        path = proc_net / name
        if path.exists():
            with path.open() as listing:
                if established_remote_ports(listing) & wanted:
                    return True
    return False


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    proc_net = Path(os.environ.get("SPINE_PROBE_PROC_NET", "/proc/net"))
    if connected(proc_net, bootstrap):
        return 0
    print(f"no established connection to a Kafka broker port of {bootstrap}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
