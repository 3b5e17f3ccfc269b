"""Who sees what of ``/status`` and ``/metrics``, over HTTP on a small real stack
(identity.ops_view; docs/api.md, Operations):

* no key: ``/status`` is liveness only (no instance id, agent, lag or tenant figure);
  ``/metrics`` is 401, JSON or text;
* a user's key: ``/status`` is liveness; the ``/metrics`` JSON is that user's own figures
  (user A never sees user B's), the Prometheus text 403;
* the master key: everything, as before;
* the scrape token (``SPINE_METRICS_SCRAPE_TOKEN``): the Prometheus text, and only that.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import MASTER, SCRAPE, Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVICES = ("registry", "orchestrator", "auth", "echo", "gateway")
LIVENESS = {"status", "version", "uptime"}
JSON = {"Accept": "application/json"}


@dataclass(frozen=True)
class User:
    user_id: str
    key: str
    executions: list[str]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka, infra, topic_prefix, services=SERVICES, agents=("echo",), flows=("echo_chain",)
    ) as client:
        yield client


async def _user_with_runs(api: Api, runs: int) -> User:
    made = await api.create_user(credits=10)
    executions = []
    for i in range(runs):
        r = await api.execute(made["api_key"], "echo_chain", {"run": i})
        assert r.status_code == 200, r.text
        executions.append(r.json()["execution_id"])
    for eid in executions:
        assert (await api.sse(made["api_key"], eid))[-1]["event"] == "execution.completed"
    return User(made["user_id"], made["api_key"], executions)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def users(api: Api) -> tuple[User, User]:
    """A ran echo_chain once, B twice (so their figures differ)."""
    a, b = await asyncio.gather(_user_with_runs(api, 1), _user_with_runs(api, 2))
    return a, b


async def _get(api: Api, path: str, key: str | None = None, **headers: str) -> httpx.Response:
    auth = api.auth(key) if key else {}
    return await api.http.get(path, headers={**auth, **headers})


async def test_status_without_a_key_is_liveness_only(api: Api, users: tuple[User, User]) -> None:
    full = await _get(api, "/status", MASTER)
    instances = {s["instance_id"] for s in full.json()["services"]}
    assert {"gateway-test", "orchestrator-test", "echo-test"} & instances  # there is a secret
    for path in ("/status", "/api/v1/status"):
        r = await _get(api, path)
        assert r.status_code == 200 and set(r.json()) == LIVENESS, r.text
        assert r.json()["status"] == "healthy" and r.json()["uptime"] > 0
        for secret in (*instances, *(u.user_id for u in users), "echo", "consumer", "lag"):
            assert secret not in r.text, (path, secret)


async def test_a_bad_key_is_refused_not_treated_as_none(api: Api) -> None:
    for path in ("/status", "/metrics", "/api/v1/status", "/api/v1/metrics"):
        r = await _get(api, path, "sk_" + "0" * 43)
        assert (r.status_code, r.json()["error_code"]) == (401, "INVALID_API_KEY"), path


async def test_metrics_without_a_key_is_401_json_and_text(api: Api) -> None:
    for path in ("/metrics", "/api/v1/metrics"):
        for headers in (JSON, {}):
            r = await _get(api, path, **headers)
            assert (r.status_code, r.json()["error_code"]) == (401, "MISSING_API_KEY"), path


async def test_a_user_sees_their_own_figures_and_none_of_another_users(
    api: Api, users: tuple[User, User]
) -> None:
    a, b = users
    for me, other, runs in ((a, b, 1), (b, a, 2)):
        async with asyncio.timeout(30):  # usage (credits) is recorded fire and forget
            while True:
                r = await _get(api, "/api/v1/metrics", me.key, **JSON)
                assert r.status_code == 200, r.text
                m = r.json()
                if m["credits_spent"] >= runs:
                    break
                await asyncio.sleep(0.2)
        assert (m["scope"], m["user_id"]) == ("user", me.user_id)
        assert m["executions_total"] == runs and m["executions_active"] == 0
        assert m["executions"] == {"total": runs, "by_status": {"completed": runs}}
        assert m["success_rate"] == 1.0 and m["failure_rate"] == 0.0
        assert m["average_execution_ms"] > 0 and m["credits_spent"] == runs  # cost 1 each
        assert m["summary"]["executions_completed"] == runs
        assert m["flows_total"] >= 1 and m["agents_total"] >= 1
        assert "summary_updated_at" not in m  # the metrics service's figures are everyone's
        for secret in (other.user_id, *other.executions):
            assert secret not in r.text
        root = await _get(api, "/metrics", me.key, **JSON)  # the root alias answers alike
        assert root.json()["executions"] == m["executions"]
        status = await _get(api, "/status", me.key)
        assert status.status_code == 200 and set(status.json()) == LIVENESS


async def test_the_master_key_sees_every_tenant(api: Api, users: tuple[User, User]) -> None:
    m = (await _get(api, "/metrics", MASTER, **JSON)).json()
    assert m["scope"] == "all" and "user_id" not in m
    assert m["executions"]["by_status"]["completed"] >= 3  # A's one and B's two
    assert "summary" in m and "summary_updated_at" in m
    status = (await _get(api, "/api/v1/status", MASTER)).json()
    assert {"components", "projections", "services", "consumer_groups"} <= set(status)
    assert "gateway-test" in {s["instance_id"] for s in status["services"]}


async def test_prometheus_text_needs_the_scrape_token_or_the_master_key(
    api: Api, users: tuple[User, User]
) -> None:
    a, _ = users
    answers: dict[str, Any] = {}
    for who, key in (("token", SCRAPE), ("master", MASTER), ("user", a.key), ("none", None)):
        answers[who] = await _get(api, "/metrics", key)
    for who in ("token", "master"):
        r = answers[who]
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        assert "spine_gateway_requests_total" in r.text
    assert answers["none"].status_code == 401
    user = answers["user"]
    assert (user.status_code, user.json()["error_code"]) == (403, "ADMIN_REQUIRED")
    # the token reads the text only: not the JSON summary, not the operator's /status
    r = await _get(api, "/metrics", SCRAPE, **JSON)
    assert (r.status_code, r.json()["error_code"]) == (403, "ADMIN_REQUIRED")
    assert set((await _get(api, "/status", SCRAPE)).json()) == LIVENESS
