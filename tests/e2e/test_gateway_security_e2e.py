"""Size limits and secrets in logs, on a real stack (gateway, auth, orchestrator,
registry, echo agent; real Kafka, PostgreSQL, Redis).

One run (the module's fixture) does what an operator's day would: users created with the
master key, executions run to completion, a key regenerated, the old key and a made-up key
refused, credits added, a user looked up, and bodies and messages over their limits
refused with 413. The stack is then stopped, so every process has written its last line,
and the tests look at what the run answered and at every log file it wrote
(``.spine/logs/test-<prefix>*.log``): no API key (master or user, valid or not), no
metrics scrape token and no database password may appear in any line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import pytest_asyncio
from spine_servicekit.kafka import KafkaConfig

from .harness import ROOT
from .test_gateway_e2e import MASTER, SCRAPE, Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

MAX_BODY = 3 * 1024 * 1024  # over the Kafka message limit (1 MiB): both limits are reachable
FIELDS = {"detail", "code", "message", "error_code"}
BAD_KEY = "sk_" + "Zq9" * 14 + "Z"  # well-formed, never issued


@dataclass
class Run:
    prefix: str
    secrets: dict[str, str] = field(default_factory=dict)
    answers: dict[str, httpx.Response] = field(default_factory=dict)
    raw: dict[str, RawAnswer] = field(default_factory=dict)
    credits_before: int = 0
    credits_after: int = 0
    executions_after: int = 0


async def _completed(api: Api, key: str, input_data: dict[str, Any]) -> str:
    r = await api.execute(key, "echo_chain", input_data)
    assert r.status_code == 200, r.text
    eid = str(r.json()["execution_id"])
    events = await api.sse(key, eid)
    assert events[-1]["event"] == "execution.completed", events[-1]
    return eid


@dataclass
class RawAnswer:
    status: int
    body: dict[str, Any]
    sent: int  # body bytes the client had written when the answer came


async def _raw_post(
    base_url: str, path: str, headers: dict[str, str], *, length: int | None, total: int
) -> RawAnswer:
    """POST over a bare socket, writing up to ``total`` body bytes in 64 KiB pieces (chunked
    unless ``length`` is declared; with a declared length nothing is written) while reading
    the answer, as a streaming client would: the answer must come before the body ends."""
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = [f"POST {path} HTTP/1.1", f"Host: {url.netloc}", "Content-Type: application/json"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    sent = 0

    async def pump() -> None:
        nonlocal sent
        piece = 64 * 1024
        with contextlib.suppress(ConnectionError):
            while length is None and sent < total:
                writer.write(b"%x\r\n%s\r\n" % (piece, b" " * piece))
                sent += piece
                await writer.drain()
                # drain() does not yield while the server keeps reading: without this the
                # answer could sit unread until the whole body is written
                await asyncio.sleep(0)

    pumping = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(60):
            status = int((await reader.readline()).split()[1])
            size = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                if name.strip().lower() == "content-length":
                    size = int(value)
            body = orjson.loads(await reader.readexactly(size))
        return RawAnswer(status, body, sent)
    finally:
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def run(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> Run:
    result = Run(prefix=topic_prefix)
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=("registry", "orchestrator", "auth", "echo", "gateway"),
        agents=("echo",),
        flows=("echo_chain",),
        env={"SPINE_GATEWAY_MAX_BODY_BYTES": str(MAX_BODY), "LOG_LEVEL": "DEBUG"},
    ) as api:
        master = api.auth(MASTER)
        ana = await api.create_user(credits=10, rate_limit=10_000)
        first_key = ana["api_key"]
        await _completed(api, first_key, {"n": 1})

        r = await api.http.post("/api/v1/users/regenerate-key", headers=api.auth(first_key))
        assert r.status_code == 200, r.text
        key = r.json()["api_key"]
        r = await api.http.get("/api/v1/users/me", headers=api.auth(first_key))
        assert r.status_code == 401, r.text  # the old key is revoked
        await _completed(api, key, {"n": 2})
        r = await api.http.get("/api/v1/users/me", headers=api.auth(BAD_KEY))
        assert r.status_code == 401
        r = await api.http.post(
            "/api/v1/users/add-credits",
            json={"user_id": ana["user_id"], "credits": 5},
            headers=master,
        )
        assert r.status_code == 200, r.text
        r = await api.http.get(f"/api/v1/users/{ana['user_id']}", headers=master)
        assert r.status_code == 200, r.text
        other = await api.create_user(credits=1)
        # the operators' scrape token, and a near miss of it (refused as a bad key)
        r = await api.http.get("/metrics", headers=api.auth(SCRAPE))
        assert r.status_code == 200, r.text
        assert (await api.http.get("/metrics", headers=api.auth(SCRAPE + "x"))).status_code == 401

        me = (await api.http.get("/api/v1/users/me", headers=api.auth(key))).json()
        result.credits_before = me["credits"]
        h = api.auth(key)
        # 1. the body limit: declared, then streamed without a length
        base = str(api.http.base_url)
        result.raw["declared"] = await _raw_post(
            base, "/api/v1/flows/execute", h, length=MAX_BODY + 1, total=0
        )
        result.raw["streamed"] = await _raw_post(
            base, "/api/v1/flows/execute", h, length=None, total=64 * MAX_BODY
        )
        # 2. within the body limit, over the Kafka message limit
        result.answers["input_data"] = await api.execute(
            key, "echo_chain", {"blob": "x" * (1536 * 1024)}
        )
        result.answers["input_data_idem"] = await api.execute(
            key, "echo_chain", {"blob": "y" * (1536 * 1024)}, headers={"Idempotency-Key": "big-1"}
        )
        flow = {
            "flow_id": "too_big",
            "description": "d" * (1100 * 1024),
            "nodes": [{"id": "a", "agent_id": "echo"}],
        }
        result.answers["flow"] = await api.http.put("/api/v1/flows/too_big", json=flow, headers=h)
        # the gateway still works, and nothing was charged or started by the refusals
        await _completed(api, key, {"n": 3})
        me = (await api.http.get("/api/v1/users/me", headers=h)).json()
        result.credits_after = me["credits"]
        listed = (await api.http.get("/api/v1/executions", headers=h)).json()
        result.executions_after = listed["total"]
        r = await api.http.get("/api/v1/flows/too_big", headers=h)
        result.answers["flow_lookup"] = r

        result.secrets = {
            "master key": MASTER,
            "first user key": first_key,
            "regenerated user key": key,
            "other user key": other["api_key"],
            "made-up key": BAD_KEY,
            "metrics scrape token": SCRAPE,
        }
    # the stack is stopped: every process has exited and written its last line
    url = urlsplit(infra["DATABASE_URL"])
    if url.password:
        result.secrets["database URL"] = infra["DATABASE_URL"]
        result.secrets["database credentials"] = f"{url.username}:{url.password}@"
        result.secrets["database password (as a field)"] = f"password={url.password}"
        if len(url.password) >= 8:  # a short one is a common word: checked in context only
            result.secrets["database password"] = url.password
    return result


def _is_413(r: httpx.Response, *words: str) -> None:
    assert r.status_code == 413, r.text[:500]
    body = r.json()
    assert set(body) >= FIELDS and body["error_code"] == "PAYLOAD_TOO_LARGE", body
    for word in words:
        assert word in body["message"], body


async def test_a_body_over_the_limit_is_413(run: Run) -> None:
    for name in ("declared", "streamed"):
        raw = run.raw[name]
        assert raw.status == 413, raw
        assert set(raw.body) >= FIELDS and raw.body["error_code"] == "PAYLOAD_TOO_LARGE"
        assert str(MAX_BODY) in raw.body["message"]
    assert run.raw["declared"].sent == 0  # refused on the declared length alone
    # answered while the client was still sending: the rest was never read, let alone kept
    assert 0 < run.raw["streamed"].sent < 64 * MAX_BODY


async def test_a_message_over_the_kafka_limit_is_413_and_costs_nothing(run: Run) -> None:
    _is_413(run.answers["input_data"], "input_data", "1,046,528-byte message limit")
    _is_413(run.answers["input_data_idem"], "input_data")
    _is_413(run.answers["flow"], "flow definition")
    assert run.answers["flow_lookup"].status_code == 404  # never defined
    # three executions ran (one credit each); the refused ones were neither charged nor
    # started: only the last execution's credit is gone since the refusals began
    assert run.credits_after == run.credits_before - 1
    assert run.executions_after == 3


async def test_no_key_or_password_in_any_log_line(run: Run) -> None:
    logs = sorted((ROOT / ".spine" / "logs").glob(f"test-{run.prefix}*.log"))
    names = {p.name.removeprefix(f"test-{run.prefix}") for p in logs}
    assert {"gateway.log", "auth.log", "orchestrator.log", "registry.log", "echo.log"} <= names
    assert sum(p.stat().st_size for p in logs) > 10_000  # the run did log (DEBUG level)
    assert len(run.secrets) >= 5
    found = _leaks(logs, run.secrets)
    assert not found, "secrets in the logs:\n" + "\n".join(found)


def _leaks(files: list[Path], secrets: dict[str, str]) -> list[str]:
    """``file:line: what`` for every line that holds a secret (each key also by its first
    20 characters, so a truncated key is caught too)."""
    needles = dict(secrets)
    for what, value in secrets.items():
        if value.startswith("sk_") or value in (MASTER, SCRAPE):
            needles[f"{what} (prefix)"] = value[:20]
    found: list[str] = []
    for path in files:
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                line = raw.decode("utf-8", errors="replace")
                for what, needle in needles.items():
                    if needle in line:
                        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
                        found.append(f"{where}:{number}: {what}")
    return found


async def test_the_leak_finder_finds_a_planted_key(tmp_path: Path) -> None:
    """The grep itself: a key written to a log file, even cut short, is reported."""
    planted = tmp_path / "x.log"
    key = "sk_" + os.urandom(32).hex()[:43]
    planted.write_text(f'{{"event": "ok"}}\n{{"event": "bad", "k": "{key[:25]}..."}}\n')
    assert _leaks([planted], {"user key": key}) == ["x.log:2: user key (prefix)"]
    assert _leaks([planted], {"user key": "sk_" + "0" * 43}) == []
