"""The peer: Celery 5, Redis as broker and result backend, an echo task like the echo agent.

The worker is started by the bench as ``celery -A bench.celery_peer worker -c 2`` (prefork,
two processes). Configuration is Celery's defaults except what a team would set for this
job: JSON only, no gossip/mingle (one worker), results kept 10 minutes. The chain is
``echo → echo → echo`` (each task gets the previous result, as the flow's nodes do); the
fan-out is ``echo → group(4 × echo) → echo``, which Celery runs as a chord.

Redis database: ``BENCH_CELERY_REDIS_DB`` (default 15) on the host of ``REDIS_URL``; the
bench empties that database before and after, so it must not be one AI Spine uses (0).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from celery import Celery, chain, group


def broker_url() -> str:
    base = urlsplit(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    db = int(os.environ.get("BENCH_CELERY_REDIS_DB", "15"))
    if db == int((base.path or "/0").lstrip("/") or 0):
        raise ValueError(f"BENCH_CELERY_REDIS_DB={db} is AI Spine's own Redis database")
    return urlunsplit((base.scheme, base.netloc, f"/{db}", "", ""))


app = Celery("bench_peer", broker=broker_url(), backend=broker_url())
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    task_default_queue="bench_peer",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="bench.echo")
def echo(data: Any, node_id: str = "") -> dict[str, Any]:
    """What the echo agent answers: its input (the previous node's output), and its node."""
    return {"echo": data, "node_id": node_id}


def workflow(shape: str, data: Any) -> Any:
    if shape == "chain":
        return chain(echo.s(data, "a"), echo.s("b"), echo.s("c"))
    if shape == "fanout":
        return chain(
            echo.s(data, "a"),
            group(echo.s(f"b{i}") for i in range(1, 5)),
            echo.s("c"),
        )
    raise ValueError(shape)
