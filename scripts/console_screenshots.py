"""Screenshots of the console's main pages for the README (`make screenshots`, after `make up`).

Creates a user with the master key, runs `credit_analysis` twice over the API (one finished,
one waiting for zoe's answer) and `echo_chain` once, signs in to the console as that user in
headless Chromium (Debian's, as the browser tests use it) and saves each page to `docs/img/`;
then signs in with the master key for the admin page. Configuration as `make demo`: `PORT`
and `API_KEY` from the environment or `.env`; `SPINE_CONSOLE_URL` (default
http://127.0.0.1:8080).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Page, async_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo import DemoError, bearer, check, settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "img"
APPLICANT = {"name": "Ana Díaz", "income": 3200, "debts": 250, "amount": 15000, "term_months": 36}


async def _execute(http: httpx.AsyncClient, key: str, flow_id: str, data: dict[str, Any]) -> str:
    body = {"flow_id": flow_id, "input_data": data}
    answer = check(
        await http.post("/api/v1/flows/execute", json=body, headers=bearer(key)), 200, 201, 202
    )
    return str(answer["execution_id"])


async def _until(http: httpx.AsyncClient, key: str, execution_id: str, *statuses: str) -> None:
    async with asyncio.timeout(60):
        while True:
            got = check(await http.get(f"/api/v1/executions/{execution_id}", headers=bearer(key)))
            if got["status"] in statuses:
                return
            await asyncio.sleep(0.3)  # a status over plain HTTP has no event to await here


async def _sign_in(page: Page, console: str, key: str) -> None:
    await page.goto(f"{console}/login")
    await page.fill("#api_key", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{console}/executions*")


async def _shot(page: Page, console: str, path: str, name: str, full: bool = True) -> None:
    await page.goto(f"{console}{path}")
    await page.wait_for_load_state("networkidle")
    await page.screenshot(path=str(OUT / f"{name}.png"), full_page=full)
    print(f"==> docs/img/{name}.png  ({path})", flush=True)


async def main() -> None:
    base, master = settings()
    console = os.environ.get("SPINE_CONSOLE_URL", "http://127.0.0.1:8080").rstrip("/")
    chromium = os.environ.get("SPINE_CHROMIUM") or shutil.which("chromium")
    if not chromium:
        raise DemoError("no chromium on PATH: `make browser` installs Debian's")
    OUT.mkdir(parents=True, exist_ok=True)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        user = check(
            await http.post(
                "/api/v1/users/create",
                json={
                    "email": f"ada{os.urandom(3).hex()}@example.com",
                    "name": "Ada",
                    "credits": 500,
                },
                headers=bearer(master),
            ),
            201,
        )
        key = str(user["api_key"])
        done = await _execute(http, key, "credit_analysis", APPLICANT)
        await _execute(http, key, "echo_chain", {"text": "hello <b>world</b>"})
        waiting = await _execute(http, key, "credit_analysis", {"name": "Bo", "income": 2100})
        await _until(http, key, done, "completed", "failed")
        await _until(http, key, waiting, "waiting_input")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            desktop = await browser.new_context(viewport={"width": 1280, "height": 800})
            page = await desktop.new_page()
            await _sign_in(page, console, key)
            await _shot(page, console, "/executions", "console-executions")
            await _shot(page, console, f"/executions/{done}", "console-execution")
            await _shot(page, console, f"/executions/{waiting}", "console-execution-input")
            await _shot(page, console, "/flows/credit_analysis", "console-flow")
            await _shot(page, console, "/agents", "console-agents")
            await _shot(page, console, "/usage", "console-usage")
            phone = await browser.new_context(viewport={"width": 390, "height": 844})
            small = await phone.new_page()
            await _sign_in(small, console, key)
            await _shot(small, console, f"/executions/{done}", "console-execution-phone")
            admin = await (
                await browser.new_context(viewport={"width": 1280, "height": 800})
            ).new_page()
            await _sign_in(admin, console, master)
            await _shot(admin, console, "/admin", "console-admin", full=False)
        finally:
            await browser.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except DemoError as exc:
        print(f"!! {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
