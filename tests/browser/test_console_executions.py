"""Executions in the console, in Chromium against a real stack: run a flow from its form and
follow it live through zoe's two questions to eddie's decision; another tenant's execution
is a 404 page; the list follows the live feed; an agent's output is text, never markup;
bulk cancel; axe on the list, the run form and an execution.

"Without reloading" is checked with a mark set on ``window``: a navigation would drop it.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from playwright.async_api import Page, expect

from .helpers import Console, axe_check, expect_console_error, sign_in

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

EXECUTION_URL = re.compile(r"/executions/[0-9a-f-]{36}$")
MARK = "() => { window.__sameDocument = 'yes'; }"
STILL_MARKED = "() => window.__sameDocument"
#: the page's SSE connection is open (console.js marks it): changes from now on are seen
LIVE = "[sse-connect][data-live=open]"


async def user_key(console: Console, credits: int = 10) -> str:
    return str((await console.api.create_user(credits=credits))["api_key"])


async def execute(console: Console, key: str, flow: str, data: dict[str, Any]) -> str:
    r = await console.api.execute(key, flow, data)
    assert r.status_code == 200, r.text
    return str(r.json()["execution_id"])


async def until_waiting(console: Console, key: str, eid: str) -> None:
    """Until the execution waits for input (the gateway's stream says so)."""
    events = await console.api.sse_until(key, eid, "execution.node_waiting_input")
    assert events[-1]["event"] == "execution.node_waiting_input", events[-1]


async def test_run_credit_analysis_and_answer_zoe_twice_live(page: Page, console: Console) -> None:
    key = await user_key(console)
    await sign_in(page, console, key)
    await page.goto(console.at("/flows/credit_analysis/run"))
    await axe_check(page)
    # only the name: zoe asks for the rest while the flow runs
    await page.get_by_label("name", exact=True).fill("Ana")
    await page.get_by_role("button", name="Run").click()
    await page.wait_for_url(EXECUTION_URL)
    await page.evaluate(MARK)
    await expect(page.locator(LIVE)).to_have_count(1)

    zoe = page.locator("#dag-zoe")
    question = page.locator("#ask-zoe")
    await expect(zoe).to_have_attribute("data-status", "waiting_input")
    await expect(question).to_contain_text("income")
    await axe_check(page)
    # an event's data opened now stays open while the page follows the execution
    await page.locator("#ev-1 summary").click()
    await expect(page.locator("#ev-1")).to_have_attribute("open", "")

    # first answer: part of what she asked; she asks again for the rest, on the same page
    await question.get_by_label("income", exact=True).fill("6000")
    await question.get_by_role("button", name="Send answer").click()
    await expect(page.locator("#asked-key")).not_to_have_value("zoe:1")
    await expect(question.get_by_label("amount", exact=True)).to_be_visible()
    await expect(question.get_by_label("income", exact=True)).to_have_count(0)
    await expect(question).to_contain_text("term_months")

    await question.get_by_label("amount", exact=True).fill("12000")
    await question.get_by_label("term_months", exact=True).fill("24")
    await question.get_by_role("button", name="Send answer").click()

    # the nodes complete live: zoe, then eddie, then the output
    await expect(zoe).to_have_attribute("data-status", "completed")
    await expect(page.locator("#dag-eddie")).to_have_attribute("data-status", "completed")
    await expect(page.locator("#dag-result")).to_have_attribute("data-status", "completed")
    await expect(page.locator("#exec-status")).to_have_attribute("data-status", "completed")
    await expect(page.locator("#exec-output")).to_contain_text(
        re.compile(r'"decision": "(approve|review|reject)"')
    )
    await expect(page.locator("#node-eddie")).to_contain_text("score")
    await expect(page.locator(".question")).to_have_count(0)
    await expect(page.locator("svg.timeline rect.tl-bar")).to_have_count(3)
    await expect(page.locator("#ev-1")).to_have_attribute("open", "")
    # after the terminal event the console says "done" and the page stops listening
    await expect(page.locator("[sse-connect]")).to_have_attribute("data-live", "closed")
    assert await page.evaluate(STILL_MARKED) == "yes", "the page reloaded"


async def test_another_tenants_execution_is_the_404_page(page: Page, console: Console) -> None:
    owner, other = await user_key(console), await user_key(console)
    eid = await execute(console, owner, "echo_chain", {"text": "mine"})
    await sign_in(page, console, other)
    expect_console_error(page, r"status of 404")
    response = await page.goto(console.at(f"/executions/{eid}"))
    assert response is not None and response.status == 404
    await expect(page.get_by_role("heading", level=1)).to_have_text("Not found")
    await expect(page.locator("body")).not_to_contain_text("mine")


async def test_the_list_follows_the_live_feed(page: Page, console: Console) -> None:
    key = await user_key(console)
    eid = await execute(console, key, "credit_analysis", {"name": "Ana"})
    await until_waiting(console, key, eid)
    await sign_in(page, console, key)
    row = page.locator(f"#ex-{eid}")
    await expect(row).to_have_attribute("data-status", "waiting_input")
    await expect(page.locator(LIVE)).to_have_count(1)
    await axe_check(page)
    await page.evaluate(MARK)

    r = await console.api.http.post(
        f"/api/v1/executions/{eid}/input",
        json={"input": {"income": 6000, "amount": 12000, "term_months": 24}},
        headers=console.api.auth(key),
    )
    assert r.status_code == 200, r.text
    await expect(row).to_have_attribute("data-status", "completed")
    await expect(row).to_contain_text("completed")
    # a new execution appears at the top, still without a reload
    second = await execute(console, key, "echo_chain", {"text": "new"})
    await expect(page.locator(f"#ex-{second}")).to_have_attribute("data-status", "completed")
    assert await page.evaluate(STILL_MARKED) == "yes", "the page reloaded"


async def test_an_agent_output_with_markup_is_shown_as_text(page: Page, console: Console) -> None:
    key = await user_key(console)
    payload = "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>"
    await sign_in(page, console, key)
    await page.goto(console.at("/flows/echo_chain/run"))
    await page.get_by_label("Input (a JSON object)").fill(f'{{"text": "{payload}"}}')
    await page.get_by_role("button", name="Run").click()
    await page.wait_for_url(EXECUTION_URL)
    await expect(page.locator("#exec-status")).to_have_attribute("data-status", "completed")
    output = page.locator("#exec-output")
    await expect(output).to_contain_text(payload)
    await expect(page.locator("#node-a .node-output")).to_contain_text(payload)
    assert await page.evaluate("() => window.__pwned") is None
    assert await page.locator("main img, main script").count() == 0
    # and after a fresh load (not a live swap) too
    await page.reload()
    await expect(page.locator("#exec-output")).to_contain_text(payload)
    assert await page.evaluate("() => window.__pwned") is None


async def test_bulk_cancel_of_two_waiting_executions(page: Page, console: Console) -> None:
    key = await user_key(console)
    eids = [await execute(console, key, "credit_analysis", {"name": "Ana"}) for _ in range(2)]
    for eid in eids:
        await until_waiting(console, key, eid)
    await sign_in(page, console, key)
    for eid in eids:
        await expect(page.locator(f"#ex-{eid}")).to_have_attribute("data-status", "waiting_input")
        await page.locator(f"#sel-{eid}").check()
    await expect(page.locator(LIVE)).to_have_count(1)
    # a live refresh of the table (a new execution at the top) keeps what was selected
    newer = await execute(console, key, "echo_chain", {"text": "newer"})
    await expect(page.locator(f"#ex-{newer}")).to_have_attribute("data-status", "completed")
    for eid in eids:
        await expect(page.locator(f"#sel-{eid}")).to_be_checked()
    await page.get_by_role("button", name="Cancel selected").click()
    await page.wait_for_url(re.compile(r"/executions/cancel$"))
    outcomes = page.locator("#outcomes tbody tr")
    await expect(outcomes).to_have_count(2)
    for eid in eids:
        await expect(outcomes.filter(has_text=eid)).to_have_attribute("data-outcome", "cancelled")
        r = await console.api.http.get(f"/api/v1/executions/{eid}", headers=console.api.auth(key))
        assert r.json()["status"] == "cancelled"


async def test_the_admin_sees_every_tenants_executions_with_their_owner(
    page: Page, console: Console
) -> None:
    user = await console.api.create_user(credits=5)
    eid = await execute(console, user["api_key"], "echo_chain", {"text": "theirs"})
    await sign_in(page, console, console.master)
    row = page.locator(f"#ex-{eid}")
    await expect(row).to_contain_text(user["user_id"])
    await page.goto(console.at(f"/executions?user_id={user['user_id']}"))
    await expect(page.locator("#total")).to_have_text("1 execution matches the filters")
    await row.get_by_role("link").click()
    await expect(page.locator("#exec-input")).to_contain_text("theirs")
    await expect(page.locator("#exec-status")).to_have_attribute("data-status", "completed")
    # a filter the gateway refuses is an error on the list page, not an error page
    expect_console_error(page, r"status of 422")
    await page.goto(console.at("/executions"))
    await page.get_by_label("Id starts with").fill("%%")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.get_by_role("alert")).to_contain_text("id_prefix")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Executions")


async def test_running_without_credits_is_a_message_on_the_form(
    page: Page, console: Console
) -> None:
    key = await user_key(console, credits=0)
    await sign_in(page, console, key)
    expect_console_error(page, r"status of 402")
    await page.goto(console.at("/flows/echo_chain/run"))
    await page.get_by_label("Input (a JSON object)").fill('{"text": "hi"}')
    await page.get_by_role("button", name="Run").click()
    await expect(page.get_by_role("alert")).to_contain_text("Not enough credits")
    # what was typed is still there to try again
    await expect(page.get_by_label("Input (a JSON object)")).to_have_value('{"text": "hi"}')
