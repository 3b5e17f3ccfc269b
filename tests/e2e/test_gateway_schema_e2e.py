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

Then a stateful run (``schema.as_state_machine()``: the links schemathesis infers from the
responses, e.g. ``POST /flows/execute`` → ``GET /executions/{execution_id}/…``) with Carol's
key, each scenario seeded with one execution of Carol's and one of Dave's: every chain that
reaches Dave's execution with Carol's key must end in an error (404), never a 2xx. And
explicit loops over every route, under ``/api/v1`` and at the root, with no key, a made-up
key, a user key and the master key: 401 without a valid key, 403 for a user on the admin
routes, 404 for another tenant's execution, only liveness on ``/status`` and no ``/metrics``
text but for the master key, never a 5xx.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import initialize
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.generation.stateful.state_machine import StepOutput
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from spine_servicekit.kafka import KafkaConfig

from .test_gateway_e2e import MASTER, Api, gateway_stack

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
    carol_key: str  # the stateful run's user
    dave_key: str  # whose executions Carol must never reach
    dave_user_id: str


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
    carol = await api.create_user(credits=1000, rate_limit=100_000)
    dave = await api.create_user(credits=1000, rate_limit=100_000)
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
        carol_key=carol["api_key"],
        dave_key=dave["api_key"],
        dave_user_id=dave["user_id"],
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
    public = {"/health"}

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


STATEFUL_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: the stack's own agents: a stateful chain (GET /agents → DELETE /agents/{id}) leaves them be
PROTECTED_AGENTS = {"echo"}


def test_stateful_chains_never_reach_another_tenants_execution(
    openapi: Any, tenants: Tenants
) -> None:
    machine = openapi.as_state_machine()
    executed = "POST /api/v1/flows/execute -> 200"
    assert executed in machine.bundles, sorted(machine.bundles)  # links were inferred
    execute = openapi["/api/v1/flows/execute"]["POST"]
    daves: set[str] = set()
    seen: Counter[str] = Counter()
    crossed: Counter[str] = Counter()

    def run_execution(recorder: Any, key: str, secret: str) -> StepOutput:
        case = execute.Case(body={"flow_id": "echo_chain", "input_data": {"secret": secret}})
        response = case.call(
            base_url=tenants.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        assert response.status_code == 200, response.text
        recorder.record_case(case=case)
        recorder.record_response(case_id=case.id, response=response)
        return StepOutput(response, case)

    def no_cross_tenant(ctx: Any, response: Any, case: Any) -> None:
        eid = (case.path_parameters or {}).get("execution_id")
        if eid not in daves:
            return
        crossed[case.operation.label] += 1
        if 200 <= response.status_code < 300 or "dave's" in response.text:
            raise AssertionError(
                f"{case.operation.label}: Carol reached Dave's execution: {response.status_code}"
            )

    class Workflow(machine):  # type: ignore[misc, valid-type]
        @initialize(target=machine.bundles[executed])
        def carols_execution(self) -> StepOutput:
            return run_execution(self.recorder, tenants.carol_key, "carol's")

        @initialize(target=machine.bundles[executed])
        def daves_execution(self) -> StepOutput:
            output = run_execution(self.recorder, tenants.dave_key, "dave's")
            daves.add(output.response.json()["execution_id"])
            return output

        def before_call(self, case: Any) -> None:
            params = case.path_parameters or {}
            if case.method.upper() == "DELETE" and params.get("agent_id") in PROTECTED_AGENTS:
                params["agent_id"] = "no-such-agent"

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {
                "base_url": tenants.base_url,
                "headers": {"Authorization": f"Bearer {tenants.carol_key}"},
                "timeout": 30,
            }

        def validate_response(
            self,
            response: Any,
            case: Any,
            additional_checks: Any = None,
            **kwargs: Any,
        ) -> None:
            seen[case.operation.label] += 1
            case.validate_response(
                response,
                checks=STATEFUL_CHECKS,
                additional_checks=[_never_admin_without_master, no_cross_tenant],
                transport_kwargs=kwargs or None,
            )

    Workflow.run(
        settings=settings(
            max_examples=8,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
    )
    assert len(daves) >= 2 and sum(seen.values()) >= 10, seen
    assert sum(crossed.values()) >= 1, seen  # a chain did reach Dave's execution (404)


# --- every route with each kind of key -----------------------------------------------------

PUBLIC = {"/health"}
ADMIN = {("POST", "/users/create"), ("POST", "/users/add-credits"), ("GET", "/users/{user_id}")}
#: the operations views (identity.ops_view): (key kind, route) -> the status; /metrics is
#: asked for its Prometheus text here (no Accept header)
OPS: dict[tuple[str, str], int] = {
    ("none", "/status"): 200,
    ("made-up", "/status"): 401,
    ("user", "/status"): 200,
    ("master", "/status"): 200,
    ("none", "/metrics"): 401,
    ("made-up", "/metrics"): 401,
    ("user", "/metrics"): 403,
    ("master", "/metrics"): 200,
}
LIVENESS = {"status", "version", "uptime"}


def _ops_problem(kind: str, route: str, r: httpx.Response, where: str) -> str | None:
    """What is wrong with an operations answer: its status, or more than liveness shown to
    anyone but the master key."""
    got = 200 if route == "/status" and r.status_code == 503 else r.status_code  # degraded
    if got != OPS[(kind, route)]:
        return f"ops view not {OPS[(kind, route)]} with {where}"
    if route == "/status" and got == 200:
        shown = set(r.json())
        if kind == "master" and "services" not in shown:
            return f"the operator's /status without its services with {where}"
        if kind != "master" and shown != LIVENESS:
            return f"/status shows {sorted(shown - LIVENESS)} with {where}"
    return None


PROBE_FLOW = "probe_flow_e2e"


def _routes(schema: dict[str, Any]) -> list[tuple[str, str]]:
    """Every documented (method, path), and the root alias of each ``/api/v1`` path."""
    routes: list[tuple[str, str]] = []
    for path, item in schema["paths"].items():
        for method in item:
            routes.append((method.upper(), path))
            if path.startswith("/api/v1/"):
                routes.append((method.upper(), path.removeprefix("/api/v1")))
    return routes


def _request(method: str, path: str, t: Tenants, user_id: str) -> dict[str, Any]:
    """A valid request for the route (so only the key decides the answer)."""
    route = path.removeprefix("/api/v1")
    flow_id = {"GET": "echo_chain", "PUT": PROBE_FLOW}.get(method, "no_such_flow")
    agent_id = "echo" if method == "GET" else "no-such-agent"
    url = (
        path.replace("{execution_id}", t.alice_execution)
        .replace("{user_id}", user_id)
        .replace("{flow_id}", flow_id)
        .replace("{agent_id}", agent_id)
    )
    flow = {"flow_id": PROBE_FLOW, "nodes": [{"id": "a", "agent_id": "echo"}]}
    bodies: dict[tuple[str, str], Any] = {
        ("POST", "/flows/execute"): {"flow_id": "echo_chain", "input_data": {"n": 1}},
        ("POST", "/executions/{execution_id}/cancel"): {"reason": "probe"},
        ("POST", "/executions/{execution_id}/input"): {"input": {"a": 1}},
        ("POST", "/flows"): flow,
        ("PUT", "/flows/{flow_id}"): flow,
        ("POST", "/agents"): {"agent_id": "probe-agent", "name": "Probe", "capabilities": ["x"]},
        ("POST", "/users/create"): {
            "email": f"p{os.urandom(4).hex()}@example.com",
            "name": "P",
            "credits": 1,
            "rate_limit": 100,
        },
        ("POST", "/users/add-credits"): {"user_id": user_id, "credits": 1},
    }
    kwargs: dict[str, Any] = {"method": method, "url": url}
    if (method, route) in bodies:
        kwargs["json"] = bodies[(method, route)]
    return kwargs


def test_every_route_with_no_key_a_made_up_key_a_user_key_and_the_master_key(
    tenants: Tenants,
) -> None:
    with httpx.Client(base_url=tenants.base_url, timeout=30) as http:
        schema = http.get("/openapi.json").json()
        routes = _routes(schema)
        assert len(routes) >= 50, routes
        routes += [("GET", "/api/v1/status"), ("GET", "/api/v1/metrics")]  # not in the schema
        erin = http.post(
            "/api/v1/users/create",
            json={
                "email": f"e{os.urandom(4).hex()}@example.com",
                "name": "E",
                "credits": 100,
                "rate_limit": 100_000,
            },
            headers={"Authorization": f"Bearer {MASTER}"},
        )
        assert erin.status_code == 201, erin.text
        keys = {
            "none": None,
            "made-up": "sk_" + "Zq9" * 14 + "Z",
            "user": erin.json()["api_key"],
            "master": MASTER,
        }
        problems: list[str] = []
        # the key rotation last: it revokes the user key the loop uses
        routes.sort(key=lambda r: r[1].endswith("/regenerate-key"))
        for kind, key in keys.items():
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for method, path in routes:
                r = http.request(
                    **_request(method, path, tenants, tenants.dave_user_id), headers=headers
                )
                if kind == "user" and path.endswith("/regenerate-key") and r.status_code == 200:
                    headers = {"Authorization": f"Bearer {r.json()['api_key']}"}
                route = path.removeprefix("/api/v1")
                admin = (method, route) in ADMIN
                code = (
                    r.json().get("error_code")
                    if r.headers.get("content-type", "").startswith("application/json")
                    and r.status_code >= 400
                    else None
                )
                where = f"{kind} key: {method} {path} -> {r.status_code} {r.text[:200]}"
                if r.status_code >= 500 and not (path == "/status" and r.status_code == 503):
                    problems.append(f"5xx with {where}")
                elif path in PUBLIC:
                    continue
                elif (kind, route) in OPS:
                    if problem := _ops_problem(kind, route, r, where):
                        problems.append(problem)
                elif kind in ("none", "made-up"):
                    if r.status_code != 401 or code not in {"MISSING_API_KEY", "INVALID_API_KEY"}:
                        problems.append(f"not 401 with {where}")
                elif kind == "user" and admin:
                    if r.status_code != 403 or code != "MASTER_KEY_REQUIRED":
                        problems.append(f"admin route not 403 with {where}")
                elif kind == "user" and "{execution_id}" in path:
                    if r.status_code != 404 or "alice's" in r.text:
                        problems.append(f"another tenant's execution not 404 with {where}")
                elif kind == "user" and r.status_code in (401, 403):
                    problems.append(f"user refused with {where}")
                elif kind == "master" and admin and not 200 <= r.status_code < 300:
                    problems.append(f"admin route refused the master key: {where}")
                elif (
                    kind == "master"
                    and not admin
                    and (r.status_code != 403 or code != "USER_KEY_REQUIRED")
                ):
                    problems.append(f"user route not 403 for the master key: {where}")
        assert not problems, "\n".join(problems)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_fuzzing_left_alice_untouched(api: Api, tenants: Tenants) -> None:
    """After both runs: Alice's execution and credits are what they were."""
    h = api.auth(tenants.alice_key)
    got = await api.http.get(f"/api/v1/executions/{tenants.alice_execution}", headers=h)
    assert got.status_code == 200 and got.json()["status"] == "completed"
    me = (await api.http.get("/api/v1/users/me", headers=h)).json()
    assert me["credits"] == 4
