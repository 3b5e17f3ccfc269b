"""Start, measure, check and stop the Celery peer (see ``celery_peer.py``).

One :class:`CeleryPeer` per configuration (``fast``, ``matched``); both may run at once
(distinct apps, queues and Redis servers). ``matched`` owns a ``redis-server`` started and
stopped here (``celery_redis.py``). Everything started is stopped by :meth:`CeleryPeer.stop`,
which the caller runs in a ``finally``, and again at interpreter exit (``atexit``) for a peer
still running. ``fast``'s shared database is claimed (``bench:owner``): a second bench process
on the same database is refused instead of flushing the first one's queues.

Every phase returns a :class:`bench.checks.Tally` beside its figures: ``accepted`` = the run ids
submitted (a run id is one workflow; the latency phase's warm-up runs included), one
``end()`` per final result read (``SUCCESS`` → completed with its value; ``FAILURE`` /
``REVOKED`` → failed), ``runs`` = the tasks' own counts of runs per idempotency key
``f"{run_id}:{node}"`` (read after the phase, then deleted). ``dispatches`` stays empty: Celery
has no dispatch to observe apart from its broker message.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult, ResultSet

from .celery_peer import (
    CONFIGS,
    NODES,
    RUNS_KEY,
    drop_app,
    expected_output,
    make_app,
    queue_name,
    shared_redis_url,
    workflow,
)
from .celery_redis import RedisServer
from .checks import Tally
from .common import WARMUP, Latency, Throughput, Tick, no_tick, out_of_time

INPUT = {"text": "hello", "n": 1}
READY_TIMEOUT_S = 60.0
OPEN_LOOP_GRACE_S = 60.0  # open_loop without a deadline waits this long after its schedule
LATE_MS = 5.0  # an open-loop submission this much behind its schedule counts as late

OWNER_KEY = "bench:owner"  # in fast's shared database: which bench process holds it

_live: set[CeleryPeer] = set()


@atexit.register
def _stop_all() -> None:
    for peer in list(_live):
        try:
            peer.stop()
        except Exception:  # at exit: stop the others anyway
            pass


class CeleryPeer:
    """One Celery configuration: its worker (prefork, ``concurrency`` processes), its Redis,
    its app on the client side.

    ``fast``: Celery's defaults on the shared Redis database (emptied on start and stop).
    ``matched``: ``acks_late`` + ``reject_on_worker_lost`` + prefetch 1 on its own
    ``redis-server`` (AOF, fsync every second). See :meth:`kill_child` for what each does with
    the task of a killed pool process.
    """

    def __init__(
        self,
        root: Path,
        config: str = "fast",
        *,
        log_path: Path | None = None,
        concurrency: int = 2,
    ) -> None:
        if config not in CONFIGS:
            raise ValueError(f"unknown Celery configuration {config!r} (one of {CONFIGS})")
        self.root = root
        self.config = config
        out = root / ".spine" / "bench"
        self.log_path = log_path or out / f"celery-{config}-worker.log"
        self.concurrency = concurrency
        self.server = (
            RedisServer(out, out / f"celery-{config}-redis.log") if config == "matched" else None
        )
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self._app: Celery | None = None
        self._redis: redis.Redis | None = None

    @property
    def name(self) -> str:
        return f"celery-{self.config}"

    @property
    def app(self) -> Celery:
        if self._app is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._app

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            raise RuntimeError(f"{self.name} is not started")
        return self._redis

    @staticmethod
    def expected(shape: str) -> Callable[[str], Any]:
        """For ``checks.audit``: every run of ``shape`` must return this."""
        want = expected_output(shape, INPUT)
        return lambda _run_id: want

    def command(self) -> list[str]:
        celery = str(Path(sys.executable).parent / "celery")
        return [
            celery,
            "-A",
            "bench.celery_peer",
            "worker",
            "-n",
            f"{self.name}@%h",
            "-c",
            str(self.concurrency),
            "-P",
            "prefork",
            "-Q",
            queue_name(self.config),
            "-l",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> int:
        """Start the worker (and ``matched``'s Redis); return once a chain went through."""
        _live.add(self)
        try:
            self.url = self.server.start() if self.server is not None else shared_redis_url()
            self._app = make_app(self.config, self.url)
            self._redis = redis.Redis.from_url(self.url)
            if self.server is None:
                self._claim_shared_db()
            env = {
                **os.environ,
                "PYTHONPATH": str(self.root),
                "BENCH_CELERY_CONFIG": self.config,
                "BENCH_CELERY_BROKER_URL": self.url,
            }
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    self.command(),
                    cwd=self.root,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() reaps it whole
                )
            self._wait_ready()
            self._redis.delete(RUNS_KEY)  # the readiness chains' counts
            return self.process.pid
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:  # ready once a chain goes through
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the Celery {self.config} worker exited ({self.process.returncode}); "
                    f"see {self.log_path}"
                )
            try:
                workflow(self.app, "chain", INPUT, "ready").apply_async().get(timeout=5)
                return
            except Exception as exc:  # not ready yet (TimeoutError, connection refused ...)
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the Celery {self.config} worker did not run a chain within "
                        f"{READY_TIMEOUT_S:.0f} s ({type(exc).__name__}: {exc}); "
                        f"see {self.log_path}"
                    ) from exc

    def stop(self) -> None:
        """Warm shutdown (SIGTERM, 20 s), then SIGKILL to the worker's process group; empty
        ``fast``'s database, stop ``matched``'s Redis and remove its directory."""
        proc, self.process = self.process, None
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)  # warm shutdown: the pool children exit with it
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)  # the worker and its pool
                    except ProcessLookupError:
                        pass
                    proc.wait(timeout=10)
        finally:
            try:
                self._release_client()
                if self._redis is not None and self.server is None and self._owns_shared_db():
                    self._redis.flushdb()
            except redis.RedisError:
                pass
            finally:
                if self._redis is not None:
                    self._redis.close()
                self._redis = None
                if self._app is not None:
                    drop_app(self.config, self.url)
                self._app = None
                if self.server is not None:
                    self.server.stop()
                _live.discard(self)

    def _claim_shared_db(self) -> None:
        """Empty ``fast``'s shared database and mark it ours (``bench:owner`` = host:pid);
        refuse if another live bench process holds it: two benches flushing one database
        under each other's workers lose each other's queues and results."""
        owner = (self.redis.get(OWNER_KEY) or b"").decode()
        if owner and owner != _me() and _alive(owner):
            raise RuntimeError(
                f"{self.url} is in use by another bench ({owner}); wait for it, or set "
                "BENCH_CELERY_REDIS_DB to another database"
            )
        self.redis.flushdb()
        self.redis.set(OWNER_KEY, _me())

    def _owns_shared_db(self) -> bool:
        owner = (self.redis.get(OWNER_KEY) or b"").decode()
        return owner in ("", _me())

    def _release_client(self) -> None:
        """Forget the result subscriptions while the server still answers.

        Celery's Redis result consumer subscribes to every task it sent or waited for, and an
        ``AsyncResult`` unsubscribes when it is garbage-collected — against a server already
        stopped, that retries for seconds (or prints errors at exit). Private attributes of
        ``celery.backends.redis.ResultConsumer``; the backend is one per app
        (``result_backend_thread_safe``).
        """
        backend = self._app._backend if self._app is not None else None
        consumer = getattr(backend, "result_consumer", None)
        if backend is None or consumer is None:
            return
        for pending in getattr(backend, "_pending_results", ()):
            pending.clear()
        getattr(consumer, "subscribed_to", set()).clear()
        getattr(consumer, "_pending_unsubscribe", set()).clear()
        consumer.stop()

    def pids(self) -> dict[str, int]:
        """What to measure: ``worker`` (count its tree: the pool processes) and, for
        ``matched``, its ``redis`` server."""
        out: dict[str, int] = {}
        if self.process is not None:
            out["worker"] = self.process.pid
        if self.server is not None and self.server.pid is not None:
            out["redis"] = self.server.pid
        return out

    def kill_child(self, look_s: float = 0.5) -> int:
        """``kill -9`` one prefork pool process; return its pid. It picks one that is busy
        (not asleep reading its job pipe: running, or waiting on Redis inside a task), looking
        for up to ``look_s``, else the first. The worker forks a replacement. The task that
        process was running:

        * ``fast``: acknowledged when the process accepted it → lost; the worker stores
          ``WorkerLostError`` for it. Killed before it sent its chain's next step, that fails
          the chain (or chord): the workflow ends failed. Killed after (a task's last Redis
          writes are the next step's message, then its own result), the task is stored failed
          but its workflow goes on and completes (``failed_tasks_in_completed``);
        * ``matched``: ``acks_late`` + ``reject_on_worker_lost`` → the message is requeued and
          the task runs again (a re-run in ``Tally.runs`` if the killed run had counted
          itself; a killed run that had sent its next step has that step run twice too); the
          workflow completes.

        Either way a task already stored as a success is left alone (Celery 5.7 checks), and
        a process killed between tasks costs nothing.
        """
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} is not running")
        children = _children(self.process.pid)
        if not children:
            raise RuntimeError(f"{self.name}: no pool process found")
        victim = children[0]
        until = time.monotonic() + look_s
        while time.monotonic() < until:
            busy = [c for c in children if _busy(c)]
            if busy:
                victim = busy[0]
                break
            time.sleep(0.001)
        os.kill(victim, signal.SIGKILL)
        return victim

    # -- phases --------------------------------------------------------------------------------

    def latency(
        self, shape: str, runs: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> tuple[Latency, Tally]:
        """One workflow at a time: ``apply_async()`` then ``get()`` of its final result."""
        out = Latency([])
        tally = Tally()
        final: dict[str, AsyncResult] = {}
        for i in range(WARMUP + runs):
            if out_of_time(deadline):
                out.truncated = True
                break
            run_id = uuid.uuid4().hex
            t0 = time.perf_counter()
            result = workflow(self.app, shape, INPUT, run_id).apply_async()
            t_accept = time.perf_counter()
            tally.accepted.add(run_id)
            final[run_id] = result
            try:
                value = result.get(timeout=30)
            except Exception as exc:  # a timeout or the task's own error: counted, not raised
                out.fail(type(exc).__name__)
                if not isinstance(exc, TimeoutError | CeleryTimeout):
                    tally.end(run_id, "failed")  # what this client was told
                continue
            t_end = time.perf_counter()
            tally.end(run_id, "completed", value)
            if i >= WARMUP:
                out.samples_ms.append((t_end - t0) * 1000)
                out.accepted_ms.append((t_accept - t0) * 1000)
                tick(1)
        # every final result as stored now: a timed-out run's end, a failure overwritten since
        self._settle(tally, final, self._metas(res.id for res in final.values()))
        tally.runs.update(self._take_runs(shape, tally.accepted))
        return out, tally

    def throughput(
        self, shape: str, n: int, tick: Tick = no_tick, deadline: float | None = None
    ) -> tuple[Throughput, Tally]:
        """Submit ``n`` workflows back to back, then wait for all of them.

        The end is the latest ``date_done`` the worker stored for a final task (not when this
        client got around to reading it), so a slow reader does not flatter the AI Spine side.
        A phase cut by its deadline reports the rest ``unfinished`` (and ``lost=None``, not
        decided) and ``elapsed_s`` up to when it stopped waiting: no rate is meaningful then.
        Results are read for the checks after the wait.
        """
        work = self._work(shape, n)
        tally = Tally()
        final: dict[str, AsyncResult] = {}
        t0_wall = time.time()
        t0 = time.perf_counter()
        for run_id, w in work:
            if out_of_time(deadline):
                break  # reported: submitted < n
            final[run_id] = w.apply_async()
        t_submit = time.perf_counter()
        tally.accepted.update(final)
        seen = self._join(final.values(), deadline, tick)
        t_stop = time.time()
        metas = self._metas(r.id for r in final.values())
        done_at = self._settle(tally, final, metas, seen)
        unfinished = len(final) - len(tally.status)
        failed = sum(1 for kind in tally.status.values() if kind == "failed")
        tally.runs.update(self._take_runs(shape, final))
        return Throughput(
            submitted=len(final),
            completed=len(done_at),
            failed=failed,
            unfinished=unfinished,
            lost=0 if not unfinished else None,  # the worker goes on: not decided here
            elapsed_s=(max(done_at.values()) if done_at and not unfinished else t_stop) - t0_wall,
            submit_s=t_submit - t0,
        ), tally

    def open_loop(
        self,
        shape: str,
        rate_per_s: float,
        seconds: float,
        deadline: float | None = None,
        tick: Tick = no_tick,
    ) -> tuple[list[float], Tally, dict[str, Any]]:
        """Submit ``rate_per_s`` workflows a second for ``seconds`` on a fixed schedule
        (submission ``i`` at ``start + i / rate``, not sleeps that drift), then wait for them
        until ``deadline`` (default: the schedule + 60 s).

        Latency of each completed workflow (in submission order, ms) = its final task's
        ``date_done`` (the worker's clock, this machine) − the wall time just before its
        ``apply_async()``. Extra counts: submitted, completed, failed, unfinished, late (a
        submission more than ``LATE_MS`` behind its schedule), max_lag_ms, errors (the
        exception stored for failed workflows, by type), failed_then_completed (told failed
        while waiting, stored completed after), failed_tasks (tasks of the phase stored
        ``FAILURE``: read for every task after the wait) and failed_tasks_in_completed (of
        those, in workflows that completed).
        """
        if rate_per_s <= 0 or seconds <= 0:
            raise ValueError("rate_per_s and seconds must be > 0")
        count = max(1, round(rate_per_s * seconds))
        work = self._work(shape, count)
        if deadline is None:
            deadline = time.monotonic() + seconds + OPEN_LOOP_GRACE_S
        tally = Tally()
        final: dict[str, AsyncResult] = {}
        sent_at: dict[str, float] = {}
        late = 0
        max_lag = 0.0
        start = time.perf_counter() + 0.01
        for i, (run_id, w) in enumerate(work):
            due = start + i / rate_per_s
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            if out_of_time(deadline):
                break
            lag_ms = (time.perf_counter() - due) * 1000
            late += lag_ms > LATE_MS
            max_lag = max(max_lag, lag_ms)
            sent_at[run_id] = time.time()
            final[run_id] = w.apply_async()
        tally.accepted.update(final)
        seen = self._join(final.values(), deadline, tick)
        metas = self._metas(r.id for r in final.values())
        done_at = self._settle(tally, final, metas, seen)
        latencies = [(done_at[r] - sent_at[r]) * 1000 for r in final if r in done_at]
        errors: Counter[str] = Counter()
        for run_id, res in final.items():
            if tally.status.get(run_id) == "failed":
                value = seen.get(res.id, (None, None))[1]
                errors[_error_name(value if value is not None else metas.get(res.id))] += 1
        tally.runs.update(self._take_runs(shape, final))
        tasks = {run_id: _task_ids(res) for run_id, res in final.items()}
        task_metas = self._metas(t for ids in tasks.values() for t in ids)
        failed_tasks = {
            run_id: sum(
                1 for t in ids if (task_metas.get(t) or {}).get("status") in ("FAILURE", "REVOKED")
            )
            for run_id, ids in tasks.items()
        }
        extra = {
            "submitted": len(final),
            "completed": len(done_at),
            "failed": sum(1 for kind in tally.status.values() if kind == "failed"),
            "unfinished": len(final) - len(tally.status),
            "late": late,
            "max_lag_ms": round(max_lag, 2),
            "errors": dict(errors),
            # told failed while waiting, completed when read after: a chain step sent before
            # its killed task stored a result (see kill_child)
            "failed_then_completed": sum(1 for r in final if tally.terminal[r] > 1),
            # tasks stored FAILURE (e.g. WorkerLostError), and those of workflows that
            # completed all the same (the task had sent its chain's next step when killed)
            "failed_tasks": sum(failed_tasks.values()),
            "failed_tasks_in_completed": sum(
                n for r, n in failed_tasks.items() if tally.status.get(r) == "completed"
            ),
        }
        return latencies, tally, extra

    def _work(self, shape: str, n: int) -> list[tuple[str, Any]]:
        """``n`` (run id, workflow) pairs, built before a phase's clock starts."""
        out = []
        for _ in range(n):
            run_id = uuid.uuid4().hex
            out.append((run_id, workflow(self.app, shape, INPUT, run_id)))
        return out

    # -- reading results and run counts --------------------------------------------------------

    def _join(
        self, results: Iterable[AsyncResult], deadline: float | None, tick: Tick
    ) -> dict[str, tuple[str, Any]]:
        """Wait for the results until ``deadline``; return what each was seen as while
        waiting (task id → (``completed`` | ``failed``, value))."""
        seen: dict[str, tuple[str, Any]] = {}

        def done(task_id: str, value: Any) -> None:
            seen[task_id] = ("failed" if isinstance(value, BaseException) else "completed", value)
            tick(1)

        timeout = None if deadline is None else max(1.0, deadline - time.monotonic())
        try:
            ResultSet(list(results), app=self.app).join_native(
                timeout=timeout, propagate=False, callback=done
            )
        except (TimeoutError, CeleryTimeout):
            pass
        return seen

    def _metas(self, task_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored meta of each task that has one (``MGET`` in chunks)."""
        backend = self.app.backend
        ids = list(task_ids)
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            raw = backend.client.mget([backend.get_key_for_task(t) for t in chunk])
            for task_id, value in zip(chunk, raw, strict=True):
                if value is not None:
                    out[task_id] = backend.decode_result(value)
        return out

    @staticmethod
    def _settle(
        tally: Tally,
        final: dict[str, AsyncResult],
        metas: dict[str, dict[str, Any]],
        seen: dict[str, tuple[str, Any]] | None = None,
    ) -> dict[str, float]:
        """The terminal events of each workflow: what the client was told while waiting
        (``seen``, or ``end()`` calls already made), then the final result as stored now
        (``SUCCESS`` → completed, ``FAILURE`` / ``REVOKED`` → failed); a stored state other
        than the one told is a second terminal event. Return the completion time (epoch s,
        the worker's ``date_done``) of each workflow that completed first time."""
        done_at: dict[str, float] = {}
        for run_id, res in final.items():
            if seen and res.id in seen and run_id not in tally.status:
                kind, value = seen[res.id]
                tally.end(run_id, kind, value if kind == "completed" else None)
            meta = metas.get(res.id) or {}
            status = meta.get("status")
            kind = {"SUCCESS": "completed", "FAILURE": "failed", "REVOKED": "failed"}.get(status)
            if kind is None:
                continue
            if run_id not in tally.status or tally.status[run_id] != kind:
                tally.end(run_id, kind, meta.get("result") if kind == "completed" else None)
            if tally.status[run_id] == "completed" and meta.get("date_done") is not None:
                done_at[run_id] = _timestamp(meta["date_done"])
        return done_at

    def _take_runs(self, shape: str, run_ids: Iterable[str]) -> Counter[str]:
        """The tasks' run counts for these run ids (then deleted from the hash)."""
        fields = [f"{r}:{node}" for r in run_ids for node in NODES[shape]]
        out: Counter[str] = Counter()
        for i in range(0, len(fields), 1000):
            chunk = fields[i : i + 1000]
            pipe = self.redis.pipeline(transaction=False)
            pipe.hmget(RUNS_KEY, chunk)
            pipe.hdel(RUNS_KEY, *chunk)
            values, _ = pipe.execute()
            for field, value in zip(chunk, values, strict=True):
                if value is not None:
                    out[field] = int(value)
        return out


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(owner: str) -> bool:
    """Whether the bench process ``host:pid`` still runs (another host's: assumed so)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _task_ids(result: Any) -> list[str]:
    """Every task id of a workflow, from its final result's parents (a chord's header is a
    ``GroupResult``)."""
    out: list[str] = []
    node = result
    while node is not None:
        children = getattr(node, "results", None)
        if children:
            out += [c.id for c in children]
        else:
            out.append(node.id)
        node = node.parent
    return out


def _timestamp(done: Any) -> float:
    if isinstance(done, str):
        done = datetime.fromisoformat(done)
    if done.tzinfo is None:
        done = done.replace(tzinfo=UTC)
    return done.timestamp()


def _error_name(meta: Any) -> str:
    """The exception's type, from a stored meta or the exception itself."""
    if isinstance(meta, BaseException):
        return type(meta).__name__
    result = (meta or {}).get("result")
    if isinstance(result, BaseException):
        return type(result).__name__
    if isinstance(result, dict) and "exc_type" in result:
        return str(result["exc_type"])
    return str((meta or {}).get("status"))


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
    except OSError:
        pass
    if out:
        return sorted(set(out))
    for stat in Path("/proc").glob("[0-9]*/stat"):  # no /proc/*/task/*/children here
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def _busy(pid: int) -> bool:
    """An idle pool process sleeps reading its job pipe (``S``, wchan ``*pipe_read``)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False
    return not (state == "S" and wchan.endswith("pipe_read"))
