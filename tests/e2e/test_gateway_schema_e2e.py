"""schemathesis against the running gateway's ``/openapi.json`` (a small real stack).

Every documented operation is called with generated requests, valid and invalid, once with
a valid user key and once with an invalid one: never a 5xx, every answer's status, content
type and body match the schema. On top of the built-in checks:

* no cross-tenant reads: with Bob's key, every ``{execution_id}`` is Alice's execution, and
  nothing but an error comes back;
* no admin route (``/users/create``, ``/users/add-credits``, ``/users/{id}``) answers 2xx
  without the master key.

``POST /users/regenerate-key`` is left out of the valid-key run (it would revoke the key the
run uses); the e2e tests cover it. Bounded: a few examples per operation and mode.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = 3
ADMIN_PATHS = {"/api/v1/users/create", "/api/v1/users/add-credits", "/api/v1/users/{user_id}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
]


@dataclass(frozen=True)
class Tenants:
    base_url: str
    alice_key: str
    alice_execution: str
    alice_user_id: str
    bob_key: str


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(
        kafka,
        infra,
        topic_prefix,
        services=("registry", "orchestrator", "auth", "echo", "gateway"),
        agents=("echo",),
        flows=("echo_chain",),
    ) as client:
        yield client


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tenants(api: Api) -> Tenants:
    alice = await api.create_user(credits=5, rate_limit=100_000)
    bob = await api.create_user(credits=5, rate_limit=100_000)
    r = await api.execute(alice["api_key"], "echo_chain", {"secret": "alice's"})
    assert r.status_code == 200, r.text
    eid = r.json()["execution_id"]
    events = await api.sse(alice["api_key"], eid)
    assert events[-1]["event"] == "execution.completed"
    return Tenants(
        base_url=str(api.http.base_url),
        alice_key=alice["api_key"],
        alice_execution=eid,
        alice_user_id=alice["user_id"],
        bob_key=bob["api_key"],
    )


@pytest.fixture(scope="module")
def openapi(tenants: Tenants) -> Any:
    schema = schemathesis.openapi.from_url(f"{tenants.base_url}/openapi.json", timeout=30)
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=MAX_EXAMPLES
    )
    return schema


HYPOTHESIS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests on every run: a failure reproduces
    database=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
Call = Callable[[Any], Any]


def _fuzz(openapi: Any, call: Callable[[Any], None], **overrides: Any) -> list[str]:
    """Every operation, positive and negative: the failures, each with its operation.

    (schemathesis' own pytest loader does not run on pytest 9 yet, so the operations are
    driven here, one hypothesis run per operation and mode.)"""
    failures: list[str] = []
    for result in openapi.get_all_operations():
        operation = result.ok()
        params = {k: v for k, v in overrides.items() if "{" + k + "}" in operation.path}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode, path_parameters=params or None)

            @HYPOTHESIS
            @given(case=strategy)
            def run(case: Any) -> None:
                call(case)

            try:
                run()
            except Unsatisfiable:
                continue  # nothing to make invalid (no parameters, no body)
            except (Exception, BaseExceptionGroup) as exc:  # collected: one report for all
                failures.append(f"{operation.label} [{mode.value}]: {exc}"[:3000])
    return failures


def _never_admin_without_master(ctx: Any, response: Any, case: Any) -> None:
    if case.operation.path in ADMIN_PATHS and 200 <= response.status_code < 300:
        raise AssertionError(f"{case.operation.label} answered {response.status_code} to a user")


def _no_cross_tenant_read(tenants: Tenants) -> Call:
    def check(ctx: Any, response: Any, case: Any) -> None:
        if (case.path_parameters or {}).get("execution_id") != tenants.alice_execution:
            return
        if 200 <= response.status_code < 300 or "alice's" in response.text:
            raise AssertionError(f"Bob reached Alice's execution: {response.status_code}")

    return check


def test_schema_with_a_valid_and_an_invalid_key(openapi: Any, tenants: Tenants) -> None:
    """Each generated request twice: with Bob's key (every execution id in a path is
    Alice's) and with a key that does not exist."""
    sent = {"n": 0}
    public = {"/health", "/status", "/metrics"}

    def call(case: Any) -> None:
        sent["n"] += 1
        invalid = case.call_and_validate(
            base_url=tenants.base_url,
            headers={"Authorization": "Bearer sk_" + "0" * 43},
            checks=CHECKS,
            additional_checks=[_never_admin_without_master],
            timeout=30,
        )
        if case.operation.path not in public:  # 400/422: the body is refused before the key
            assert invalid.status_code in {400, 401, 422}, (case.operation.label, invalid.text)
        if case.operation.path == "/api/v1/users/regenerate-key":
            return  # with Bob's key it would revoke the key this run uses
        case.call_and_validate(
            base_url=tenants.base_url,
            headers={"Authorization": f"Bearer {tenants.bob_key}"},
            checks=CHECKS,
            additional_checks=[_never_admin_without_master, _no_cross_tenant_read(tenants)],
            timeout=30,
        )

    failures = _fuzz(openapi, call, execution_id=tenants.alice_execution)
    assert not failures, "\n\n".join(failures)
    assert sent["n"] >= 100  # every operation was exercised


@pytest.mark.asyncio(loop_scope="session")
async def test_the_fuzzing_left_alice_untouched(api: Api, tenants: Tenants) -> None:
    """After both runs: Alice's execution and credits are what they were."""
    h = api.auth(tenants.alice_key)
    got = await api.http.get(f"/api/v1/executions/{tenants.alice_execution}", headers=h)
    assert got.status_code == 200 and got.json()["status"] == "completed"
    me = (await api.http.get("/api/v1/users/me", headers=h)).json()
    assert me["credits"] == 4
