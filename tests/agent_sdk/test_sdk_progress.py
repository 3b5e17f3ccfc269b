"""``task.progress``: coalesced to about 10 messages a second per node, text deltas
concatenated, the latest tokens and status kept, everything flushed (and acknowledged)
before the result, and a failed send never fails the task. No Kafka: the worker's producer
is a fake that records what is acknowledged, in order."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiokafka import TopicPartition
from spine_agent import Agent, AgentInfo, Task
from spine_agent.agent import _Item, _Running, _Worker
from spine_agent.llm import ModelHandler, model_agent
from spine_agent.llm.model_agent import stream_progress
from spine_agent.progress import Chunk, NodeProgress
from spine_agent.testing import task_message
from spine_contracts import AgentProgress, AgentResult, parse, topics
from spine_contracts.messages.agents import PROGRESS_TEXT_MAX_BYTES
from spine_contracts.signing import Signer, check
from spine_kafka.clients import KafkaConfig
from spine_kafka.security import KafkaSecurity


class Sent:
    """A send function that records each chunk and when it went."""

    def __init__(self, fail: bool = False) -> None:
        self.chunks: list[Chunk] = []
        self.at: list[float] = []
        self.fail = fail

    async def __call__(self, chunk: Chunk) -> None:
        self.at.append(time.monotonic())
        if self.fail:
            raise ConnectionError("broker gone")
        self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return "".join(c.text or "" for c in self.chunks)


async def test_deltas_within_a_window_are_concatenated_in_order() -> None:
    sent = Sent()
    progress = NodeProgress(sent, interval=0.1)
    words = [f"w{i} " for i in range(200)]
    for word in words:
        await progress.report(text=word)
    await progress.close()
    assert sent.text == "".join(words)
    assert len(sent.chunks) <= 3  # 200 deltas at once: one message, maybe two
    assert [c.seq for c in sent.chunks] == list(range(1, len(sent.chunks) + 1))


async def test_at_most_ten_messages_a_second_per_node() -> None:
    sent = Sent()
    progress = NodeProgress(sent)  # the default interval: 0.1 s
    end = time.monotonic() + 1.0
    count = 0
    while time.monotonic() < end:  # a model streaming ~500 tokens a second for 1 s
        await progress.report(text="t", tokens=count)
        count += 1
        await asyncio.sleep(0.002)
    await progress.close()
    assert sent.text == "t" * count  # nothing lost, nothing repeated
    assert len(sent.chunks) <= 12  # ~10 in the second, plus the first and the flush
    gaps = [b - a for a, b in zip(sent.at, sent.at[1:], strict=False)]
    assert min(gaps) >= 0.095
    assert sent.chunks[-1].tokens == count - 1  # the latest count wins


async def test_latest_tokens_and_status_win() -> None:
    sent = Sent()
    progress = NodeProgress(sent, interval=0.05)
    await progress.report(status="thinking", tokens=1)
    await progress.report(status="writing", tokens=7)
    await progress.close()
    assert (sent.chunks[-1].status, sent.chunks[-1].tokens) == ("writing", 7)
    assert all(c.text is None for c in sent.chunks)


async def test_a_long_status_is_cut_and_long_text_split_within_the_byte_limit() -> None:
    sent = Sent()
    progress = NodeProgress(sent, interval=0.01)
    text = "é" * (PROGRESS_TEXT_MAX_BYTES)  # two bytes each: two messages' worth
    await progress.report(text=text, status="s" * 500)
    await progress.close()
    assert sent.text == text
    assert all(len((c.text or "").encode()) <= PROGRESS_TEXT_MAX_BYTES for c in sent.chunks)
    assert len(sent.chunks) == 2
    assert all(len(c.status or "") == 200 for c in sent.chunks)


async def test_the_buffer_is_bounded() -> None:
    sent = Sent()
    progress = NodeProgress(sent, interval=0.01, max_pending_bytes=100)
    await progress.report(text="a" * 80)
    await progress.report(text="b" * 80)
    assert progress.dropped_bytes == 60
    await progress.close()
    assert sent.text == "a" * 80 + "b" * 20


async def test_a_failed_send_never_raises_and_close_still_returns() -> None:
    sent = Sent(fail=True)
    progress = NodeProgress(sent, interval=0.01)
    await progress.report(text="x")
    await progress.close()
    assert progress.failed == 1 and sent.chunks == []


async def test_a_hung_send_is_given_up_within_its_timeout() -> None:
    async def hang(_chunk: Chunk) -> None:
        await asyncio.Event().wait()

    progress = NodeProgress(hang, interval=0.01, send_timeout=0.05)
    await progress.report(text="x")
    async with asyncio.timeout(1):
        await progress.close()
    assert progress.failed == 1


async def test_nothing_is_sent_after_close_or_discard() -> None:
    sent = Sent()
    progress = NodeProgress(sent, interval=0.01)
    await progress.report(text="a")
    await progress.close()
    await progress.report(text="late")
    await asyncio.sleep(0.05)
    assert sent.text == "a"
    other = NodeProgress(sent, interval=10)
    await other.report(text="b")
    await other.report(text="c")  # waits for the interval
    other.discard()
    await asyncio.sleep(0.02)
    assert "c" not in sent.text


async def test_a_task_built_outside_an_agent_reports_nowhere() -> None:
    task = Task.from_message(task_message("a"))
    await task.progress(text="x", tokens=1, status="s")  # no error, nothing to send to


# --- the worker: signed, on the progress topic, acknowledged before the result ---------------


class FakeFuture:
    def __init__(self, producer: FakeProducer, record: tuple[str, bytes, bytes, Any]) -> None:
        self._producer = producer
        self._record = record

    def __await__(self) -> Any:
        async def ack() -> None:
            await asyncio.sleep(0.01)  # the broker takes a moment
            self._producer.acked.append(self._record)

        return ack().__await__()


class FakeProducer:
    def __init__(self) -> None:
        self.acked: list[tuple[str, bytes, bytes, Any]] = []

    async def send(self, topic: str, value: bytes, key: bytes, headers: Any) -> FakeFuture:
        return FakeFuture(self, (topic, key, value, headers))

    async def send_and_wait(self, topic: str, value: bytes, key: bytes, headers: Any) -> None:
        self.acked.append((topic, key, value, headers))


def _worker(agent: Agent, signer: Signer) -> tuple[_Worker, FakeProducer]:
    assert agent._handler is not None
    cfg = KafkaConfig("unused:9092", prefix="t-", security=KafkaSecurity())
    worker = _Worker(
        agent,
        agent._handler,
        cfg,
        asyncio.Event(),
        instance_id="i1",
        heartbeat_interval=5,
        concurrency=1,
        drain_timeout=1,
        signer=signer,
    )
    producer = FakeProducer()
    worker.producer = producer  # type: ignore[assignment]
    return worker, producer


async def test_the_worker_signs_progress_and_sends_it_all_before_the_result() -> None:
    agent = Agent(AgentInfo(agent_id="writer"))

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        for i in range(30):
            await task.progress(text=f"{i},", tokens=i, status="writing")
            await asyncio.sleep(0.01)
        return {"text": "done"}

    signer = Signer.generate()
    worker, producer = _worker(agent, signer)
    message = task_message("writer", execution_id="e1", node_id="n1", attempt=2)
    await worker._run_task(_Running(_Item(TopicPartition("t", 0), 0, message)))

    topics_in_order = [t for t, *_ in producer.acked]
    assert topics_in_order[-1] == "t-" + topics.AGENT_RESULTS.base
    progress_records = [r for r in producer.acked if r[0] == "t-" + topics.AGENT_PROGRESS.base]
    assert len(progress_records) == len(producer.acked) - 1
    assert 2 <= len(progress_records) <= 6  # ~0.3 s of progress at 10/s at most
    texts = []
    for _topic, key, value, headers in progress_records:
        assert key == b"e1"
        base = topics.AGENT_PROGRESS.base
        assert check(headers, base, key, value, signer.public_key) is None
        sent = parse(value)
        assert isinstance(sent, AgentProgress)
        d = sent.data
        assert (d.execution_id, d.node_id, d.attempt, d.agent_id) == ("e1", "n1", 2, "writer")
        assert sent.causation_id == str(message.message_id)
        texts.append(d.text or "")
    assert "".join(texts) == "".join(f"{i}," for i in range(30))
    result = parse(producer.acked[-1][2])
    assert isinstance(result, AgentResult) and result.data.status == "success"


async def test_a_progress_failure_does_not_fail_the_task() -> None:
    agent = Agent(AgentInfo(agent_id="writer"))

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        await task.progress(text="x")
        return {"ok": True}

    worker, producer = _worker(agent, Signer.generate())

    async def broken(*_a: Any, **_k: Any) -> Any:
        raise ConnectionError("no broker")

    producer.send = broken  # type: ignore[method-assign]
    await worker._run_task(_Running(_Item(TopicPartition("t", 0), 0, task_message("writer"))))
    result = parse(producer.acked[-1][2])
    assert isinstance(result, AgentResult) and result.data.status == "success"


# --- the LLM kit streams its tokens as progress by default -----------------------------------


def test_model_agent_streams_tokens_as_progress_by_default_and_can_stop() -> None:
    assert ModelHandler(lambda: None).on_token is stream_progress  # type: ignore[arg-type,return-value]
    agent = model_agent(agent_id="m", llm=lambda: None, stream=False)  # type: ignore[arg-type,return-value]
    assert agent._handler is not None


@pytest.mark.parametrize("delta", ["Hel", "lo"])
async def test_stream_progress_forwards_each_delta(delta: str) -> None:
    seen: list[tuple[str | None, int | None, str | None]] = []

    async def sink(text: str | None, tokens: int | None, status: str | None) -> None:
        seen.append((text, tokens, status))

    task = Task.from_message(task_message("m"), progress=sink)
    await stream_progress(task, delta)
    assert seen == [(delta, None, None)]
