"""One partition's agent capacity ledger: tasks outstanding per agent, and the nodes that
wait for an agent, taken in turns across tenants (DESIGN §16).

Pure and derived: the ledger is a function of the partition's execution states (every node
``dispatched`` counts against its agent, every node ``waiting_agent`` is in its agent's
line), so :meth:`CapacityLedger.reconcile` after each decision and a rebuild on assignment
keep it exact without a snapshot of its own. Between a decision's ``admit`` and its
reconcile the ledger counts the slot it granted, so a fan-out to one agent within one
decision respects the share too.

Each partition keeps at most ``share(agent)`` (⌈concurrency / partitions⌉) tasks of an
agent outstanding; a node is admitted at once only when a slot is free *and* nobody waits
for that agent, so a newcomer never overtakes the line. When slots free up (a result, a
timeout, a cancel) or the agent comes back, :meth:`next_ready` hands out the waiting nodes
one tenant at a time: tenant A's thousand waiting nodes and tenant B's one alternate.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from .domain import AnyState, ExecutionState

NodeKey = tuple[str, str]  # (execution_id, node_id)
#: an agent's share of this partition: ``None`` for no cap
Share = Callable[[str], int | None]
_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass
class _AgentLine:
    outstanding: set[NodeKey] = field(default_factory=set)
    #: user -> that user's waiting nodes, oldest first
    waiting: dict[str, OrderedDict[NodeKey, None]] = field(default_factory=dict)
    #: users with waiting nodes, in turn order (the next one first)
    turns: deque[str] = field(default_factory=deque)

    def idle(self) -> bool:
        return not self.outstanding and not self.waiting


class CapacityLedger:
    def __init__(self, share: Share) -> None:
        self._share = share
        self._lines: dict[str, _AgentLine] = {}
        #: execution -> (agent, node) it has outstanding / waiting, to reconcile it alone
        self._held: dict[str, set[tuple[str, str, bool]]] = {}

    # --- asked by a decision --------------------------------------------------------------
    def admit(self, agent_id: str, user_id: str, execution_id: str, node_id: str) -> bool:
        """Dispatch now? Yes (and the slot is taken) when a slot is free and nobody waits."""
        line = self._lines.setdefault(agent_id, _AgentLine())
        if line.waiting or not self._has_room(agent_id, line):
            return False
        line.outstanding.add((execution_id, node_id))
        # held by the execution from now on, so a reconcile that finds the node not
        # dispatched (the decision failed it instead) gives the slot back
        self._held.setdefault(execution_id, set()).add((agent_id, node_id, False))
        return True

    def _has_room(self, agent_id: str, line: _AgentLine) -> bool:
        cap = self._share(agent_id)
        return cap is None or len(line.outstanding) < cap

    # --- kept in step with the states ----------------------------------------------------
    def reconcile(self, state: AnyState) -> None:
        """Make the ledger say what ``state`` says about its execution's nodes."""
        eid = state.execution_id
        now: set[tuple[str, str, bool]] = set()
        waiting_since: dict[tuple[str, str], datetime] = {}
        if isinstance(state, ExecutionState) and not state.terminal:
            for node in state.flow.nodes:
                if node.agent_id is None:
                    continue
                ns = state.nodes[node.id]
                if ns.status == "dispatched":
                    now.add((node.agent_id, node.id, False))
                elif ns.status == "waiting_agent":
                    now.add((node.agent_id, node.id, True))
                    waiting_since[(node.agent_id, node.id)] = ns.wait_started_at or _EPOCH
        before = self._held.get(eid, set())
        for agent_id, node_id, waiting in before - now:
            self._drop(agent_id, (eid, node_id), waiting)
        user = state.user_id
        for agent_id, node_id, waiting in sorted(
            now - before, key=lambda k: waiting_since.get((k[0], k[1]), _EPOCH)
        ):
            line = self._lines.setdefault(agent_id, _AgentLine())
            if waiting:
                queue = line.waiting.get(user)
                if queue is None:
                    queue = line.waiting[user] = OrderedDict()
                    line.turns.append(user)
                queue[(eid, node_id)] = None
            else:
                line.outstanding.add((eid, node_id))
        if now:
            self._held[eid] = now
        else:
            self._held.pop(eid, None)

    def _drop(self, agent_id: str, key: NodeKey, waiting: bool) -> None:
        line = self._lines.get(agent_id)
        if line is None:
            return
        if not waiting:
            line.outstanding.discard(key)
        else:
            for user, queue in list(line.waiting.items()):
                if key in queue:
                    del queue[key]
                    if not queue:
                        del line.waiting[user]
                        line.turns.remove(user)
                    break
        if line.idle():
            del self._lines[agent_id]

    def forget(self, execution_id: str) -> None:
        for agent_id, node_id, waiting in self._held.pop(execution_id, set()):
            self._drop(agent_id, (execution_id, node_id), waiting)

    def rebuild(self, states: Iterable[AnyState]) -> None:
        """The ledger of a partition just assigned: waiting nodes line up by when they
        began to wait."""
        self._lines.clear()
        self._held.clear()
        live = [s for s in states if isinstance(s, ExecutionState) and not s.terminal]
        live.sort(key=_first_wait)
        for state in live:
            self.reconcile(state)

    # --- asked by the partition after a batch --------------------------------------------
    def waiting_agents(self) -> list[str]:
        return [a for a, line in self._lines.items() if line.waiting]

    def waiting_for(self, agent_id: str) -> list[NodeKey]:
        line = self._lines.get(agent_id)
        if line is None:
            return []
        return [k for user in line.turns for k in line.waiting[user]]

    def next_ready(self, agent_id: str) -> NodeKey | None:
        """The next waiting node to dispatch (its slot taken), the next tenant's turn; or
        ``None`` when the agent's share is full or nobody waits."""
        line = self._lines.get(agent_id)
        if line is None or not line.turns or not self._has_room(agent_id, line):
            return None
        user = line.turns.popleft()
        queue = line.waiting[user]
        key, _ = queue.popitem(last=False)
        if queue:
            line.turns.append(user)
        else:
            del line.waiting[user]
        line.outstanding.add(key)
        held = self._held.get(key[0])
        if held is not None:
            held.discard((agent_id, key[1], True))
            held.add((agent_id, key[1], False))
        return key

    def outstanding(self, agent_id: str) -> int:
        line = self._lines.get(agent_id)
        return len(line.outstanding) if line is not None else 0


def _first_wait(state: ExecutionState) -> tuple[datetime, str]:
    waits = [
        ns.wait_started_at or _EPOCH for ns in state.nodes.values() if ns.status == "waiting_agent"
    ]
    return (min(waits) if waits else _EPOCH, state.execution_id)
