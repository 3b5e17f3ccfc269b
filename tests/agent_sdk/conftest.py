"""The local model servers of the LLM kit's tests, one of each protocol per module."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from agent_sdk.llm_servers import FakeModelServer


@pytest_asyncio.fixture(scope="module")
async def model_servers() -> AsyncIterator[dict[str, FakeModelServer]]:
    servers = {kind: FakeModelServer(kind) for kind in ("openai", "anthropic")}
    for server in servers.values():
        await server.start()
    yield servers
    for server in servers.values():
        await server.stop()
