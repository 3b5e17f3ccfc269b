"""Wait until `make up` is really up: the gateway answers /health, /status is healthy (which
needs every service and demo agent of its SPINE_EXPECTED_SERVICES running) and every service
started by scripts/stack.sh beats — counting only the beats of the very instance it started
(its SPINE_INSTANCE_ID, recorded in .spine/run/<name>.identity by scripts/procs.py): a beat
from before a restart, still fresh in /status, does not count.
Says what it waits for every 10 s; gives up at once when the gateway process is gone,
or after SPINE_UP_TIMEOUT seconds (600).
/status shows the service instances only to the master key: API_KEY from the environment.

    API_KEY=... python scripts/wait_up.py <port> <service> [<service> ...]
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import read_identity, running  # noqa: E402


def get(url: str, key: str | None = None) -> tuple[int, dict[str, object] | None]:
    request = urllib.request.Request(url)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:  # noqa: S310 (local URL)
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"null")
        except ValueError:
            return e.code, None
    except (OSError, ValueError):
        return 0, None


def missing_services(status: dict[str, object] | None, wanted: dict[str, str | None]) -> list[str]:
    """The services of ``wanted`` with no live instance in /status; where ``wanted`` names an
    instance id, only that instance counts."""
    beating = {
        (s.get("service"), s.get("instance_id"))
        for s in (status or {}).get("services", [])  # type: ignore[union-attr]
        if isinstance(s, dict) and s.get("alive")
    }
    return [
        name
        for name, instance in wanted.items()
        if not any(svc == name and instance in (None, inst) for svc, inst in beating)
    ]


def instances(names: list[str]) -> dict[str, str | None]:
    """Each service's instance id as stack.sh started it (None: not recorded)."""
    out: dict[str, str | None] = {}
    for name in names:
        identity = read_identity(name) or {}
        found = identity.get("instance_id")
        out[name] = found if isinstance(found, str) else None
    return out


def main() -> int:
    port, wanted = sys.argv[1], instances(sys.argv[2:])
    master = os.environ.get("API_KEY", "")
    if not master:
        print(
            "!!  API_KEY is not set: /status shows the services only to the master key",
            file=sys.stderr,
        )
        return 1
    base = f"http://127.0.0.1:{port}"
    timeout = float(os.environ.get("SPINE_UP_TIMEOUT", "600"))
    started = time.monotonic()
    said = started
    waiting_for = "the gateway's /health (it applies the topics' backlog first)"
    while True:
        if not running("gateway"):
            print("!!  the gateway process exited; see .spine/logs/gateway.log", file=sys.stderr)
            return 1
        code, _ = get(f"{base}/health")
        if code == 200:
            code, status = get(f"{base}/status", master)
            missing = missing_services(status, wanted)
            if code == 200 and not missing:
                print(f"==> /health and /status green in {time.monotonic() - started:.1f}s")
                return 0
            if code == 401:  # the gateway is up and refuses the key: waiting will not help
                print(
                    "!!  the gateway refused API_KEY on /status; is it the key it runs with?",
                    file=sys.stderr,
                )
                return 1
            if code != 200:
                components = (status or {}).get("components", {})
                absent = (status or {}).get("missing", [])  # of SPINE_EXPECTED_SERVICES
                waiting_for = (
                    f"/status healthy (HTTP {code}; components {components}; "
                    f"nothing running yet of {absent})"
                )
            else:
                waiting_for = "heartbeats from " + ", ".join(missing)
        now = time.monotonic()
        if now - started > timeout:
            print(
                f"!!  not up after {timeout:.0f}s: still waiting for {waiting_for}", file=sys.stderr
            )
            return 1
        if now - said >= 10:
            print(f"    ... {now - started:.0f}s: waiting for {waiting_for}", flush=True)
            said = now
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main())
