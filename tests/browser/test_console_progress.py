"""An agent's partial output in the browser (issue 21, "Streaming" — the console shows it
live): an issued agent streams progress while its node runs; the execution's page shows it
as it comes, as text (an agent's `<script>` stays text), and it survives the page's live
refreshes; once the node is done the output is there and the trail holds no progress.

The agent runs in-process (signed with its own issued key, logged in as its own principal)
so the test decides when it streams and when it answers: events, not sleeps."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from typing import Any

import pytest
from playwright.async_api import Page, expect
from spine_agent import Agent, AgentInfo, Task
from spine_agent.testing import serving
from spine_console.filters import dom_id
from spine_contracts.signing import Signer
from spine_kafka.security import KafkaSecurity
from spine_servicekit.kafka import KafkaConfig
from support import issue_agent, login_env

from .helpers import Console, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WRITER = "console-writer"
PIECES = ["Dear ", "<script>window.__pwned=1</script>", " reader"]


async def test_an_agents_progress_streams_into_the_page_as_text(
    page: Page, console: Console, kafka: KafkaConfig, infra: dict[str, str]
) -> None:
    assert console.api.stack is not None
    issued = await issue_agent(kafka, WRITER)
    login = kafka
    if issued.credentials_file is not None:  # the agent's own principal on a secured broker
        env = {**infra, **login_env(issued.credentials_file)}
        login = replace(kafka, security=KafkaSecurity.from_env(env))
    go, finish = asyncio.Event(), asyncio.Event()
    agent = Agent(AgentInfo(agent_id=WRITER, name=WRITER, capabilities=("testing",)))

    @agent.handler
    async def handle(task: Task) -> dict[str, Any]:
        await go.wait()  # the page is open and following the execution
        for piece in PIECES:
            await task.progress(text=piece, tokens=len(piece), status="writing")
        await finish.wait()
        return {"text": "".join(PIECES)}

    async with serving(agent, login, signer=Signer.from_file(issued.key_file)):
        await console.api.stack.agents_active(WRITER)
        user = await console.api.create_user(credits=10)
        key = str(user["api_key"])
        flow_id = f"progress_{os.urandom(4).hex()}"
        flow = {"flow_id": flow_id, "nodes": [{"id": "write", "agent_id": WRITER}]}
        created = await console.api.http.post(
            "/api/v1/flows", json=flow, headers=console.api.auth(key)
        )
        assert created.status_code == 201, created.text
        r = await console.api.execute(key, flow_id, {"topic": "letters"})
        assert r.status_code in (200, 202), r.text
        eid = str(r.json()["execution_id"])

        await sign_in(page, console, key)
        await page.goto(console.at(f"/executions/{eid}"))
        await expect(page.locator("#dag-write")).to_have_attribute("data-status", "running")
        await expect(page.locator(".live[data-live=open]")).to_have_count(1)
        go.set()
        out = page.locator(f"#out-{dom_id('write')}")
        await expect(out).to_have_text("".join(PIECES))  # the <script> is text, not markup
        await expect(page.locator(f"#meta-{dom_id('write')}")).to_contain_text("writing")
        assert await page.evaluate("window.__pwned") is None
        finish.set()
        await expect(page.locator("#exec-status")).to_have_text("completed")
        await expect(out).to_have_text("".join(PIECES))  # refreshes never touched it
        trail = await console.api.http.get(
            f"/api/v1/executions/{eid}/events", headers=console.api.auth(key)
        )
        assert "node_progress" not in trail.text
