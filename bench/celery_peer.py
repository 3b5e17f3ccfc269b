"""The peer: Celery 5, Redis as broker and result backend, an echo task like the echo agent.

Two configurations run in one bench, each its own app, queue and worker
(``celery -A bench.celery_peer worker -c 2``, prefork, two pool processes):

* ``fast`` — Celery's defaults: a task is acknowledged when a pool process accepts it (before
  it runs), four messages prefetched per process; broker and backend on the shared Redis,
  database ``BENCH_CELERY_REDIS_DB`` (default 15) on the host of ``REDIS_URL`` (emptied by
  the bench before and after, so it must not be AI Spine's, 0). A pool process killed while
  it runs a task loses that task: it was acknowledged, the worker records ``WorkerLostError``.
* ``matched`` — matched to AI Spine's guarantees: ``task_acks_late`` (acknowledged after the
  task ran), ``task_reject_on_worker_lost`` (a task whose process died is requeued and runs
  again), ``worker_prefetch_multiplier=1``; broker and backend on a ``redis-server`` of its
  own with an append-only file fsynced every second (started by ``peer.py``).

Besides the job, configuration is what a team would set: JSON only, no gossip/mingle (one
worker), results kept 10 minutes. The chain is ``echo → echo → echo`` (each task gets the
previous result, as the flow's nodes do); the fan-out is ``echo → group(4 × echo) → echo``,
which Celery runs as a chord. :func:`expected_output` is what each must return.

The worker builds its app from ``BENCH_CELERY_CONFIG`` (``fast`` | ``matched``) and
``BENCH_CELERY_BROKER_URL`` (default: the shared database); the bench process drives both
with :func:`make_app`.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from celery import Celery, chain, group
from celery.canvas import Signature

CONFIGS = ("fast", "matched")
#: the nodes of each shape, in order (the task idempotency key is ``f"{run_id}:{node}"``)
NODES: dict[str, tuple[str, ...]] = {
    "chain": ("a", "b", "c"),
    "fanout": ("a", "b1", "b2", "b3", "b4", "c"),
}
#: the hash, in the worker's own broker Redis, counting runs per task idempotency key
RUNS_KEY = "bench:runs"

_apps: dict[tuple[str, str], Celery] = {}


def shared_redis_url() -> str:
    """Database ``BENCH_CELERY_REDIS_DB`` of the shared Redis (``REDIS_URL``): ``fast``'s."""
    base = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    db = int(os.environ.get("BENCH_CELERY_REDIS_DB", "15"))
    if db == int((base.path or "/0").lstrip("/") or 0):
        raise ValueError(f"BENCH_CELERY_REDIS_DB={db} is AI Spine's own Redis database")
    return urlunsplit((base.scheme, base.netloc, f"/{db}", "", ""))


def queue_name(config: str) -> str:
    return f"bench_peer_{config}"


def make_app(config: str, url: str, *, set_as_current: bool = False) -> Celery:
    """The app of ``config`` with broker and result backend at ``url`` (one per pair)."""
    if config not in CONFIGS:
        raise ValueError(f"unknown Celery configuration {config!r} (one of {CONFIGS})")
    key = (config, url)
    if key in _apps:
        return _apps[key]
    app = Celery(queue_name(config), broker=url, backend=url, set_as_current=set_as_current)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=600,
        task_default_queue=queue_name(config),
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        # one result consumer for the bench's threads, so that stopping releases all of it
        result_backend_thread_safe=True,
    )
    if config == "matched":
        app.conf.update(
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
        )
    runs = _RunCounter(url)

    @app.task(name="bench.echo", shared=False)  # shared: every app would get the first one
    def echo(data: Any, node_id: str = "", run_id: str = "") -> dict[str, Any]:
        """What the echo agent answers: its input (the previous node's output), and its node.

        Each run first counts itself (``HINCRBY bench:runs {run_id}:{node_id} 1`` on this
        worker's broker Redis): the agent-side count of runs per idempotency key, so a re-run
        (a redelivery after a lost process) shows as 2. It costs each task one Redis round
        trip — the counterpart of the echo agent producing its result.
        """
        runs.incr(run_id, node_id)
        return {"echo": data, "node_id": node_id}

    _apps[key] = app
    return app


def drop_app(config: str, url: str) -> None:
    """Forget the app of (``config``, ``url``) after closing its connections."""
    app = _apps.pop((config, url), None)
    if app is not None:
        app.close()


class _RunCounter:
    """One Redis client per pool process (created after the fork, on the first task)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: redis.Redis | None = None
        self.pid = 0

    def incr(self, run_id: str, node_id: str) -> None:
        if self.client is None or self.pid != os.getpid():
            self.client, self.pid = redis.Redis.from_url(self.url), os.getpid()
        self.client.hincrby(RUNS_KEY, f"{run_id}:{node_id}", 1)


def worker_app() -> Celery:
    """The worker's app (``celery -A bench.celery_peer``), from its environment."""
    config = os.environ.get("BENCH_CELERY_CONFIG", "fast")
    url = os.environ.get("BENCH_CELERY_BROKER_URL") or shared_redis_url()
    return make_app(config, url, set_as_current=True)


def __getattr__(name: str) -> Any:
    # ``celery -A bench.celery_peer`` looks up ``app``: built on demand, so that importing
    # this module (the bench client) builds no app from the environment.
    if name == "app":
        return worker_app()
    raise AttributeError(name)


def workflow(app: Celery, shape: str, data: Any, run_id: str) -> Signature:
    """The workflow of ``shape`` on ``app`` (its signatures carry the app); every task
    carries ``run_id``. Folded as ``a | b | c``, so the fan-out becomes a chord."""
    echo = app.tasks["bench.echo"]
    if shape == "chain":
        return chain(
            echo.s(data, node_id="a", run_id=run_id),
            echo.s(node_id="b", run_id=run_id),
            echo.s(node_id="c", run_id=run_id),
        )
    if shape == "fanout":
        return chain(
            echo.s(data, node_id="a", run_id=run_id),
            group(echo.s(node_id=f"b{i}", run_id=run_id) for i in range(1, 5)),
            echo.s(node_id="c", run_id=run_id),
        )
    raise ValueError(shape)


def expected_output(shape: str, data: Any) -> Any:
    """What the final task of ``workflow(shape, data)`` must return (JSON round-tripped)."""

    def echo(value: Any, node_id: str) -> dict[str, Any]:
        return {"echo": value, "node_id": node_id}

    first = echo(data, "a")
    if shape == "chain":
        return echo(echo(first, "b"), "c")
    if shape == "fanout":
        return echo([echo(first, f"b{i}") for i in range(1, 5)], "c")
    raise ValueError(shape)
