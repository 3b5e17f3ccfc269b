"""schemathesis against the running gateway's ``/openapi.json`` (a small real stack).

Every documented operation is called with generated requests, valid and invalid, once with
a valid user key and once with an invalid one: never a 5xx, every answer's status, content
type and body match the schema. On top of the built-in checks:

* no cross-tenant reads: with Bob's key, every ``{execution_id}`` is Alice's execution, and
  nothing but an error comes back;
* no admin route (``/users``, ``/users/create``, ``/users/add-credits``, ``/users/{id}``)
  answers 2xx without the master key.

``POST /users/regenerate-key`` is left out of the valid-key run (it would revoke the key the
run uses), and the live feed ``GET /executions/stream`` out of the generated runs (it is open
until the client goes; the loops over every route open and close it, and
test_gateway_feed_e2e.py covers it); the e2e tests cover them. Bounded: a few examples per
operation and mode.

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
ADMIN_PATHS = {
    "/api/v1/users",
    "/api/v1/users/create",
    "/api/v1/users/add-credits",
    "/api/v1/users/{user_id}",
    "/api/v1/users/{user_id}/limits",
}
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
    carol_reader_key: str  # a key of Carol's with only executions:read
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
    reader = await api.http.post(
        "/api/v1/keys",
        json={"name": "reader", "scopes": ["executions:read"]},
        headers=api.auth(carol["api_key"]),
    )
    assert reader.status_code == 201, reader.text
    return Tenants(
        base_url=str(api.http.base_url),
        alice_key=alice["api_key"],
        alice_execution=eid,
        alice_user_id=alice["user_id"],
        bob_key=bob["api_key"],
        carol_key=carol["api_key"],
        carol_reader_key=reader.json()["api_key"],
        dave_key=dave["api_key"],
        dave_user_id=dave["user_id"],
    )


#: open until the client goes (the live feed): a generated request would never end
ENDLESS = {"/executions/stream"}


@pytest.fixture(scope="module")
def openapi(tenants: Tenants) -> Any:
    schema = schemathesis.openapi.from_url(f"{tenants.base_url}/openapi.json", timeout=30)
    schema = schema.exclude(path=[f"/api/v1{path}" for path in ENDLESS])
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


@pytest.mark.parametrize("narrow", [True, False], ids=["read-only-key", "full-key"])
def test_stateful_chains_never_reach_another_tenants_execution(
    openapi: Any, tenants: Tenants, narrow: bool
) -> None:
    """Chains with Carol's full key, then with her read-only key (which must never get a
    2xx from a route that needs another scope)."""
    call_key = tenants.carol_reader_key if narrow else tenants.carol_key
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

    def within_scopes(ctx: Any, response: Any, case: Any) -> None:
        route = case.operation.path.removeprefix("/api/v1")
        scope = SCOPE.get((case.method.upper(), route))
        if narrow and scope not in (None, "executions:read") and response.status_code < 300:
            raise AssertionError(
                f"{case.operation.label}: a read-only key got {response.status_code}"
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
                "headers": {"Authorization": f"Bearer {call_key}"},
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
                additional_checks=[_never_admin_without_master, no_cross_tenant, within_scopes],
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
ADMIN = {
    ("GET", "/users"),
    ("POST", "/users/create"),
    ("POST", "/users/add-credits"),
    ("GET", "/users/{user_id}"),
    ("PATCH", "/users/{user_id}/limits"),
}
#: what only a user does: spend credits, answer for the user, their own account
USER_ONLY = {
    ("POST", "/flows/execute"),
    ("POST", "/executions/{execution_id}/input"),
    ("GET", "/users/me"),
    ("POST", "/users/regenerate-key"),
}
#: the scope each route needs from a user's key (None: any key)
SCOPE = {
    ("POST", "/flows/execute"): "executions:run",
    ("POST", "/executions/{execution_id}/input"): "executions:run",
    ("POST", "/executions/{execution_id}/cancel"): "executions:run",
    ("POST", "/flows"): "flows:write",
    ("PUT", "/flows/{flow_id}"): "flows:write",
    ("DELETE", "/flows/{flow_id}"): "flows:write",
    ("POST", "/agents"): "agents:write",
    ("DELETE", "/agents/{agent_id}"): "agents:write",
}
#: the operations views (identity.ops_view): (key kind, route) -> the status; /metrics is
#: asked for its Prometheus text here (no Accept header)
OPS: dict[tuple[str, str], int] = {
    ("none", "/status"): 200,
    ("made-up", "/status"): 401,
    ("user", "/status"): 200,
    ("reader", "/status"): 200,
    ("admin-key", "/status"): 200,
    ("master", "/status"): 200,
    ("none", "/metrics"): 401,
    ("made-up", "/metrics"): 401,
    ("user", "/metrics"): 403,
    ("reader", "/metrics"): 403,
    ("admin-key", "/metrics"): 200,
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
        operator = kind in ("master", "admin-key")
        if operator and "services" not in shown:
            return f"the operator's /status without its services with {where}"
        if not operator and shown != LIVENESS:
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
        .replace("{key_id}", "key_0000000000000000")
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
        ("PATCH", "/users/{user_id}/limits"): {"max_queued": 1000},
    }
    kwargs: dict[str, Any] = {"method": method, "url": url}
    if (method, route) in bodies:
        kwargs["json"] = bodies[(method, route)]
    return kwargs


def _opened(http: httpx.Client, request: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    """An endless stream's answer: its status and headers (an error's body too), then closed."""
    with http.stream(**request, headers=headers) as r:
        body = r.read() if r.status_code != 200 else b""
        return httpx.Response(r.status_code, headers=r.headers, content=body)


def _expect(kind: str, method: str, route: str, status: int, code: str | None) -> str | None:
    """What is wrong with an answer to ``kind`` of key (None: it is what the policy says).
    A 404 of a made-up id is fine; Alice's execution must be 404 for every other user."""
    if kind in ("none", "made-up"):
        ok = status == 401 and code in {"MISSING_API_KEY", "INVALID_API_KEY"}
        return None if ok else "not 401"
    admin_route, user_only = (method, route) in ADMIN, (method, route) in USER_ONLY
    if kind in ("master", "admin-key"):
        if user_only:
            return None if status == 403 and code == "USER_KEY_REQUIRED" else "not 403 USER_KEY"
        return None if status not in (401, 403) else "the admin refused"
    if admin_route:
        return None if status == 403 and code == "ADMIN_REQUIRED" else "admin route not 403"
    scope = SCOPE.get((method, route), "executions:read" if "{execution_id}" in route else None)
    if kind == "reader" and scope not in (None, "executions:read"):
        return None if status == 403 and code == "FORBIDDEN_SCOPE" else "scope not enforced"
    if "{execution_id}" in route:
        return None if status == 404 else "another tenant's execution not 404"
    return None if status not in (401, 403) else "user refused"


def test_every_route_with_every_kind_of_key(tenants: Tenants) -> None:
    """Route × role × scope over HTTP: no key, a made-up key, a user key with every scope,
    a read-only key, an admin key and the master key — on Alice's execution (another
    tenant's for every user here) and on system flows and agents."""
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
        erin_key = erin.json()["api_key"]
        reader = http.post(
            "/api/v1/keys",
            json={"name": "reader", "scopes": ["executions:read"]},
            headers={"Authorization": f"Bearer {erin_key}"},
        )
        admin = http.post(
            "/api/v1/keys",
            json={"name": "console", "expires_in_s": 3600},
            headers={"Authorization": f"Bearer {MASTER}"},
        )
        assert reader.status_code == admin.status_code == 201, (reader.text, admin.text)
        keys = {
            "none": None,
            "made-up": "sk_" + "Zq9" * 14 + "Z",
            "user": erin_key,
            "reader": reader.json()["api_key"],
            "admin-key": admin.json()["api_key"],
            "master": MASTER,
        }
        problems: list[str] = []
        # the key rotation last: it revokes the user key the loop uses
        routes.sort(key=lambda r: r[1].endswith("/regenerate-key"))
        for kind, key in keys.items():
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            for method, path in routes:
                request = _request(method, path, tenants, tenants.dave_user_id)
                if path.removeprefix("/api/v1") in ENDLESS:
                    r = _opened(http, request, headers)
                else:
                    r = http.request(**request, headers=headers)
                if path.endswith("/regenerate-key") and r.status_code == 200:
                    headers = {"Authorization": f"Bearer {r.json()['api_key']}"}
                route = path.removeprefix("/api/v1")
                code = (
                    r.json().get("error_code")
                    if r.headers.get("content-type", "").startswith("application/json")
                    and r.status_code >= 400
                    else None
                )
                where = f"{kind} key: {method} {path} -> {r.status_code} {r.text[:200]}"
                if r.status_code >= 500 and not (path == "/status" and r.status_code == 503):
                    problems.append(f"5xx with {where}")
                elif "alice's" in r.text and kind not in ("master", "admin-key"):
                    problems.append(f"Alice's data leaked with {where}")
                elif path in PUBLIC:
                    continue
                elif (kind, route) in OPS:
                    if problem := _ops_problem(kind, route, r, where):
                        problems.append(problem)
                elif (wrong := _expect(kind, method, route, r.status_code, code)) is not None:
                    problems.append(f"{wrong} with {where}")
        assert not problems, "\n".join(problems)


@pytest.mark.asyncio(loop_scope="session")
async def test_the_fuzzing_left_alice_untouched(api: Api, tenants: Tenants) -> None:
    """After both runs: Alice's execution and credits are what they were."""
    h = api.auth(tenants.alice_key)
    got = await api.http.get(f"/api/v1/executions/{tenants.alice_execution}", headers=h)
    assert got.status_code == 200 and got.json()["status"] == "completed"
    me = (await api.http.get("/api/v1/users/me", headers=h)).json()
    assert me["credits"] == 4
