"""Signing in and out of the console in Chromium, against a real stack (DESIGN §13).

The session cookie is HttpOnly and SameSite=Strict and its id rotates at sign-in; every page
carries a CSP without unsafe-inline/unsafe-eval that forbids framing; sign-out revokes the
key the console minted for the session (seen through the keys API with the user's own key:
the console shows nothing of it) and the old cookie is refused afterwards; a state change
without the session's CSRF token is refused with 403. /login and /executions pass axe.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Response,
    expect,
)

from .helpers import (
    EXECUTIONS,
    Console,
    axe_check,
    console_errors,
    expect_console_error,
    sign_in,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

COOKIE = "spine_console"


def assert_csp(headers: dict[str, str], where: str) -> None:
    policy = headers.get("content-security-policy")
    assert policy, f"{where}: no Content-Security-Policy"
    directives = {part.split()[0]: part.split()[1:] for part in policy.split(";") if part.strip()}
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy, policy
    assert directives.get("frame-ancestors") == ["'none'"], policy
    assert directives.get("script-src") == ["'self'"], policy
    assert directives.get("style-src") == ["'self'"], policy


async def session_cookie(context: BrowserContext) -> dict[str, Any] | None:
    found = [c for c in await context.cookies() if c["name"] == COOKIE]
    assert len(found) <= 1, found
    return dict(found[0]) if found else None


async def live_keys(console: Console, key: str) -> dict[str, str]:
    """The account's live keys (id -> name), through the gateway with the user's own key."""
    r = await console.api.http.get("/api/v1/keys", headers=console.api.auth(key))
    assert r.status_code == 200, r.text
    return {k["key_id"]: k["name"] for k in r.json()["keys"]}


async def keys_until(console: Console, key: str, check: Any, within: float = 15) -> dict[str, str]:
    """The live keys once ``check(keys)`` holds (the keys projection follows Kafka: polled,
    there is no event to await through the public API)."""
    async with asyncio.timeout(within):
        while True:
            keys = await live_keys(console, key)
            if check(keys):
                return keys
            await asyncio.sleep(0.1)


async def refused(console: Console, sid: str) -> bool:
    """Whether the console treats cookie value ``sid`` as signed out (a replayed cookie)."""
    async with httpx.AsyncClient(base_url=console.url, cookies={COOKIE: sid}) as http:
        r = await http.get("/executions")
    return r.status_code == 303 and r.headers["location"] == "/login"


async def test_sign_in_rotates_the_cookie_and_mints_a_session_key(
    console: Console, context: BrowserContext, page: Page
) -> None:
    user = await console.api.create_user()
    key = user["api_key"]
    before_keys = await live_keys(console, key)

    login = await page.goto(console.at("/login"))
    assert login is not None and login.status == 200
    assert_csp(await login.all_headers(), "/login")
    anonymous = await session_cookie(context)
    assert anonymous is not None, "the sign-in form's CSRF token lives in a session"

    await page.fill("#api_key", key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(EXECUTIONS)
    await expect(page.get_by_role("heading", name="Executions")).to_be_visible()
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()

    cookie = await session_cookie(context)
    assert cookie is not None
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert cookie["value"] != anonymous["value"], "the session id rotates at sign-in"
    assert await refused(console, anonymous["value"]), "the pre-sign-in id is dead"
    assert not await refused(console, cookie["value"])
    assert await page.evaluate("() => document.cookie") == "", "scripts cannot read it"

    listed = await page.goto(console.at("/executions"))
    assert listed is not None and listed.status == 200
    assert_csp(await listed.all_headers(), "/executions")
    assert key not in await page.content(), "the console never shows a key"

    keys = await keys_until(console, key, lambda k: len(k) == len(before_keys) + 1)
    [minted] = set(keys) - set(before_keys)
    assert keys[minted] == "console session"


async def test_sign_out_revokes_the_session_key_and_the_cookie(
    console: Console, context: BrowserContext, page: Page
) -> None:
    user = await console.api.create_user()
    key = user["api_key"]
    before_keys = await live_keys(console, key)
    await sign_in(page, console, key)
    signed_in = await session_cookie(context)
    assert signed_in is not None
    keys = await keys_until(console, key, lambda k: len(k) == len(before_keys) + 1)
    [minted] = set(keys) - set(before_keys)

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url("**/login")
    await expect(page.get_by_role("button", name="Sign in")).to_be_visible()

    after = await keys_until(console, key, lambda k: minted not in k)
    assert set(after) == set(before_keys), "only the session's key is revoked"
    me = await console.api.http.get("/api/v1/users/me", headers=console.api.auth(key))
    assert me.status_code == 200, "the user's own key still works"

    await page.goto(console.at("/executions"))
    await page.wait_for_url("**/login")
    assert await refused(console, signed_in["value"]), "a replayed cookie is refused"


async def test_a_state_change_without_the_csrf_token_is_refused(
    console: Console, browser: Browser, page: Page
) -> None:
    user = await console.api.create_user()
    await sign_in(page, console, user["api_key"])
    csrf = await page.locator("form.who input[name=csrf]").input_value()
    assert len(csrf) >= 32

    # the browser context's own cookie jar: signed in, but no (or a wrong) token
    refusals = [
        await page.request.post(console.at("/logout"), form={}, max_redirects=0),
        await page.request.post(console.at("/logout"), form={"csrf": csrf[::-1]}, max_redirects=0),
        await page.request.post(
            console.at("/logout"), headers={"X-CSRF-Token": "x" * 43}, max_redirects=0
        ),
    ]
    assert [r.status for r in refusals] == [403, 403, 403]
    assert "security token" in await refusals[0].text()
    still = await page.request.get(console.at("/executions"), max_redirects=0)
    assert still.status == 200, "the refused posts did not sign the session out"

    # the sign-in form too: a POST without the form's token signs nobody in
    anonymous = await browser.new_context()
    try:
        await anonymous.request.get(console.at("/login"))
        r = await anonymous.request.post(
            console.at("/login"), form={"api_key": user["api_key"]}, max_redirects=0
        )
        assert r.status == 403
        after = await anonymous.request.get(console.at("/executions"), max_redirects=0)
        assert (after.status, after.headers.get("location")) == (303, "/login")
    finally:
        await anonymous.close()


async def test_a_bad_key_is_refused_on_the_form(console: Console, page: Page) -> None:
    expect_console_error(page, r"status of 401")  # the browser logs the page's 401
    await page.goto(console.at("/login"))
    await page.fill("#api_key", "sk_" + "Zq9" * 14 + "Z")  # well-formed, never issued

    def posted(r: Response) -> bool:
        return r.url.endswith("/login") and r.request.method == "POST"

    async with page.expect_response(posted) as answer:
        await page.get_by_role("button", name="Sign in").click()
    response = await answer.value
    assert response.status == 401
    await expect(page.get_by_role("alert")).to_contain_text("not valid")
    assert page.url.endswith("/login")


async def test_the_master_key_signs_in_as_the_admin(console: Console, page: Page) -> None:
    await sign_in(page, console, console.master)
    await expect(page.locator("form.who")).to_contain_text("(admin)")
    await expect(page.get_by_role("link", name="Admin")).to_be_visible()


async def test_login_and_executions_pass_axe(console: Console, page: Page) -> None:
    await page.goto(console.at("/login"))
    await axe_check(page)
    user = await console.api.create_user()
    await sign_in(page, console, user["api_key"])
    await axe_check(page)


async def test_the_harness_sees_what_the_policy_blocks(console: Console, page: Page) -> None:
    """The check every browser test relies on: an inline script or style the CSP blocks
    shows up as a console error the ``page`` fixture collects (here expected)."""
    expect_console_error(page, "Content Security Policy")
    await page.goto(console.at("/login"))

    def blocked(message: ConsoleMessage) -> bool:
        return "Content Security Policy" in message.text

    async with page.expect_console_message(blocked):
        await page.evaluate(
            """() => {
              const s = document.createElement('script');
              s.textContent = 'window.injected = true';
              document.body.appendChild(s);
            }"""
        )
    assert await page.evaluate("() => window.injected === undefined"), "the script ran"
    async with page.expect_console_message(blocked):
        await page.evaluate("() => document.body.setAttribute('style', 'color: red')")
    assert len(console_errors(page)) >= 2


async def test_the_vendored_htmx_runs_from_the_console_without_eval(
    console: Console, page: Page
) -> None:
    """No CDN: every request the pages make goes to the console itself, and htmx (from the
    package's static/vendor, VENDORED.md) runs with eval off."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    user = await console.api.create_user()
    await sign_in(page, console, user["api_key"])
    htmx = await page.evaluate(
        "() => ({version: htmx.version, allowEval: htmx.config.allowEval,"
        " sse: typeof htmx.createEventSource})"
    )
    assert htmx == {"version": "2.0.11", "allowEval": False, "sse": "function"}
    scripts = await page.eval_on_selector_all("script[src]", "els => els.map(e => e.src)")
    assert any("/vendor/htmx-2.0.11.min.js" in s for s in scripts), scripts
    assert any("/vendor/htmx-ext-sse-2.2.4.js" in s for s in scripts), scripts
    elsewhere = [u for u in requested if not u.startswith((console.url + "/", "data:"))]
    assert not elsewhere, f"requests that left the console: {elsewhere}"
