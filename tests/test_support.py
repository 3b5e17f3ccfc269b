"""The shared scaffolding's process helpers (``support``): stop asks, then insists."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from support import log_tail, spawn, stop

#: a process that ignores SIGTERM, and says so once its handler is in place
STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ignoring', flush=True)\n"
    "time.sleep(60)\n"
)


async def test_a_process_logs_to_its_file_and_stop_leaves_an_ended_one_be(tmp_path: Path) -> None:
    log = tmp_path / "p.log"
    proc = await spawn(sys.executable, "-c", "print('hello')", env={}, log=log)
    async with asyncio.timeout(10):
        assert await proc.wait() == 0
    assert await stop(proc) == 0  # ended already: its code, no signal
    assert log_tail(log) == "hello\n"


async def test_stop_ends_a_process_with_sigterm() -> None:
    code = "print('up', flush=True); input()"
    proc = await spawn(
        sys.executable, "-c", code, env={}, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        assert await proc.stdout.readline() == b"up\n"
    assert await stop(proc, within=10) == -signal.SIGTERM


async def test_a_process_that_ignores_sigterm_is_killed_and_the_wait_fails() -> None:
    proc = await spawn(sys.executable, "-c", STUBBORN, env={}, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    async with asyncio.timeout(10):
        assert await proc.stdout.readline() == b"ignoring\n"
    with pytest.raises(TimeoutError):
        await stop(proc, within=0.3)
    assert proc.returncode == -signal.SIGKILL
