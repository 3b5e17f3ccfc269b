"""Start, measure and stop the Celery peer (see ``celery_peer.py``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import ResultSet

from . import celery_peer
from .common import WARMUP, Latency, Throughput, Tick, no_tick, out_of_time

INPUT = {"text": "hello", "n": 1}


class CeleryPeer:
    def __init__(self, root: Path, log_path: Path, *, concurrency: int = 2) -> None:
        self.root = root
        self.log_path = log_path
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.redis = redis.Redis.from_url(celery_peer.broker_url())

    @property
    def command(self) -> list[str]:
        celery = str(Path(sys.executable).parent / "celery")
        return [
            celery,
            "-A",
            "bench.celery_peer",
            "worker",
            "-c",
            str(self.concurrency),
            "-P",
            "prefork",
            "-Q",
            "bench_peer",
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]

    def start(self) -> int:
        self.redis.flushdb()
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:  # ready once a chain goes through
            if self.process.poll() is not None:
                raise RuntimeError(f"the Celery worker exited; see {self.log_path}")
            try:
                celery_peer.workflow("chain", INPUT).apply_async().get(timeout=5)
                return self.process.pid
            except Exception:  # not ready yet (TimeoutError, connection refused ...)
                if time.monotonic() > deadline:
                    raise
        return self.process.pid

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # warm shutdown: the pool children exit with it
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self.redis.flushdb()

    def latency(
        self, shape: str, runs: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> Latency:
        out = Latency([])
        for i in range(WARMUP + runs):
            if out_of_time(deadline):
                out.truncated = True
                break
            t0 = time.perf_counter()
            result = celery_peer.workflow(shape, INPUT).apply_async()
            t_accept = time.perf_counter()
            try:
                result.get(timeout=30)
            except Exception as exc:  # a timeout or the task's own error: counted, not raised
                out.fail(type(exc).__name__)
                continue
            t_end = time.perf_counter()
            if i >= WARMUP:
                out.samples_ms.append((t_end - t0) * 1000)
                out.accepted_ms.append((t_accept - t0) * 1000)
                tick(1)
        return out

    def throughput(
        self, shape: str, n: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> Throughput:
        """Submit ``n`` workflows back to back, then wait for all of them.

        The end is the latest ``date_done`` the worker stored for a final task (not when this
        client got around to reading it), so a slow reader does not flatter the AI Spine side.
        """
        workflows = [celery_peer.workflow(shape, INPUT) for _ in range(n)]
        t0_wall = time.time()
        t0 = time.perf_counter()
        results = []
        for w in workflows:
            if out_of_time(deadline):
                break  # reported: submitted < n
            results.append(w.apply_async())
        t_submit = time.perf_counter()
        timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
        try:
            ResultSet(results).join_native(
                timeout=timeout, propagate=False, callback=lambda _id, _v: tick(1)
            )
        except (TimeoutError, CeleryTimeout):
            pass
        t_stop = time.time()
        done_at: list[float] = []
        failed = unfinished = 0
        for r in results:
            meta = r.backend.get_task_meta(r.id)
            if meta.get("status") == "SUCCESS" and meta.get("date_done") is not None:
                done = meta["date_done"]
                if isinstance(done, str):
                    done = datetime.fromisoformat(done)
                if done.tzinfo is None:
                    done = done.replace(tzinfo=UTC)
                done_at.append(done.timestamp())
            elif meta.get("status") in ("FAILURE", "REVOKED"):
                failed += 1
            else:
                unfinished += 1
        return Throughput(
            submitted=len(results),
            completed=len(done_at),
            failed=failed,
            unfinished=unfinished,
            lost=0 if not unfinished else None,  # the worker is stopped: never decided
            elapsed_s=(max(done_at) if done_at and not unfinished else t_stop) - t0_wall,
            submit_s=t_submit - t0,
        )
