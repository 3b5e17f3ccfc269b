"""Gateway latency under concurrent clients: p50/p99 of `GET /executions/{id}` and
`POST /flows/execute`, each from N async httpx clients (50 by default), against a running
stack (`make up`).

    uv run python bench/gateway_load.py [--clients 50] [--requests 2000] [--flow echo_chain]

`PORT` and `API_KEY` (the master key, to create the benchmark's user) come from the
environment or `.env`; `--url` overrides the base URL. Each client is its own
`httpx.AsyncClient` with one keep-alive connection; requests are spread over the clients
from a shared counter. A warm-up round is not counted. Every execute is a real one: a
reservation through auth, the orchestrator running the flow and the gateway answering once
its read model shows the execution (read-your-writes). The table reports latencies in
milliseconds and the machine's load average before and after, since a loaded machine
shows in every number.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]

Request = Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]]


@dataclass
class Result:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[int, int] = field(default_factory=dict)
    wall_s: float = 0.0
    gateway_cpu_s: float | None = None

    def percentile(self, p: float) -> float:
        data = sorted(self.latencies_ms)
        if not data:
            return float("nan")
        rank = max(0, min(len(data) - 1, round(p / 100 * len(data) + 0.5) - 1))
        return data[rank]


def _gateway_pid() -> int | None:
    path = ROOT / ".spine" / "run" / "gateway.pid"
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _seed(base: str, key: str, count: int, body: dict[str, Any]) -> list[str]:
    """Executions to read (one per client), readable before the clock starts."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as http:
        answers = await asyncio.gather(
            *(http.post("/api/v1/flows/execute", json=body) for _ in range(count))
        )
        bad = [a.status_code for a in answers if a.status_code != 200]
        if bad:
            raise SystemExit(f"could not create executions to read: {bad}")
        ids = [str(a.json()["execution_id"]) for a in answers]
        deadline = time.monotonic() + 120
        for eid in ids:  # an answer after the projection's timeout may precede the row
            while (await http.get(f"/api/v1/executions/{eid}")).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit(f"execution {eid} never became readable")
                await asyncio.sleep(0.1)
    return ids


def _dotenv() -> dict[str, str]:
    values: dict[str, str] = {}
    path = ROOT / ".env"
    if path.exists():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[name.strip()] = value.strip().strip("'\"")
    return values


def _args() -> argparse.Namespace:
    env = _dotenv()
    port = os.environ.get("PORT") or env.get("PORT") or "8000"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("SPINE_URL", f"http://127.0.0.1:{port}"))
    parser.add_argument("--api-key", default=os.environ.get("API_KEY") or env.get("API_KEY"))
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000, help="per endpoint")
    parser.add_argument("--warmup", type=int, default=100, help="per endpoint, not counted")
    parser.add_argument("--flow", default="echo_chain")
    parser.add_argument("--only", choices=("get", "execute"), help="measure one endpoint")
    parser.add_argument(
        "--gateway-pid",
        type=int,
        default=None,
        help="to report the gateway's CPU per request (default: .spine/run/gateway.pid)",
    )
    args = parser.parse_args()
    if not args.api_key:
        parser.error("no master key: set API_KEY (or run `make up`, which writes .env)")
    return args


async def _setup(base: str, master: str, credits: int, flow: str) -> str:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        try:
            r = await http.get("/health")
        except httpx.TransportError as exc:
            raise SystemExit(f"nothing answers at {base}: run `make up` first ({exc!r})") from exc
        r.raise_for_status()
        r = await http.post(
            "/api/v1/users/create",
            json={
                "email": f"bench+{os.urandom(4).hex()}@ai-spine.local",
                "name": "gateway bench",
                "credits": credits,
                "rate_limit": 10_000_000,
                "max_in_flight": 1_000_000,  # above any phase: the queue is not measured here
                "max_queued": 1_000_000,
            },
            headers={"Authorization": f"Bearer {master}"},
        )
        if r.status_code != 201:
            raise SystemExit(f"cannot create the benchmark user: {r.status_code} {r.text}")
        key = str(r.json()["api_key"])
        r = await http.get(f"/api/v1/flows/{flow}", headers={"Authorization": f"Bearer {key}"})
        if r.status_code != 200:
            raise SystemExit(f"flow {flow!r} is not available: {r.status_code} {r.text}")
        return key


async def _run(
    name: str, base: str, key: str, clients: int, total: int, request: Request
) -> Result:
    result = Result(name)
    counter = iter(range(total))
    headers = {"Authorization": f"Bearer {key}"}

    async def client() -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        async with httpx.AsyncClient(
            base_url=base, headers=headers, timeout=60, limits=limits
        ) as http:
            for i in counter:
                started = time.perf_counter()
                try:
                    r = await request(http, i)
                    status = r.status_code
                except httpx.HTTPError:
                    status = 0
                elapsed = (time.perf_counter() - started) * 1000
                if 200 <= status < 300:
                    result.latencies_ms.append(elapsed)
                else:
                    result.errors[status] = result.errors.get(status, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    result.wall_s = time.perf_counter() - started
    return result


def _table(results: list[Result], clients: int) -> str:
    head = (
        f"{'endpoint':<28}{'clients':>8}{'ok':>7}{'errors':>8}{'req/s':>9}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'mean ms':>9}{'gw cpu ms/req':>15}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        ok = len(r.latencies_ms)
        errors = sum(r.errors.values())
        n_all = max(1, ok + errors)
        lines.append(
            f"{r.name:<28}{clients:>8}{ok:>7}{errors:>8}{ok / r.wall_s:>9.0f}"
            f"{r.percentile(50):>9.1f}{r.percentile(90):>9.1f}{r.percentile(99):>9.1f}"
            f"{max(r.latencies_ms, default=float('nan')):>9.1f}"
            f"{statistics.fmean(r.latencies_ms) if ok else float('nan'):>9.1f}"
            + (f"{r.gateway_cpu_s * 1000 / n_all:>15.2f}" if r.gateway_cpu_s is not None else "")
        )
        if r.errors:
            lines.append(f"{'':<28}errors by status: {dict(sorted(r.errors.items()))}")
    return "\n".join(lines)


async def main() -> int:
    args = _args()
    base = args.url.rstrip("/")
    n, warm = args.requests, args.warmup
    key = await _setup(
        base, args.api_key, credits=2 * (n + warm) + args.clients + 10, flow=args.flow
    )
    body: dict[str, Any] = {"flow_id": args.flow, "input_data": {"bench": True}}

    async def execute(http: httpx.AsyncClient, _i: int) -> httpx.Response:
        return await http.post("/api/v1/flows/execute", json=body)

    ids = await _seed(base, key, args.clients, body)

    async def read(http: httpx.AsyncClient, i: int) -> httpx.Response:
        return await http.get(f"/api/v1/executions/{ids[i % len(ids)]}")

    pid = args.gateway_pid or _gateway_pid()
    load_before = os.getloadavg()
    results = []
    for name, request in (
        ("GET /executions/{id}", read),
        ("POST /flows/execute", execute),
    ):
        if args.only and not name.lower().startswith(args.only) and args.only not in name:
            continue
        await _run("warm-up", base, key, args.clients, warm, request)
        cpu = _cpu_s(pid)
        result = await _run(name, base, key, args.clients, n, request)
        if cpu is not None:
            result.gateway_cpu_s = (_cpu_s(pid) or cpu) - cpu
        results.append(result)
    load_after = os.getloadavg()
    print(f"AI Spine gateway at {base}: {args.clients} concurrent clients, {n} requests each")
    print(f"flow {args.flow!r}; {os.cpu_count()} CPUs; load average before {load_before[0]:.1f},")
    print(f"after {load_after[0]:.1f} (1 min)\n")
    print(_table(results, args.clients))
    if pid is None:
        print("\n(gateway CPU per request: pass --gateway-pid, or run the stack with `make up`)")
    return 0 if all(not r.errors for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
