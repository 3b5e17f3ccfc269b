"""A short `make bench` run against a test's own stack: the bench's checks, proven on a real run.

The stack is the e2e harness's (real processes on the module's topic prefix, a gateway on
a free port); the bench runs as its own process, exactly as `make bench` starts it, on AI
Spine only, one round, a few executions, writing its JSON to the test's directory.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from e2e.test_gateway_e2e import Api

ROOT = Path(__file__).resolve().parents[2]
SHORT = ("--only", "spine", "--rounds", "1", "--runs", "3", "--n", "12", "--n-fanout", "6")


async def run_bench(api: Api, out: Path, *extra: str) -> tuple[int, dict[str, Any], str]:
    """(exit code, the JSON record of last.json, the printed text)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.run",
        *SHORT,
        "--idle",
        "0.2",
        "--drain",
        "5",
        "--url",
        str(api.http.base_url).rstrip("/"),
        "--out",
        str(out),
        *extra,
        cwd=ROOT,
        env=api.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(240):
        printed, _ = await proc.communicate()
    text = printed.decode(errors="replace")
    assert proc.returncode is not None
    record_file = out / "last.json"
    assert record_file.exists(), (
        f"the bench wrote no record (exit {proc.returncode}):\n{text[-3000:]}"
    )
    record = json.loads(record_file.read_text())
    last_line = json.loads(text.strip().splitlines()[-1])
    assert last_line == {"headline": record["headline"]}, "the last line is the headline"
    return proc.returncode, record, text


def spine_failures(record: dict[str, Any]) -> dict[str, int]:
    return dict(record["headline"]["checks"]["failures"].get("spine", {}))


def checked(record: dict[str, Any], shape: str) -> int:
    """Executions the run checked for one flow (latency warm-up included)."""
    phases = record["rounds"][0]["spine"][shape]
    return sum(p["checks"]["checked"] for p in phases.values())
