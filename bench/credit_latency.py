"""Latency of ``credit_analysis`` (complete input) through Kafka, one execution at a time.

Needs a running stack (``make up``): publishes ``StartExecution`` straight to the execution
commands topic, as the auth service would, and awaits the terminal event on the execution
log. Prints p50/p95/p99 in milliseconds. ``uv run python bench/credit_latency.py --runs 200``
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from spine_contracts import (
    ExecutionCancelled,
    ExecutionCompleted,
    ExecutionFailed,
    Message,
    StartExecution,
    to_bytes,
    topics,
)
from spine_flows import flow_version, load_flow_file
from spine_servicekit.follower import TopicFollower
from spine_servicekit.kafka import KafkaConfig, headers_for, make_producer
from spine_servicekit.settings import CommonSettings

ROOT = Path(__file__).resolve().parent.parent
APPLICANT = {"name": "Ana", "income": 6000, "amount": 12000, "term_months": 24, "debts": 300}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--flow", default=str(ROOT / "flows" / "credit_analysis.yaml"))
    args = parser.parse_args()
    cfg = KafkaConfig.from_settings(CommonSettings(), client_id="bench")
    flow = load_flow_file(args.flow)
    waiting: dict[str, asyncio.Future[Message]] = {}

    def on_event(message: Any, _record: Any) -> None:
        if isinstance(message, (ExecutionCompleted, ExecutionFailed, ExecutionCancelled)):
            fut = waiting.pop(message.data.execution_id, None)
            if fut is not None and not fut.done():
                fut.set_result(message)

    follower = TopicFollower(cfg, cfg.topic(topics.EXECUTION_EVENTS), on_event, start="end")
    await follower.start()
    await follower.wait_caught_up()
    producer = make_producer(cfg)
    await producer.start()
    samples: list[float] = []
    failures = 0
    try:
        for i in range(args.runs + 10):
            execution_id = f"bench-{uuid.uuid4().hex[:12]}"
            command = StartExecution.build(
                execution_id=execution_id,
                user_id="bench",
                flow=flow,
                flow_version=flow_version(flow),
                input_data=APPLICANT,
            )
            fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
            waiting[execution_id] = fut
            t0 = time.perf_counter()
            await producer.send_and_wait(
                cfg.topic(topics.EXECUTION_COMMANDS),
                to_bytes(command),
                key=execution_id.encode(),
                headers=headers_for(command),
            )
            result = await asyncio.wait_for(fut, 60)
            if not isinstance(result, ExecutionCompleted):
                failures += 1
            if i >= 10:  # warm-up excluded
                samples.append((time.perf_counter() - t0) * 1000)
    finally:
        await producer.stop()
        await follower.stop()
    q = statistics.quantiles(samples, n=100, method="inclusive")
    print(
        f"credit_analysis runs={len(samples)} failed={failures} "
        f"p50={q[49]:.1f} ms p95={q[94]:.1f} ms p99={q[98]:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
