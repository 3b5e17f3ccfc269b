"""Page render time of the console's executions pages with the store as it is.

Signs in to a running console (``--console``) with a key (``--key``, default the master key
``API_KEY``: the admin's list spans every tenant's executions, the largest there is), then
for each page — the list's first page, the list with a filter, one execution's detail —
makes ``--warmup`` requests, then ``--n`` more one after another, and prints their p50, p95
and max beside the gateway's own answer for the same data (what the console adds is the
difference). Signs out at the end (the session's key is revoked).

    set -a; . ./.env; set +a
    uv run python -m bench.console_pages --console http://127.0.0.1:8080 [--n 200]

Reads only; creates nothing but the console session.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import time
from collections.abc import Awaitable, Callable

import httpx

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _measure(
    call: Callable[[], Awaitable[httpx.Response]], warmup: int, n: int
) -> list[float]:
    for _ in range(warmup):
        (await call()).raise_for_status()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        response = await call()
        samples.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
    return samples


async def _sign_in(console: httpx.AsyncClient, key: str) -> str:
    page = await console.get("/login")
    token = CSRF.search(page.text)
    assert token, "no CSRF token on /login"
    r = await console.post("/login", data={"csrf": token.group(1), "api_key": key})
    assert r.status_code == 303 and r.headers["location"] == "/executions", r.text[:300]
    listed = await console.get("/executions")
    again = CSRF.search(listed.text)
    assert again, "not signed in"
    return again.group(1)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--console", default="http://127.0.0.1:8080")
    parser.add_argument("--gateway", default=f"http://127.0.0.1:{os.environ.get('PORT', '8000')}")
    parser.add_argument("--key", default=os.environ.get("API_KEY", ""))
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--filter", default="status=completed&flow_id=echo_chain")
    args = parser.parse_args()
    if not args.key:
        raise SystemExit("no key: pass --key or set API_KEY")
    auth = {"Authorization": f"Bearer {args.key}"}
    async with (
        httpx.AsyncClient(base_url=args.console, timeout=30, trust_env=False) as console,
        httpx.AsyncClient(base_url=args.gateway + "/api/v1", timeout=30, trust_env=False) as gw,
    ):
        csrf = await _sign_in(console, args.key)
        first = (await gw.get("/executions", params={"limit": 1}, headers=auth)).json()
        total = first["total"]
        eid = first["executions"][0]["execution_id"]
        gw_filter = dict(httpx.QueryParams(args.filter).multi_items())
        pages: list[
            tuple[
                str,
                Callable[[], Awaitable[httpx.Response]],
                Callable[[], Awaitable[httpx.Response]],
            ]
        ] = [
            (
                "/executions (first page, 50 rows)",
                lambda: console.get("/executions"),
                lambda: gw.get("/executions", params={"limit": 50}, headers=auth),
            ),
            (
                f"/executions?{args.filter}",
                lambda: console.get(f"/executions?{args.filter}"),
                lambda: gw.get("/executions", params={**gw_filter, "limit": 50}, headers=auth),
            ),
            (
                f"/executions/{eid[:8]}… (detail)",
                lambda: console.get(f"/executions/{eid}"),
                lambda: gw.get(f"/executions/{eid}", headers=auth),
            ),
        ]
        print(
            f"{total:,} executions in the store (the admin's list); "
            f"n={args.n} after {args.warmup} warm-up"
        )
        print(f"{'page':52} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   gateway p50/p95 ms")
        try:
            for name, page, api in pages:
                samples = await _measure(page, args.warmup, args.n)
                direct = await _measure(api, args.warmup, args.n)
                own = f"{statistics.median(samples):8.1f} {_pct(samples, 0.95):8.1f}"
                gate = f"{statistics.median(direct):.1f} / {_pct(direct, 0.95):.1f}"
                print(f"{name:52} {own} {max(samples):8.1f}   {gate}")
        finally:
            await console.post("/logout", data={"csrf": csrf})


if __name__ == "__main__":
    asyncio.run(main())
