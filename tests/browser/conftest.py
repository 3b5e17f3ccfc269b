"""The console in a real browser: headless Chromium from Debian (``scripts/browser.sh``,
``make browser``) driven by Playwright with ``executable_path`` — Playwright's own browser
download cannot work here.

* ``browser`` (session): one Chromium; a missing one fails the run, never a skip.
* ``console`` (package: one for every module here): a full stack (:func:`gateway_stack`)
  and a ``spine-console`` process on a free port, pointed at that gateway, with its own
  Redis key prefix; it is not given the master key (users sign in with theirs, as in ``make up``).
* ``page`` (function): a fresh browser context; every console error and uncaught page error
  (a CSP violation shows as a console error) fails the test at teardown, listed, unless the
  test said it expects it (:func:`expect_console_error`).
* :func:`sign_in` and :func:`axe_check` (axe-core, vendored in ``vendor/``, serious and
  critical violations fail).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from e2e.harness import BIN, ROOT
from e2e.test_gateway_e2e import MASTER, gateway_stack
from playwright.async_api import Browser, BrowserContext, Page, async_playwright
from spine_servicekit.kafka import KafkaConfig
from support import prefixed_kafka, spawn, stop

from .helpers import (
    WITHHELD,
    Console,
    chromium_path,
    free_port,
    unwatch,
    wait_console,
    watch,
)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = chromium_path()
    async with async_playwright() as playwright:
        # root in CI containers: Chromium's sandbox needs user namespaces it may not have
        launched = await playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox"]
        )
        try:
            yield launched
        finally:
            await launched.close()


TEST_PARTITIONS = int(os.environ.get("SPINE_TEST_PARTITIONS", "2"))


@pytest.fixture(scope="package")
def topic_prefix() -> str:
    """One prefix for the package: its modules share one stack (each creates its own users),
    which saves a stack's start per module."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def kafka(infra: dict[str, str], topic_prefix: str) -> AsyncIterator[KafkaConfig]:
    async with prefixed_kafka(infra, topic_prefix, TEST_PARTITIONS) as cfg:
        yield cfg


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def console(
    kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str
) -> AsyncIterator[Console]:
    async with gateway_stack(kafka, infra, topic_prefix) as api:
        port = free_port()
        prefix = f"console-test-{uuid.uuid4().hex[:10]}:"
        env = {k: v for k, v in api.env.items() if k not in WITHHELD}
        env.update(
            {
                "SPINE_CONSOLE_HOST": "127.0.0.1",
                "SPINE_CONSOLE_PORT": str(port),
                "SPINE_CONSOLE_GATEWAY_URL": str(api.http.base_url).rstrip("/"),
                "REDIS_URL": infra["REDIS_URL"],
                "SPINE_CONSOLE_REDIS_PREFIX": prefix,
                "SPINE_CONSOLE_COOKIE_SECURE": "false",
            }
        )
        log = ROOT / ".spine" / "logs" / f"test-{topic_prefix}console.log"
        proc = await spawn(BIN / "spine-console", env=env, log=log, cwd=ROOT)
        url = f"http://127.0.0.1:{port}"
        try:
            await wait_console(url, proc, log)
            yield Console(api=api, url=url, master=MASTER, log=log, prefix=prefix)
        finally:
            await stop(proc, within=20)
            await _drop_sessions(infra["REDIS_URL"], prefix)


async def _drop_sessions(redis_url: str, prefix: str) -> None:
    """The module's sessions out of the shared Redis (they would expire anyway)."""
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        names = [name async for name in redis.scan_iter(match=f"{prefix}*", count=500)]
        if names:
            await redis.delete(*names)
    finally:
        await redis.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def context(browser: Browser, console: Console) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(base_url=console.url, viewport={"width": 1280, "height": 800})
    try:
        yield ctx
    finally:
        await ctx.close()


@pytest_asyncio.fixture(loop_scope="session")
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    opened = await context.new_page()
    found = watch(opened)
    try:
        yield opened
    finally:
        unwatch(opened)
    unexpected = found.unexpected()
    if unexpected:
        listed = "\n".join(f"  - {e}" for e in unexpected)
        pytest.fail(f"the browser reported {len(unexpected)} error(s):\n{listed}", pytrace=False)
