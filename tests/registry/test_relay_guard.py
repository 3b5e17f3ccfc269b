"""The relay's SSRF guard and the HTTP agent contract fixes (docs/agents.md).

The address policy is a table; the guard is tested at connect time against a real
server on 127.0.0.1 (refused by default, served once allowed), through names and host
forms that resolve to it; redirects are never followed.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from agent_http import http_reply, serving
from pydantic import ValidationError
from spine_agent import NeedsInput, Task, result_for
from spine_agent.testing import task_message
from spine_registry.addresses import (
    AddressPolicy,
    endpoint_refusal,
    parse_networks,
    resolve,
)
from spine_registry.relay.delivery import (
    DeliveryFailed,
    RetryPolicy,
    build_request,
    deliver,
    output_from_response,
)
from spine_registry.relay.guard import guarded_client
from spine_registry.relay.probe import probe
from spine_registry.relay.settings import RelaySettings

POLICY = RetryPolicy(max_retries=2, backoff_s=0.01, max_backoff_s=0.01)
LOOPBACK = AddressPolicy.from_setting("127.0.0.1/32")


def make_task(**kw: Any) -> Task:
    return Task.from_message(
        task_message("echo-http", execution_id="exec-1", node_id="n1", attempt=1, **kw)
    )


# --- the address policy ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "refused_as"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "cloud metadata"),
        ("169.254.170.2", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("fe80::1%1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("100.64.0.1", "CGNAT"),
        ("100.127.255.254", "CGNAT"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "broadcast"),
        ("240.0.0.1", "reserved"),
        ("0.1.2.3", "unspecified"),
        ("192.0.2.1", "private"),  # documentation: not RFC 1918, but never public
        ("198.18.0.1", "private"),  # benchmarking
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata"),
        ("::ffff:10.0.0.1", "IPv4-mapped private"),
        ("::ffff:100.64.0.1", "IPv4-mapped CGNAT"),
        ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
        ("::ffff:224.0.0.1", "IPv4-mapped multicast"),
        ("2002:7f00:1::", "IPv4-embedding loopback"),  # 6to4 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", "IPv4-embedding cloud metadata"),  # NAT64 of 169.254.169.254
        ("not-an-ip", "not an IP address"),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_address_policy_by_default(address: str, refused_as: str | None) -> None:
    assert AddressPolicy().refusal(address) == refused_as


@pytest.mark.parametrize(
    ("allowed", "address", "refused_as"),
    [
        ("127.0.0.1/32", "127.0.0.1", None),
        ("127.0.0.1/32", "::ffff:127.0.0.1", None),  # the same address, mapped
        ("127.0.0.1/32", "127.0.0.2", "loopback"),
        ("127.0.0.1", "127.0.0.1", None),  # a bare address is its /32
        ("10.0.0.0/8, 192.168.0.0/16", "10.9.8.7", None),
        ("10.0.0.0/8, 192.168.0.0/16", "192.168.3.4", None),
        ("10.0.0.0/8, 192.168.0.0/16", "172.16.0.1", "private"),
        ("10.0.0.0/8", "169.254.169.254", "cloud metadata"),
        ("fd00::/8", "fd00::5", None),
        ("fd00::/8", "::1", "loopback"),
        ("", "127.0.0.1", "loopback"),
    ],
)
def test_allowed_networks_override_the_refusal(
    allowed: str, address: str, refused_as: str | None
) -> None:
    assert AddressPolicy.from_setting(allowed).refusal(address) == refused_as


def test_a_bad_allowed_network_is_a_settings_error() -> None:
    with pytest.raises(ValueError, match="SPINE_RELAY_ALLOWED_NETWORKS: 'nope' is not a CIDR"):
        parse_networks("127.0.0.1/32,nope")
    with pytest.raises(ValidationError):
        RelaySettings.model_validate({"SPINE_RELAY_ALLOWED_NETWORKS": "10.0.0.0/33"})
    settings = RelaySettings.model_validate({"SPINE_RELAY_ALLOWED_NETWORKS": "127.0.0.1/32"})
    assert settings.address_policy == LOOPBACK


async def test_decimal_and_mapped_host_forms_resolve_to_what_they_mean() -> None:
    assert await resolve("2130706433", 80) == ["127.0.0.1"]
    assert await resolve("::ffff:127.0.0.1", 80) == ["::ffff:127.0.0.1"]


@pytest.mark.parametrize(
    ("endpoint", "refused"),
    [
        ("http://169.254.169.254/latest", "169.254.169.254: cloud metadata address"),
        ("http://127.0.0.1:8101", "127.0.0.1: loopback address"),
        ("http://2130706433:8101", "2130706433 (127.0.0.1): loopback address"),
        ("http://[::ffff:127.0.0.1]:8101", "::ffff:127.0.0.1: IPv4-mapped loopback address"),
        ("http://10.0.0.8/agent", "10.0.0.8: private address"),
        ("http://localhost:8101", "localhost (127.0.0.1): loopback address"),
        ("http://name-that-does-not-resolve.invalid:80", None),
        ("http://93.184.216.34", None),
    ],
)
async def test_registration_time_check_of_an_endpoint(endpoint: str, refused: str | None) -> None:
    why = await endpoint_refusal(AddressPolicy(), endpoint)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why and "SPINE_RELAY_ALLOWED_NETWORKS" in why


# --- the guard at connect time ---------------------------------------------------------
OK = http_reply(
    "200 OK",
    orjson.dumps({"status": "success", "output": {"message": "hi"}, "execution_id": "exec-1"}),
)


async def test_a_loopback_agent_is_refused_at_connect_time_without_a_connection() -> None:
    async with serving(OK) as server, guarded_client(AddressPolicy()) as client:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(DeliveryFailed) as info:
            await deliver(client, url, make_task(), POLICY)
    assert str(info.value) == (
        "refused to connect to 127.0.0.1: loopback address, not allowed by "
        f"SPINE_RELAY_ALLOWED_NETWORKS: POST http://127.0.0.1:{server.port}/execute"
    )
    assert server.connections == 0  # refused before connecting, and never retried


async def test_an_allowed_network_is_served() -> None:
    async with serving(OK) as server, guarded_client(LOOPBACK) as client:
        output = await deliver(client, f"http://127.0.0.1:{server.port}", make_task(), POLICY)
    assert output == {"message": "hi", "data": {}, "metadata": {}}
    assert server.connections == 1


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        ("localhost", "refused to connect to localhost ("),
        ("2130706433", "refused to connect to 2130706433 (127.0.0.1): loopback address"),
        ("[::ffff:127.0.0.1]", "refused to connect to ::ffff:127.0.0.1: IPv4-mapped loopback"),
        ("0x7f000001", "refused to connect to 0x7f000001 (127.0.0.1): loopback address"),
    ],
)
async def test_names_and_host_forms_of_loopback_are_refused(host: str, shown: str) -> None:
    async with serving(OK) as server, guarded_client(AddressPolicy()) as client:
        with pytest.raises(DeliveryFailed) as info:
            await deliver(client, f"http://{host}:{server.port}", make_task(), POLICY)
        health = await probe(client, f"http://{host}:{server.port}", 2.0)
    assert str(info.value).startswith(shown), str(info.value)
    assert not health.ready and health.reason.startswith(shown), health.reason
    assert server.connections == 0


@pytest.mark.parametrize(
    ("endpoint", "shown"),
    [
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254: cloud metadata"),
        ("http://[::ffff:169.254.169.254]", "::ffff:169.254.169.254: IPv4-mapped cloud metadata"),
        ("http://2852039166/latest", "2852039166 (169.254.169.254): cloud metadata"),
    ],
)
async def test_cloud_metadata_is_refused_at_call_time_even_with_loopback_allowed(
    endpoint: str, shown: str
) -> None:
    # were the guard to let it through, the call would go out and time out (timeout 2 s)
    task = make_task(config={"timeout": 2})
    async with guarded_client(LOOPBACK) as client:
        with pytest.raises(DeliveryFailed) as info:
            await deliver(client, endpoint, task, POLICY)
        health = await probe(client, endpoint, 2.0)
    assert str(info.value) == (
        f"refused to connect to {shown} address, not allowed by "
        f"SPINE_RELAY_ALLOWED_NETWORKS: POST {endpoint}/execute"
    )
    assert not health.ready
    assert health.reason.startswith(f"refused to connect to {shown} address"), health.reason


async def test_the_health_probe_is_guarded_too() -> None:
    health = http_reply("200 OK", b'{"ready": true}')
    async with serving(health) as server:
        url = f"http://127.0.0.1:{server.port}"
        async with guarded_client(AddressPolicy()) as client:
            refused = await probe(client, url, 2.0)
        async with guarded_client(LOOPBACK) as client:
            allowed = await probe(client, url, 2.0)
    assert not refused.ready
    assert refused.reason.startswith("refused to connect to 127.0.0.1: loopback address")
    assert allowed.ready
    assert server.connections == 1


async def test_a_redirect_to_a_refused_address_is_not_followed() -> None:
    moved = http_reply("302 Found", headers="location: http://169.254.169.254/latest/\r\n")
    async with serving(moved) as server, guarded_client(LOOPBACK) as client:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(DeliveryFailed) as info:
            await deliver(client, url, make_task(), POLICY)
        health = await probe(client, url, 2.0)
    assert str(info.value) == (
        f"HTTP 302 from {url}/execute: redirects are not followed "
        "(to http://169.254.169.254/latest/)"
    )
    assert not health.ready and "redirects are not followed" in health.reason
    assert server.connections == 2  # one call, one probe: no retry, no second hop


async def test_proxy_environment_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, "http://169.254.169.254:3128")
    async with serving(OK) as server, guarded_client(LOOPBACK) as client:
        await deliver(client, f"http://127.0.0.1:{server.port}", make_task(), POLICY)
    assert server.connections == 1


# --- the HTTP agent contract -----------------------------------------------------------
def test_an_error_with_null_output_keeps_its_message() -> None:
    task = make_task()
    body = {
        "status": "error",
        "output": None,
        "error_message": "bureau down",
        "execution_id": "exec-1",
    }
    with pytest.raises(DeliveryFailed) as info:
        output_from_response(task, orjson.dumps(body))
    result = result_for(task.message, "echo-http", info.value, duration_ms=1.0)
    assert (result.data.status, result.data.error_message) == ("error", "bureau down")


def test_needs_input_is_the_same_result_as_an_sdk_agents() -> None:
    task = make_task()
    body = {
        "status": "needs_input",
        "output": None,
        "question": "What is your income?",
        "missing_fields": ["income"],
        "execution_id": "exec-1",
    }
    outcome = output_from_response(task, orjson.dumps(body))
    assert isinstance(outcome, NeedsInput)
    relayed = result_for(task.message, "echo-http", outcome, duration_ms=1.0)
    sdk = result_for(
        task.message,
        "echo-http",
        NeedsInput("What is your income?", ["income"]),
        duration_ms=1.0,
    )
    assert relayed.data == sdk.data
    assert relayed.data.status == "needs_input"


def test_needs_input_may_put_its_question_in_output_message() -> None:
    body = {
        "status": "needs_input",
        "output": {"message": "Which term?"},
        "execution_id": "exec-1",
    }
    outcome = output_from_response(make_task(), orjson.dumps(body))
    assert isinstance(outcome, NeedsInput)
    assert (outcome.question, outcome.missing_fields) == ("Which term?", ())


def test_needs_input_without_a_question_is_an_invalid_response() -> None:
    body = {"status": "needs_input", "execution_id": "exec-1"}
    with pytest.raises(DeliveryFailed, match="needs_input without a question"):
        output_from_response(make_task(), orjson.dumps(body))


def test_the_callers_context_survives_and_the_relays_keys_fill_the_rest() -> None:
    caller = {"session": "s-1", "attempt": "caller's own", "locale": "es"}
    task = make_task(input={"user_message": "hi", "context": caller})
    context = build_request(task)["input"]["context"]
    assert context == {
        "session": "s-1",
        "locale": "es",
        "attempt": "caller's own",  # a clash: the caller's value wins
        "input": {"user_message": "hi", "context": caller},
        "dependencies": {},
        "idempotency_key": "exec-1:n1:1",
        "node_type": "processor",
    }


def test_a_context_that_is_not_an_object_is_not_merged() -> None:
    task = make_task(input={"context": "plain text"})
    context = build_request(task)["input"]["context"]
    assert context["input"] == {"context": "plain text"}
    assert context["attempt"] == 1
