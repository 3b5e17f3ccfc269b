"""Flows, agents, usage and admin in Chromium, against a real stack (issue 20).

* An invalid flow uploaded through the form comes back with each problem at its node and
  field: a wrong type first (the validator's type pass), then, fixed, a ``depends_on`` on a
  missing node (its meaning pass) — the offending node marked in the submitted flow's
  drawing, the message next to the field's name; a YAML syntax error shows its line and
  column. A valid one is created and shown with its graph and YAML.
* The admin (the master key) adds credits to a user on /admin, and the user's balance on
  /usage (another browser context, signed in as the user) changes.
* /flows, /flows/{id}, /flows/new with an error shown, /agents, /usage and /admin pass axe.
"""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.async_api import Browser, Page, expect

from .helpers import Console, axe_check, expect_console_error, sign_in, unwatch, watch

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

WRONG_TYPE = """\
flow_id: {flow_id}
name: Broken
nodes:
  - id: fetch
    agent_id: echo
    config:
      timeout: soon
  - id: score
    agent_id: echo
    depends_on: [fetch]
"""
MISSING_DEPENDENCY = """\
flow_id: {flow_id}
name: Broken
nodes:
  - id: fetch
    agent_id: echo
    config:
      timeout: 5
  - id: score
    agent_id: echo
    depends_on: [fetch, enrich]
"""
#: Chromium asks for /favicon.ico, which the console does not serve (yet): a 404 it logs
FAVICON = r"status of 404 .*/favicon\.ico"
BAD_SYNTAX = "flow_id: {flow_id}\nnodes:\n  - id: fetch\n   agent_id: echo\n"


async def submit(page: Page, text: str) -> None:
    await page.fill("#flow-text", text)
    await page.get_by_role("button", name="Upload").click()


async def test_invalid_flow_errors_at_node_and_field(page: Page, console: Console) -> None:
    user = await console.api.create_user(credits=5)
    # the browser logs each refusal's status (422, 409, 403) as an error: the point here
    expect_console_error(page, r"status of (422|409|403) .*/(flows/|agents)")
    expect_console_error(page, FAVICON)
    await sign_in(page, console, user["api_key"])
    flow_id = f"console_flow_{uuid.uuid4().hex[:8]}"

    await page.goto(console.at("/flows"))
    await expect(page.get_by_role("link", name="credit_analysis", exact=True)).to_be_visible()
    await axe_check(page)
    await page.get_by_role("link", name="Upload a flow").click()
    await expect(page.get_by_role("heading", name="Upload a flow")).to_be_visible()

    # a wrong type: the node `fetch`, field config.timeout
    await submit(page, WRONG_TYPE.format(flow_id=flow_id))
    await expect(page.get_by_role("heading", name="The flow has problems")).to_be_visible()
    fetch = page.locator("section.node-problem", has=page.get_by_role("heading", name="Node fetch"))
    await expect(fetch.locator("dt")).to_have_text("config.timeout")
    await expect(fetch.locator("dd")).to_contain_text("must be a valid number")
    await expect(fetch.locator("dd")).to_contain_text("soon")
    await expect(page.locator("g#dag-fetch")).to_have_class(re.compile(r"\bst-bad\b"))
    await expect(page.locator("g#dag-score")).not_to_have_class(re.compile(r"\bst-bad\b"))
    # the text comes back as typed, to be fixed in place
    await expect(page.locator("#flow-text")).to_have_value(WRONG_TYPE.format(flow_id=flow_id))
    await axe_check(page)

    # fixed; now `score` depends on a node that does not exist
    await submit(page, MISSING_DEPENDENCY.format(flow_id=flow_id))
    score = page.locator("section.node-problem", has=page.get_by_role("heading", name="Node score"))
    await expect(score.locator("dt")).to_have_text("depends_on")
    await expect(score.locator("dd")).to_contain_text("unknown node 'enrich'")
    await expect(page.locator("g#dag-score")).to_have_class(re.compile(r"\bst-bad\b"))
    await expect(page.locator("g#dag-fetch")).not_to_have_class(re.compile(r"\bst-bad\b"))
    await expect(page.locator("li.problem")).to_have_count(1)
    # the marked node links to its problems
    await page.locator("a:has(g#dag-score)").click()
    await expect(page).to_have_url(re.compile(r"#node-score$"))

    # a YAML syntax error: its line and column, and the line itself
    await submit(page, BAD_SYNTAX.format(flow_id=flow_id))
    await expect(page.locator("li.problem .where")).to_have_text("line 4, column 4")
    await expect(page.locator("figure.excerpt .bad-line")).to_contain_text("agent_id: echo")

    # fixed for good: created, drawn, its YAML shown; and listed as the user's
    good = MISSING_DEPENDENCY.format(flow_id=flow_id).replace(", enrich]", "]")
    await submit(page, good)
    await expect(page).to_have_url(re.compile(rf"/flows/{flow_id}\?saved=created$"))
    await expect(page.locator("g#dag-fetch")).to_be_visible()
    await expect(page.locator("g#dag-score")).to_be_visible()
    await expect(page.locator("pre.flow-yaml")).to_contain_text("depends_on:")
    await expect(page.get_by_role("link", name="Edit", exact=True)).to_be_visible()
    await axe_check(page)

    # uploading the same id again is refused (edit it instead), not a silent replace
    await page.goto(console.at("/flows/new"))
    await submit(page, good)
    await expect(page.get_by_role("heading", name="Already exists")).to_be_visible()
    await expect(page.get_by_role("link", name="Edit the existing flow")).to_be_visible()

    # a system flow: no edit for a user, and the gateway's refusal when tried anyway
    await page.goto(console.at("/flows/credit_analysis"))
    await expect(page.locator("svg.dag")).to_be_visible()
    await expect(page.get_by_role("link", name="Edit", exact=True)).to_have_count(0)
    await page.goto(console.at("/flows/credit_analysis/edit"))
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()

    # delete the user's flow (a POST with the session's token)
    await page.goto(console.at(f"/flows/{flow_id}"))
    await page.get_by_text("Delete this flow").click()
    await page.get_by_role("button", name=f"Delete {flow_id}").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Deleted the flow {flow_id}")
    await expect(page.get_by_role("link", name=flow_id, exact=True)).to_have_count(0)

    # an HTTP agent of the user's own: listed as theirs, HTTP with its endpoint; an endpoint
    # the relay may not call (loopback) is refused with the registry's reason
    agent_id = f"console-agent-{uuid.uuid4().hex[:6]}"
    endpoint = f"http://{agent_id}.invalid:8080/"  # never resolves: accepted, never called
    await page.goto(console.at("/agents"))
    await page.get_by_text("Register an HTTP agent").click()
    await page.fill("#agent-id", agent_id)
    await page.fill("#agent-endpoint", "http://127.0.0.1:9/")
    await page.get_by_role("button", name="Register").click()
    await expect(page.get_by_role("alert")).to_contain_text("loopback")
    await page.fill("#agent-endpoint", endpoint)
    await page.fill("#agent-caps", "echo, testing")
    await page.get_by_role("button", name="Register").click()
    await expect(page.get_by_role("status")).to_contain_text(f"Registered the agent {agent_id}")
    row = page.locator(f"tr#agent-{agent_id}")
    await expect(row).to_contain_text(endpoint)
    await expect(row.locator("td").nth(2)).to_have_text("you")
    await expect(row.locator(".tag")).to_have_text(["echo", "testing"])


async def test_admin_adds_credits_and_the_balance_changes(
    page: Page, browser: Browser, console: Console
) -> None:
    user = await console.api.create_user(credits=7)
    expect_console_error(page, FAVICON)
    # the user, in a browser context of their own
    # the user on a phone-sized screen (the charts and tables scroll, keyboard included)
    theirs = await browser.new_context(base_url=console.url, viewport={"width": 390, "height": 844})
    user_page = await theirs.new_page()
    found = watch(user_page)
    try:
        expect_console_error(user_page, FAVICON)
        await sign_in(user_page, console, user["api_key"])
        await user_page.goto(console.at("/usage"))
        await expect(user_page.locator("#balance")).to_have_text("7")
        await expect(user_page.locator("svg.chart")).to_have_count(3)  # executions, credits, tokens
        await axe_check(user_page)
        expect_console_error(user_page, r"status of 404")  # the browser logs the 404 page
        await user_page.goto(console.at("/admin"))  # not theirs: the 404 page
        await expect(user_page.get_by_role("heading", name="Not found")).to_be_visible()

        # the admin
        await sign_in(page, console, console.master)
        await page.goto(console.at("/admin"))
        row = page.locator(f"tr#user-{user['user_id']}")
        await expect(row.locator("td.balance")).to_have_text("7")
        await axe_check(page)
        await row.get_by_label(f"Credits to add to {user['email']}").fill("35")
        await row.get_by_role("button", name="Add").click()
        await expect(page.locator("#admin-notice")).to_have_text(
            f"Added 35 credits to {user['email']}: the balance is now 42."
        )
        await expect(page.locator(f"tr#user-{user['user_id']} td.balance")).to_have_text("42")

        await user_page.goto(console.at("/usage"))
        await expect(user_page.locator("#balance")).to_have_text("42")
        await user_page.goto(console.at("/usage?range=7d"))
        await expect(user_page.get_by_role("heading", name="Last 7 days")).to_be_visible()
        assert found.unexpected() == [], found.unexpected()
    finally:
        unwatch(user_page)
        await theirs.close()

    # the admin's ways to system flows and agents
    await page.get_by_role("link", name="System flows").click()
    await expect(page.get_by_role("link", name="credit_analysis", exact=True)).to_be_visible()
    await page.goto(console.at("/agents"))
    echo = page.locator("tr#agent-echo")
    await expect(echo.locator(".badge")).to_have_text("active")
    await expect(echo).to_contain_text("bus")
    await axe_check(page)
