"""What the browser tests share: the console under test, the browser's error log of a page,
signing in, and the accessibility check (the fixtures are in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.test_gateway_e2e import Api
from playwright.async_api import ConsoleMessage, Page
from support import log_tail

VENDOR = Path(__file__).resolve().parent / "vendor"
AXE = VENDOR / "axe-core-4.14.1.min.js"
#: axe impacts that fail a page (minor and moderate ones are printed, not failed)
AXE_FAILS = ("serious", "critical")
#: the environment a console must not be handed: it signs users in with their own keys
WITHHELD = ("API_KEY", "SPINE_METRICS_SCRAPE_TOKEN")


def chromium_path() -> str:
    """Chromium to drive: ``$SPINE_CHROMIUM``, else ``chromium`` on PATH; none fails."""
    path = os.environ.get("SPINE_CHROMIUM") or shutil.which("chromium")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            "no Chromium for the browser tests: `make browser` (scripts/browser.sh) installs "
            "Debian's chromium package, or set SPINE_CHROMIUM to a Chromium executable",
            pytrace=False,
        )
    return path


@dataclass
class Console:
    """A running console and the stack behind it."""

    api: Api  #: the gateway's client (``create_user()``, the master key's calls)
    url: str  #: the console's base URL, no trailing slash
    master: str  #: the stack's master key
    log: Path  #: the console process's log
    prefix: str  #: its Redis key prefix

    def at(self, path: str) -> str:
        return f"{self.url}{path}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_console(
    url: str, proc: asyncio.subprocess.Process, log: Path, within: float = 60
) -> None:
    """Until ``/healthz`` answers 200 (a port has no event to await); fails at once when the
    process exits."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        try:
            async with asyncio.timeout(within):
                while True:
                    assert proc.returncode is None, f"the console exited:\n{log_tail(log)}"
                    try:
                        if (await http.get("/healthz")).status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.2)
        except TimeoutError:
            pytest.fail(f"the console did not answer /healthz in {within} s:\n{log_tail(log)}")


# --- what the browser says about a page ---------------------------------------------------------
@dataclass
class Watch:
    """Errors the browser reported on one page, and the ones its test expects."""

    errors: list[str] = field(default_factory=list)
    expected: list[re.Pattern[str]] = field(default_factory=list)

    def unexpected(self) -> list[str]:
        return [e for e in self.errors if not any(p.search(e) for p in self.expected)]


_WATCHES: dict[int, Watch] = {}


def watch(page: Page) -> Watch:
    """Start collecting the page's console errors and uncaught errors (the ``page``
    fixture does, for every test)."""
    found = _WATCHES[id(page)] = Watch()
    page.on("console", lambda message: on_console(found, message))
    page.on("pageerror", lambda error: found.errors.append(f"page error: {error}"))
    return found


def unwatch(page: Page) -> None:
    _WATCHES.pop(id(page), None)


def expect_console_error(page: Page, pattern: str) -> None:
    """Tell the ``page`` fixture that errors matching ``pattern`` are this test's point (the
    browser logs "Failed to load resource: ... 404" for a 404 page, for instance)."""
    _WATCHES[id(page)].expected.append(re.compile(pattern))


def console_errors(page: Page) -> list[str]:
    """What the browser reported as errors on ``page`` so far."""
    return list(_WATCHES[id(page)].errors)


def on_console(found: Watch, message: ConsoleMessage) -> None:
    if message.type == "error":
        where = message.location
        at = f" ({where.get('url', '')}:{where.get('lineNumber', '')})" if where else ""
        found.errors.append(f"console.error: {message.text}{at}")


# --- helpers -----------------------------------------------------------------------------------
EXECUTIONS = re.compile(r"/executions(\?.*)?$")


async def sign_in(page: Page, console: Console, api_key: str) -> None:
    """Sign in through the form, as a person does, and wait for the executions page."""
    await page.goto(console.at("/login"))
    await page.fill("#api_key", api_key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(EXECUTIONS)


_AXE_RUN = """async () => {
  const result = await axe.run(document, {resultTypes: ['violations']});
  return result.violations.map(v => ({
    id: v.id, impact: v.impact, help: v.help, helpUrl: v.helpUrl,
    nodes: v.nodes.map(n => ({target: n.target.join(' '), summary: n.failureSummary || ''})),
  }));
}"""


async def axe_check(page: Page) -> list[dict[str, Any]]:
    """axe-core on the page as it is now: no serious or critical violation. The vendored
    source goes in through ``page.evaluate`` (DevTools protocol; the page's CSP does not
    apply to it, so the console's policy needs no exception for a test tool). Returns every
    violation (the minor and moderate ones are printed)."""
    if not await page.evaluate("() => typeof window.axe === 'object'"):
        await page.evaluate(AXE.read_text())
    violations: list[dict[str, Any]] = await page.evaluate(_AXE_RUN)
    readable = "\n".join(
        f"  [{v['impact']}] {v['id']}: {v['help']} ({v['helpUrl']})\n"
        + "\n".join(f"      at {n['target']}: {n['summary']}" for n in v["nodes"])
        for v in violations
    )
    if violations:
        print(f"axe on {page.url}:\n{readable}")
    failing = [v for v in violations if v["impact"] in AXE_FAILS]
    assert not failing, f"axe: serious or critical violations on {page.url}:\n{readable}"
    return violations
