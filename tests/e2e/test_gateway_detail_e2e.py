"""An execution's detail tells the truth about every node, and a flow's graph, end to end
(real service and agent processes, real Kafka/PG/Redis, the public HTTP API only).

* zoe waiting for input: the detail shows her question;
* a cancel: every node ends (``cancelled``), none stays ``running``/``waiting_input``;
* an agent nobody registered (``wait_for_agent: 0``): the failed node names it, with the
  attempt its event gives, and the nodes still running are cancelled;
* a completed chain: each node's input, output, duration and attempts, the flow's graph;
* ``GET /flows/{id}/graph``: a system flow, another tenant's private flow is 404.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from spine_servicekit.kafka import KafkaConfig

from .test_fair_sharing_e2e import eventually
from .test_gateway_e2e import Api, gateway_stack

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

ENDED = {"completed", "failed", "skipped", "cancelled"}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def api(kafka: KafkaConfig, infra: dict[str, str], topic_prefix: str) -> AsyncIterator[Api]:
    async with gateway_stack(kafka, infra, topic_prefix) as client:
        yield client


async def _flow(api: Api, key: str, nodes: list[dict[str, Any]], **extra: Any) -> str:
    flow = {"flow_id": f"d_{os.urandom(4).hex()}", "nodes": nodes, **extra}
    r = await api.http.post("/api/v1/flows", json=flow, headers=api.auth(key))
    assert r.status_code == 201, r.text
    return str(flow["flow_id"])


async def _detail(api: Api, key: str, eid: str) -> dict[str, Any]:
    r = await api.http.get(f"/api/v1/executions/{eid}", headers=api.auth(key))
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_zoes_pending_question_is_in_the_detail_until_the_cancel_ends_every_node(
    api: Api,
) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    eid = (await api.execute(key, input_data={"name": "Ana"})).json()["execution_id"]
    events = await api.sse_until(key, eid, "execution.node_waiting_input")
    asked = events[-1]["data"]["data"]
    assert events[-1]["event"] == "execution.node_waiting_input"

    got = await _detail(api, key, eid)
    assert got["status"] == "waiting_input"
    zoe = got["nodes"]["zoe"]
    assert zoe["status"] == "waiting_input" and zoe["agent_id"] == "zoe" and zoe["attempt"] == 1
    assert zoe["pending_input"] == {
        "question": asked["question"],
        "missing_fields": asked["missing_fields"],
        "turn": 1,
        "expires_at": asked["expires_at"],
    }
    assert set(zoe["pending_input"]["missing_fields"]) == {"income", "amount", "term_months"}
    assert zoe["input"] == {"name": "Ana"}  # a root node gets the execution's input
    # the nodes it has not reached are there too, waiting
    assert {n: v["status"] for n, v in got["nodes"].items()} == {
        "zoe": "waiting_input",
        "eddie": "pending",
        "result": "pending",
    }
    assert got["nodes"]["eddie"]["agent_id"] == "eddie" and got["nodes"]["eddie"]["input"] is None
    assert [(e["from"], e["to"]) for e in got["graph"]["edges"]] == [
        ("zoe", "eddie"),
        ("eddie", "result"),
    ]

    r = await api.http.post(f"/api/v1/executions/{eid}/cancel", headers=api.auth(key))
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    ended = await _detail(api, key, eid)
    assert ended["status"] == "cancelled"
    assert {n: v["status"] for n, v in ended["nodes"].items()} == {
        "zoe": "cancelled",
        "eddie": "cancelled",
        "result": "cancelled",
    }
    assert ended["nodes"]["zoe"]["pending_input"] is None  # no longer asked
    assert ended["nodes"]["zoe"]["completed_at"] is not None
    results = await api.http.get(f"/api/v1/executions/{eid}/results", headers=api.auth(key))
    assert {v["status"] for v in results.json()["nodes"].values()} == {"cancelled"}


async def test_a_cancel_ends_a_running_node_a_waiting_node_and_an_unreached_one(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    flow_id = await _flow(
        api,
        key,
        [
            {"id": "slow", "agent_id": "echo", "config": {"delay_ms": 600_000}},
            {"id": "ask", "agent_id": "echo", "config": {"needs_input": True}},
            {"id": "after", "agent_id": "echo", "depends_on": ["slow", "ask"]},
        ],
    )
    eid = (await api.execute(key, flow_id, {"x": 1})).json()["execution_id"]
    await api.sse_until(key, eid, "execution.node_waiting_input")
    before = await _detail(api, key, eid)
    assert {n: v["status"] for n, v in before["nodes"].items()} == {
        "slow": "running",
        "ask": "waiting_input",
        "after": "pending",
    }
    assert before["nodes"]["ask"]["pending_input"]["question"]

    r = await api.http.post(
        f"/api/v1/executions/{eid}/cancel", json={"reason": "enough"}, headers=api.auth(key)
    )
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    after = await _detail(api, key, eid)
    assert {n: v["status"] for n, v in after["nodes"].items()} == {
        "slow": "cancelled",
        "ask": "cancelled",
        "after": "cancelled",
    }
    assert all(v["status"] in ENDED for v in after["nodes"].values())
    slow = after["nodes"]["slow"]
    assert slow["attempt"] == 1 and slow["completed_at"] and slow["duration_ms"] >= 0


async def test_a_node_whose_agent_is_missing_names_it_and_its_attempt(api: Api) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    ghost = f"ghost_{os.urandom(3).hex()}"  # never registered
    flow_id = await _flow(
        api,
        key,
        [
            {"id": "slow", "agent_id": "echo", "config": {"delay_ms": 600_000}},
            {"id": "missing", "agent_id": ghost},
            {"id": "after", "agent_id": "echo", "depends_on": ["slow", "missing"]},
        ],
        wait_for_agent=0,  # fail at once (DESIGN §16)
    )
    eid = (await api.execute(key, flow_id, {"x": 1})).json()["execution_id"]
    events = await api.sse(key, eid)
    assert events[-1]["event"] == "execution.failed", events
    (failed,) = [e["data"]["data"] for e in events if e["event"] == "execution.node_failed"]
    assert failed["node_id"] == "missing" and failed["agent_id"] == ghost

    got = await _detail(api, key, eid)
    assert got["status"] == "failed"
    missing = got["nodes"]["missing"]
    assert missing["status"] == "failed" and missing["agent_id"] == ghost
    assert missing["attempt"] == failed["attempt"] == 0  # the agent never got it
    assert ghost in missing["error_message"]
    # the execution failed while slow was running: slow was stopped, after never ran
    assert got["nodes"]["slow"]["status"] == "cancelled"
    assert got["nodes"]["after"]["status"] == "cancelled"
    assert got["nodes"]["after"]["attempt"] == 0 and got["nodes"]["after"]["agent_id"] == "echo"


async def test_a_completed_chain_shows_each_nodes_input_output_duration_and_the_graph(
    api: Api,
) -> None:
    key = (await api.create_user(credits=5))["api_key"]
    eid = (await api.execute(key, "echo_chain", {"x": 1})).json()["execution_id"]
    events = await api.sse(key, eid)
    assert events[-1]["event"] == "execution.completed"
    got = await _detail(api, key, eid)
    nodes = got["nodes"]
    assert list(nodes) == ["a", "b", "c", "result"]
    assert all(n["status"] == "completed" for n in nodes.values())
    assert nodes["a"]["input"] == {"x": 1}
    assert nodes["a"]["output"]["echo"] == {"x": 1}
    assert nodes["b"]["input"] == {"a": nodes["a"]["output"]}
    assert nodes["c"]["input"] == {"b": nodes["b"]["output"]}
    assert nodes["result"]["input"] == {"c": nodes["c"]["output"]}
    assert nodes["result"]["output"] == nodes["c"]["output"] == got["output_data"]["result"]
    assert [nodes[n]["attempt"] for n in ("a", "b", "c", "result")] == [1, 1, 1, 0]
    assert [nodes[n]["agent_id"] for n in ("a", "b", "c", "result")] == [
        "echo",
        "echo",
        "echo",
        None,
    ]
    assert all(
        n["duration_ms"] is not None and n["duration_ms"] >= 0 and n["started_at"]
        for n in nodes.values()
    )
    # what each node got is what the orchestrator sent its agent
    dispatched = (
        await api.http.get(f"/api/v1/executions/{eid}/messages", headers=api.auth(key))
    ).json()["messages"]
    for m in dispatched:
        expected = m["payload"]["dependencies"] or m["payload"]["input"]
        assert nodes[m["node_id"]]["input"] == expected
    graph = got["graph"]
    assert graph["flow_id"] == "echo_chain" and graph["flow_version"] == got["flow_version"]
    assert [(n["id"], n["x"], n["y"]) for n in graph["nodes"]] == [
        ("a", 0, 0),
        ("b", 1, 0),
        ("c", 2, 0),
        ("result", 3, 0),
    ]
    assert [(e["from"], e["to"]) for e in graph["edges"]] == [
        ("a", "b"),
        ("b", "c"),
        ("c", "result"),
    ]
    # the list keeps its shape: no nodes, no graph
    listed = (await api.http.get("/api/v1/executions", headers=api.auth(key))).json()
    assert listed["executions"][0]["nodes"] is None and listed["executions"][0]["graph"] is None


async def test_the_graph_route_draws_a_system_flow_and_hides_another_tenants(api: Api) -> None:
    alice = (await api.create_user())["api_key"]
    bob = (await api.create_user())["api_key"]
    r = await api.http.get("/api/v1/flows/credit_analysis/graph", headers=api.auth(alice))
    assert r.status_code == 200, r.text
    graph = r.json()
    assert [(n["id"], n["agent_id"], n["type"], n["x"], n["y"]) for n in graph["nodes"]] == [
        ("zoe", "zoe", "input", 0, 0),
        ("eddie", "eddie", "processor", 1, 0),
        ("result", None, "output", 2, 0),
    ]
    assert graph["edges"] == [
        {"from": "zoe", "to": "eddie", "condition": None},
        {"from": "eddie", "to": "result", "condition": None},
    ]
    assert (graph["layers"], graph["width"]) == (3, 1)
    flow = (await api.http.get("/flows/credit_analysis", headers=api.auth(alice))).json()
    assert graph["flow_version"] == flow["flow_version"]  # the root alias too

    mine = await _flow(
        api,
        bob,
        [
            {"id": "a", "agent_id": "echo"},
            {"id": "b", "agent_id": "echo", "depends_on": ["a"], "when": "nodes.a.node_id == 'a'"},
            {"id": "c", "agent_id": "echo", "depends_on": ["a"]},
            {"id": "d", "type": "output", "depends_on": ["b", "c"]},
        ],
    )
    own = await api.http.get(f"/api/v1/flows/{mine}/graph", headers=api.auth(bob))
    assert own.status_code == 200, own.text
    assert {n["id"]: (n["x"], n["y"]) for n in own.json()["nodes"]} == {
        "a": (0, 0),
        "b": (1, 0),
        "c": (1, 1),
        "d": (2, 0),
    }
    assert own.json()["edges"][0] == {"from": "a", "to": "b", "condition": "nodes.a.node_id == 'a'"}
    hidden = await api.http.get(f"/api/v1/flows/{mine}/graph", headers=api.auth(alice))
    assert hidden.status_code == 404 and hidden.json()["error_code"] == "FLOW_NOT_FOUND"
    unknown = await api.http.get("/api/v1/flows/no_such_flow/graph", headers=api.auth(alice))
    assert unknown.status_code == 404


async def test_the_agents_list_shows_transport_owner_last_beat_and_tasks_in_flight(
    api: Api,
) -> None:
    user = await api.create_user(credits=10)
    key = user["api_key"]
    flow = {
        "flow_id": f"slow_{os.urandom(3).hex()}",
        "nodes": [{"id": "slow", "agent_id": "echo", "config": {"delay_ms": 60_000}}],
    }
    r = await api.http.post("/api/v1/flows", json=flow, headers=api.auth(key))
    assert r.status_code == 201, r.text
    eid = (await api.execute(key, flow["flow_id"], {"x": 1})).json()["execution_id"]
    await api.sse_until(key, eid, "execution.node_dispatched")

    async def echo() -> dict[str, Any]:
        r = await api.http.get("/api/v1/agents/echo", headers=api.auth(key))
        assert r.status_code == 200, r.text
        return dict(r.json())

    # echo beats every second (the test stack's interval) with the task it holds; there
    # is no event for "the next beat was read", so ask until it shows (bounded)
    async def holding() -> bool:
        return int((await echo())["tasks_in_flight"]) >= 1

    await eventually(holding)
    shown = await echo()
    assert shown["transport"] == "kafka" and shown["owner"] == "system", shown
    assert shown["instances"] >= 1 and shown["last_heartbeat_at"], shown
    listed = await api.http.get("/api/v1/agents", headers=api.auth(key))
    [row] = [a for a in listed.json()["agents"] if a["agent_id"] == "echo"]
    assert {"tasks_in_flight", "instances", "last_heartbeat_at", "transport"} <= set(row)

    r = await api.http.post(f"/api/v1/executions/{eid}/cancel", headers=api.auth(key))
    assert r.status_code == 200, r.text

    async def idle() -> bool:  # the cancel reaches echo, which lets the task go
        return (await echo())["tasks_in_flight"] == 0

    await eventually(idle)
