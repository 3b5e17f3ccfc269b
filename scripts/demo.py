"""The original AI Spine demo, over HTTP against a running stack (`make up`, then `make demo`).

1. health and status of the stack (`/status` with the master key: its components);
2. the flows and agents it offers;
3. a demo user, created with the master key (its key is kept in `.spine/demo.key`, which is
   git-ignored, and reused while it works; topped up when out of credits);
4. `credit_analysis` started with an incomplete applicant: zoe asks for what is missing,
   the demo answers part of it (turn 1), zoe asks again (turn 2), the demo answers the rest;
5. all of it followed live on the execution's Server-Sent Events stream, each event printed;
6. the result.

Configuration: `PORT` and `API_KEY` from the environment or the git-ignored `.env` (what
`make up` wrote); `SPINE_URL` overrides the base URL (default `http://127.0.0.1:$PORT`).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY_FILE = ROOT / ".spine" / "demo.key"
DEMO_EMAIL = "demo@ai-spine.local"
INCOMPLETE = {"name": "Ana Díaz", "user_message": "Hi! I would like a loan, please."}
TURNS: list[dict[str, Any]] = [
    {"income": 3200, "debts": 250},  # turn 1: only part of what zoe asked for
    {"amount": 15000, "term_months": 36},  # turn 2: the rest
]
TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


class DemoError(Exception):
    """Something the person running the demo can fix; the message says what."""


def settings() -> tuple[str, str]:
    values: dict[str, str] = {}
    env_file = ROOT / ".env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and not line.lstrip().startswith("#"):
                values[name.strip()] = value.strip().strip("'\"")
    port = os.environ.get("PORT") or values.get("PORT") or "8000"
    master = os.environ.get("API_KEY") or values.get("API_KEY") or ""
    if not master:
        raise DemoError("no API_KEY in the environment or .env: run `make up` first")
    base = os.environ.get("SPINE_URL") or f"http://127.0.0.1:{port}"
    return base.rstrip("/"), master


def say(text: str = "") -> None:
    print(text, flush=True)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def check(r: httpx.Response, *ok: int) -> dict[str, Any]:
    if r.status_code not in (ok or (200,)):
        try:
            detail = r.json().get("message", r.text)
        except ValueError:
            detail = r.text
        raise DemoError(f"{r.request.method} {r.request.url.path} → {r.status_code}: {detail}")
    body: dict[str, Any] = r.json()
    return body


async def step_health(http: httpx.AsyncClient, master: str) -> None:
    say("== 1. health")
    try:
        health = check(await http.get("/health"))
    except httpx.TransportError as exc:
        raise DemoError(
            f"nothing answers at {http.base_url} ({type(exc).__name__}): is the stack up? "
            "Run `make up` (and check PORT in .env)"
        ) from exc
    say(f"   gateway {health['status']} (version {health.get('version', '?')})")
    r = await http.get("/status", headers=bearer(master))  # components: the operator's view
    if r.status_code == 401:
        raise DemoError("the gateway refused API_KEY: is it the master key the stack runs with?")
    status = r.json()
    components = ", ".join(f"{k} {v['status']}" for k, v in status["components"].items())
    say(f"   {status['status']}: {components}")
    alive = sorted({s["service"] for s in status.get("services", []) if s.get("alive")})
    say(f"   services beating: {', '.join(alive) or 'none yet'}")
    if r.status_code != 200:
        raise DemoError("the stack is degraded (see /status); `make up` starts what is missing")


async def step_user(http: httpx.AsyncClient, master: str) -> str:
    say("== 2. demo user")
    if KEY_FILE.exists():
        key = KEY_FILE.read_text().strip()
        r = await http.get("/api/v1/users/me", headers=bearer(key))
        if r.status_code == 200:
            me = r.json()
            say(f"   reusing {me['user_id']} ({me['credits']} credits)")
            if me["credits"] < 1:
                topped = check(
                    await http.post(
                        "/api/v1/users/add-credits",
                        json={"user_id": me["user_id"], "credits": 10},
                        headers=bearer(master),
                    )
                )
                say(f"   topped up: {topped['credits']} credits")
            return key
    email = DEMO_EMAIL
    r = await http.post(
        "/api/v1/users/create",
        json={"email": email, "name": "Demo", "credits": 10, "rate_limit": 600},
        headers=bearer(master),
    )
    if r.status_code == 409:  # its key was shown once and is lost: a fresh demo user
        email = f"demo+{os.urandom(4).hex()}@ai-spine.local"
        r = await http.post(
            "/api/v1/users/create",
            json={"email": email, "name": "Demo", "credits": 10, "rate_limit": 600},
            headers=bearer(master),
        )
    if r.status_code in (401, 403):
        raise DemoError("the master key was refused: use the API_KEY the stack runs with")
    user = check(r, 201)
    KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
    KEY_FILE.write_text(user["api_key"] + "\n")
    KEY_FILE.chmod(0o600)
    say(f"   created {user['user_id']} <{email}> with {user['credits']} credits")
    say(f"   its key (shown once) is kept in {KEY_FILE.relative_to(ROOT)}")
    return str(user["api_key"])


async def step_catalogue(http: httpx.AsyncClient, key: str) -> None:
    say("== 3. flows and agents")
    flows = check(await http.get("/api/v1/flows", headers=bearer(key)))["flows"]
    for f in flows:
        say(f"   flow  {f['flow_id']:<20} {f['name']} ({len(f['nodes'])} nodes, cost {f['cost']})")
    agents = check(await http.get("/api/v1/agents", headers=bearer(key)))["agents"]
    for a in agents:
        say(f"   agent {a['agent_id']:<20} {a['status']:<8} {a.get('description', '')}")
    if "credit_analysis" not in {f["flow_id"] for f in flows}:
        raise DemoError("the flow credit_analysis is not loaded (is the orchestrator up?)")
    missing = {"zoe", "eddie"} - {a["agent_id"] for a in agents if a["active"]}
    if missing:
        raise DemoError(f"agents not active: {', '.join(sorted(missing))} (`make up` runs them)")


def describe(event: str, data: dict[str, Any]) -> str:
    node = data.get("node_id")
    if event == "execution.node_waiting_input":
        question = str(data["question"]).replace("\n", "\n          ")
        return f"{node} asks (turn {data['turn']}): {question}"
    if event == "execution.input_received":
        return f"{node} got turn {data['turn']}: {json.dumps(data['input'])}"
    if event == "execution.node_dispatched":
        return f"{node} → agent {data['agent_id']} (attempt {data['attempt']})"
    if event == "execution.node_completed":
        return f"{node} done"
    if event == "execution.node_failed":
        return f"{node} failed: {data['error_message']}"
    if event == "execution.started":
        return (
            f"started {data['flow_id']} with {json.dumps(data['input_data'], ensure_ascii=False)}"
        )
    if event == "execution.completed":
        return "completed"
    if event == "execution.failed":
        return f"failed: {data['error_message']}"
    return event


async def step_run(http: httpx.AsyncClient, key: str) -> str:
    say("== 4. credit_analysis with an incomplete applicant, followed live (SSE)")
    started = check(
        await http.post(
            "/api/v1/flows/execute",
            json={"flow_id": "credit_analysis", "input_data": INCOMPLETE},
            headers=bearer(key),
        )
    )
    eid = str(started["execution_id"])
    say(f"   execution {eid} ({started['status']})")
    turns = list(TURNS)
    event, seq = "", "?"
    data: dict[str, Any] = {}
    async with http.stream(
        "GET", f"/api/v1/executions/{eid}/stream", headers=bearer(key), timeout=None
    ) as stream:
        if stream.status_code != 200:
            raise DemoError(f"the stream answered {stream.status_code}")
        async for line in stream.aiter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
            elif line.startswith("data:"):
                data = json.loads(line.partition(":")[2])["data"]
            elif line.startswith("id:"):
                seq = line.partition(":")[2].strip()
            elif not line and event:
                say(f"   [{seq:>2}] {describe(event, data)}")
                if event == "execution.node_waiting_input":
                    if not turns:
                        raise DemoError("zoe keeps asking; the demo has no more answers")
                    answer = turns.pop(0)
                    say(f"        ↳ answering {json.dumps(answer)}")
                    check(
                        await http.post(
                            f"/api/v1/executions/{eid}/input",
                            json={"input": answer},
                            headers=bearer(key),
                        )
                    )
                if event in TERMINAL:
                    break
                event = ""
    return eid


async def step_result(http: httpx.AsyncClient, key: str, eid: str) -> None:
    say("== 5. result")
    ex = check(await http.get(f"/api/v1/executions/{eid}", headers=bearer(key)))
    if ex["status"] != "completed":
        raise DemoError(f"the execution ended {ex['status']}: {ex['error_message']}")
    result = ex["output_data"].get("result", ex["output_data"])
    applicant = ex["nodes"].get("zoe", {}).get("output", {}).get("applicant", {})
    say(f"   applicant: {json.dumps(applicant, ensure_ascii=False)}")
    say(f"   decision:  {result.get('decision')}  (risk score {result.get('score')})")
    for reason in result.get("reasons", []):
        say(f"     - {reason}")
    me = check(await http.get("/api/v1/users/me", headers=bearer(key)))
    say(f"   credits left: {me['credits']}; requests so far: {me['usage']['requests_total']}")


async def main() -> int:
    try:
        base, master = settings()
        say(f"AI Spine demo against {base}")
        async with httpx.AsyncClient(base_url=base, timeout=60.0) as http:
            await step_health(http, master)
            key = await step_user(http, master)
            await step_catalogue(http, key)
            eid = await step_run(http, key)
            await step_result(http, key, eid)
    except DemoError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"demo failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    say("== done")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
