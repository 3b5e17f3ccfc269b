"""Executions: run a flow (credits reserved by auth), read, list, cancel, answer an input
node, and follow the event trail live.

An execute answers once this replica decodes the execution's start (the live trail), not
after its read model stored it: a read right after on this replica first waits until its
read model holds what was decoded, and a read on another replica finds the Redis mark the
answer left and waits for its own read model, never answering 404 (see ``visibility``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from spine_contracts import (
    TERMINAL_STATUSES,
    CancelExecution,
    ExecutionCommandRejected,
    FlowDefinition,
    InputReceived,
    ProvideInput,
    ReserveCredits,
    WithdrawReservation,
    topics,
)
from spine_servicekit.logging import get_logger
from spine_servicekit.projector import Projector

from .adapters.postgres import ExecutionRow, FlowRow, ReadModel
from .adapters.redis import RedisStore
from .cache import ReadCache
from .commands import Commands, new_request_id
from .details import node_details, truthful_nodes
from .errors import Conflict, InvalidInput, NotFound, Unavailable, from_reply
from .idempotency import Idempotency
from .identity import Principal
from .limits import execution_allowance
from .listing import ExecutionFilter, decode_cursor, encode_cursor
from .live import TERMINAL_EVENT_TYPES, LiveTrail, View, await_started, follow_trail
from .models import (
    EventList,
    EventView,
    ExecutionAccepted,
    ExecutionAction,
    ExecutionList,
    ExecutionView,
    FlowGraph,
    MessageList,
    MessageView,
    Results,
    iso,
)
from .policy import HIDDEN, Action, check
from .pricing import Pricing, Reservation
from .progress import NodeState, ProgressHub, is_progress
from .visibility import ReadYourWrites

log = get_logger(__name__)
T = TypeVar("T")

#: how long an accepted execution is remembered in Redis (reads of it wait, never 404)
ACCEPTED_TTL_S = 3600


#: how often a live stream checks that its key still works (revoked keys close within 1 s)
REVALIDATE_S = 0.5
KEY_GONE = orjson.dumps(
    {"code": "KEY_REVOKED", "message": "the API key of this stream was revoked or expired"}
).decode()


async def while_valid(
    items: AsyncIterator[T], still_valid: Callable[[], Awaitable[bool]]
) -> AsyncGenerator[T | None, None]:
    """``items`` for as long as ``still_valid()`` holds (asked every :data:`REVALIDATE_S`);
    then one ``None`` and the end — even while ``items`` waits for its next one."""

    async def until_invalid() -> None:
        # a poll on purpose: expiry is the clock's, and a revocation may reach this
        # replica's read model from another replica; the check is an in-memory cache hit
        while await still_valid():  # noqa: ASYNC110
            await asyncio.sleep(REVALIDATE_S)

    watch = asyncio.ensure_future(until_invalid())
    step: asyncio.Future[T] | None = None
    try:
        while True:
            step = asyncio.ensure_future(anext(items))
            await asyncio.wait({step, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
                yield None
                return
            try:
                item = step.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        # a step still waiting (the consumer was cancelled, or closed this) is cancelled,
        # which ends ``items`` too: an async generator cannot be closed while it runs
        futures = [f for f in (watch, step) if f is not None]
        for future in futures:
            future.cancel()
        await asyncio.gather(*futures, return_exceptions=True)
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


async def _until_terminal(views: list[View]) -> AsyncIterator[View]:
    """Stored views up to and including the terminal event; none when it is not among
    them (the client has it already)."""
    ends = next((i for i, v in enumerate(views) if v["type"] in TERMINAL_EVENT_TYPES), None)
    if ends is None:
        return
    for view in views[: ends + 1]:
        yield view


def sse_event(view: View) -> dict[str, str]:
    """One view as a Server-Sent Event: a trail event with its ``seq`` as the ``id`` (what
    ``Last-Event-ID`` resumes from) and the whole view as ``data``; progress with no ``id``
    at all (live only, never a resume point) and its body as ``data``."""
    if is_progress(view):
        return {"event": str(view["type"]), "data": orjson.dumps(view["data"]).decode()}
    return {
        "id": str(view["seq"]),
        "event": str(view["type"]),
        "data": orjson.dumps(view).decode(),
    }


#: trail events after which a node's progress (at that attempt or before) is stale
_NODE_ENDS = frozenset(
    {
        "execution.node_completed",
        "execution.node_failed",
        "execution.node_waiting_input",
        "execution.node_skipped",
    }
)


async def interleave(
    trail: AsyncIterator[View], progress: asyncio.Queue[View]
) -> AsyncGenerator[View, None]:
    """The trail's views in order, with progress views slipped in between as they come;
    ends with the trail. A step of the trail is never cancelled half-way (only when this
    ends). Progress of a node this stream has already shown finished is left out: it was
    queued before its end reached this replica."""
    ended: dict[str, int] = {}
    over = False  # after the terminal event nothing more is live
    step = asyncio.ensure_future(anext(trail))
    extra = asyncio.ensure_future(progress.get())
    try:
        while True:
            await asyncio.wait({step, extra}, return_when=asyncio.FIRST_COMPLETED)
            if step.done():
                try:
                    view = step.result()
                except StopAsyncIteration:
                    return
                if view["type"] in _NODE_ENDS:
                    d = view["data"]
                    ended[str(d.get("node_id"))] = int(d.get("attempt") or 10**9)
                over = over or view["type"] in TERMINAL_EVENT_TYPES
                yield view
                step = asyncio.ensure_future(anext(trail))
            if extra.done():
                shown = extra.result()
                d = shown["data"]
                if not over and int(d["attempt"]) > ended.get(str(d["node_id"]), 0):
                    yield shown
                extra = asyncio.ensure_future(progress.get())
    finally:
        for future in (step, extra):
            future.cancel()
        await asyncio.gather(step, extra, return_exceptions=True)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Read a background future's outcome, so an error nobody awaited is not logged as lost."""
    if not future.cancelled():
        future.exception()


class ExecutionsService:
    def __init__(
        self,
        *,
        commands: Commands,
        read: ReadModel,
        store: RedisStore,
        rw: ReadYourWrites,
        idempotency: Idempotency,
        executions: Projector,
        live: LiveTrail,
        flows: ReadCache[str, tuple[FlowRow, FlowDefinition]],
        start_timeout_s: float,
        pricing: Pricing,
        progress: ProgressHub | None = None,
    ) -> None:
        self.commands = commands
        self.read = read
        self.store = store
        self.rw = rw
        self.idempotency = idempotency
        self.projector = executions
        self.live = live
        self.flows = flows
        self.start_timeout_s = start_timeout_s
        self.pricing = pricing
        self.progress = progress
        self._ran_flows: dict[tuple[str, str], FlowDefinition] = {}

    # --- writes -------------------------------------------------------------------------------

    async def execute(
        self,
        caller: Principal,
        flow_id: str,
        input_data: dict[str, Any],
        metadata: dict[str, Any],
        idempotency_key: str | None,
    ) -> tuple[ExecutionAccepted, int]:
        """The accepted execution, and the credits this request reserved (0 for a replay).
        A user runs system flows and their own; another user's flow is 404."""
        found = await self.flows.get(flow_id, lambda: self._flow_to_run(flow_id))
        if found is None or check(caller.caller, Action.RUN_FLOW, found[0]["owner"]) is HIDDEN:
            raise NotFound(f"flow {flow_id!r} not found", code="FLOW_NOT_FOUND")
        flow_row, authored = found
        flow = self.pricing.effective(authored, owner=flow_row["owner"])
        reserve = self.pricing.reservation(flow, owner=flow_row["owner"])
        body = {"flow_id": flow_id, "input_data": input_data, "metadata": metadata}

        async def start(execution_id: str) -> dict[str, Any]:
            return await self._start(
                caller, execution_id, flow_row, flow, reserve, input_data, metadata
            )

        answer, replay = await self.idempotency.run(
            caller.user_id, "execute", idempotency_key, body, start
        )
        return ExecutionAccepted.model_validate(answer), 0 if replay else reserve.amount

    async def _start(
        self,
        caller: Principal,
        execution_id: str,
        flow_row: FlowRow,
        flow: FlowDefinition,
        reserve: Reservation,
        input_data: dict[str, Any],
        metadata: dict[str, Any],
    ) -> dict[str, Any]:
        user_id = caller.user_id
        request_id = new_request_id()
        cmd = ReserveCredits.build(
            correlation_id=execution_id,
            tenant_id=user_id,
            actor=caller.actor,
            user_id=user_id,
            execution_id=execution_id,
            amount=reserve.amount,
            base_credits=reserve.base_credits,
            flow=flow,
            flow_version=flow_row["flow_version"],
            input_data=input_data,
            metadata=metadata,
            request_id=request_id,
        )
        # Subscribed before the command goes: the start cannot be decoded unseen.
        with self.live.subscribe(execution_id) as trail:
            try:
                reply = await self.commands.request(
                    topics.AUTH_COMMANDS,
                    user_id,
                    cmd,
                    request_id,
                    what="input_data (with the flow)",
                    allowance=execution_allowance(node.id for node in flow.nodes),
                )
            except TimeoutError as exc:
                # Never charge and then answer 5xx: take the reservation back first.
                withdraw = WithdrawReservation.build(
                    cause=cmd, user_id=user_id, execution_id=execution_id
                )
                await self.commands.publish(topics.AUTH_COMMANDS, user_id, withdraw)
                log.warning("execute_reply_timeout", execution_id=execution_id)
                raise Unavailable(
                    "the credit reservation was not confirmed in time; nothing was charged",
                    extra={"execution_id": execution_id},
                ) from exc
            if not reply.data.ok:
                raise from_reply(reply.data.error_code, reply.data.message, reply.data.body)
            # The mark lets any other replica wait for its own read model instead of 404.
            # The balance it left is GET /users/me's to wait for (it catches the users
            # projection up first), not this answer's: under load that projection batches.
            marked = asyncio.ensure_future(
                self.store.mark_accepted(execution_id, user_id, ACCEPTED_TTL_S)
            )
            try:
                try:
                    async with asyncio.timeout(self.start_timeout_s):
                        status, created_at = await await_started(trail)
                except TimeoutError:
                    log.warning("execute_start_slow", execution_id=execution_id)
                    status, created_at = "pending", datetime.now(UTC)
                await marked
            finally:  # a client gone meanwhile leaves no wait behind, nor an unread error
                marked.add_done_callback(_retrieve)
        return {"execution_id": execution_id, "status": status, "created_at": iso(created_at)}

    async def cancel(
        self, caller: Principal, execution_id: str, reason: str | None, idempotency_key: str | None
    ) -> ExecutionAction:
        async def run(_op: str) -> dict[str, Any]:
            row = await self.own(caller, execution_id, Action.EXECUTION_CANCEL)
            if row["status"] in TERMINAL_STATUSES:
                raise Conflict(
                    f"execution {execution_id!r} is already {row['status']}",
                    code="EXECUTION_TERMINAL",
                )
            cmd = CancelExecution.build(
                correlation_id=execution_id,
                tenant_id=row["user_id"],
                actor=caller.actor,
                execution_id=execution_id,
                reason=reason
                or ("cancelled by the admin" if caller.admin else "cancelled by user"),
                requested_by=caller.owner or caller.actor,
            )
            await self.commands.publish(topics.EXECUTION_COMMANDS, execution_id, cmd)
            outcome = await self._outcome(str(cmd.message_id), cmd.type)
            if isinstance(outcome, ExecutionCommandRejected):
                # it ended (completed or failed) before the cancel reached it
                raise Conflict(
                    f"execution {execution_id!r} cannot be cancelled: {outcome.data.reason}",
                    code="EXECUTION_TERMINAL",
                )
            if outcome is None:
                return {
                    "execution_id": execution_id,
                    "status": "cancelling",
                    "message": "cancellation requested; not applied yet",
                }
            return {
                "execution_id": execution_id,
                "status": "cancelled",
                "message": "execution cancelled",
                "reason": cmd.data.reason,
            }

        answer, _ = await self.idempotency.run(
            caller.owner or caller.actor,
            f"cancel:{execution_id}",
            idempotency_key,
            {"reason": reason},
            run,
        )
        return ExecutionAction.model_validate(answer)

    async def provide_input(
        self,
        caller: Principal,
        execution_id: str,
        data: dict[str, Any],
        node_id: str | None,
        idempotency_key: str | None,
    ) -> ExecutionAction:
        user_id = caller.user_id

        async def run(_op: str) -> dict[str, Any]:
            row = await self.own(caller, execution_id, Action.EXECUTION_INPUT)
            if row["status"] != "waiting_input":
                raise Conflict(
                    f"execution {execution_id!r} is {row['status']}, not waiting for input",
                    code="EXECUTION_NOT_WAITING",
                )
            cmd = ProvideInput.build(
                correlation_id=execution_id,
                tenant_id=user_id,
                actor=caller.actor,
                execution_id=execution_id,
                node_id=node_id,
                input=data,
                request_id=new_request_id(),
            )
            await self.commands.publish(topics.EXECUTION_COMMANDS, execution_id, cmd, what="input")
            outcome = await self._outcome(str(cmd.message_id), cmd.type)
            if isinstance(outcome, ExecutionCommandRejected):
                raise Conflict(
                    f"input refused: {outcome.data.reason}", code="EXECUTION_NOT_WAITING"
                )
            if not isinstance(outcome, InputReceived):
                return {
                    "execution_id": execution_id,
                    "status": "input_sent",
                    "message": "input sent; not applied yet",
                }
            now = await self.read.execution(execution_id)
            return {
                "execution_id": execution_id,
                "status": now["status"] if now is not None else "running",
                "node_id": outcome.data.node_id,
                "turn": outcome.data.turn,
                "message": "input accepted",
            }

        body = {"node_id": node_id, "input": data}
        answer, _ = await self.idempotency.run(
            user_id, f"input:{execution_id}", idempotency_key, body, run
        )
        return ExecutionAction.model_validate(answer)

    async def _outcome(self, message_id: str, kind: str) -> Any:
        """The first event a command caused, once the read model applied it (None: not in
        time)."""
        try:
            return await self.rw.event(self.projector, "execution_cmd", message_id)
        except TimeoutError:
            log.warning("command_outcome_slow", command=kind, message_id=message_id)
            return None

    # --- reads --------------------------------------------------------------------------------

    async def own(
        self, caller: Principal, execution_id: str, action: Action = Action.EXECUTION_READ
    ) -> ExecutionRow:
        """The execution as the read model shows it, if the policy lets ``caller`` do
        ``action`` on it (another tenant's is 404; the admin's view covers every tenant)."""
        row = await self.visible(caller.owner, execution_id)
        if row is None or check(caller.caller, action, row["user_id"]) is HIDDEN:
            raise NotFound(f"execution {execution_id!r} not found", code="EXECUTION_NOT_FOUND")
        return row

    async def visible(self, user_id: str | None, execution_id: str) -> ExecutionRow | None:
        """The read model's row, once it shows at least what this replica decoded; an
        execution accepted (by any replica) and not stored yet is waited for, and 503 if it
        stays invisible — never 404, since execute answers from the decoded start."""
        if not await self.rw.seen(self.projector, execution_id):
            log.warning("read_model_behind_stream", execution_id=execution_id)
        row = await self.read.execution(execution_id)
        if row is None and user_id and await self.store.accepted_by(execution_id) == user_id:
            with contextlib.suppress(TimeoutError):
                await self.rw.event(self.projector, "execution", execution_id)
            row = await self.read.execution(execution_id)
            if row is None:
                raise Unavailable(
                    f"execution {execution_id!r} was accepted and is not visible yet; retry",
                    extra={"execution_id": execution_id},
                )
        return row

    async def get(self, caller: Principal, execution_id: str) -> ExecutionView:
        """The execution with every node's detail and the graph of the flow it ran."""
        row = await self.own(caller, execution_id)
        rows, flow = await asyncio.gather(self.read.nodes(execution_id), self._ran(row))
        asked = {}
        if any(n["status"] == "waiting_input" for n in rows):
            asked = await self.read.questions(execution_id)
        usage = None
        if row["status"] in TERMINAL_STATUSES:
            usage = await self.read.execution_usage(execution_id)
        nodes = node_details(row["status"], row["input_data"], rows, flow, asked)
        graph = FlowGraph.of(row["flow_version"], flow) if flow is not None else None
        view = ExecutionView.detail(row, nodes, graph)
        view.usage = usage
        return view

    async def _ran(self, row: ExecutionRow) -> FlowDefinition | None:
        """The flow definition the execution ran (a version never changes: kept in memory)."""
        version = (row["flow_id"], row["flow_version"])
        if version in self._ran_flows:
            return self._ran_flows[version]
        found = await self.read.execution_flow(*version)
        if found is None:
            return None
        try:
            flow = FlowDefinition.model_validate(found)
        except ValidationError:
            log.warning("execution_flow_unreadable", flow_id=version[0], flow_version=version[1])
            return None
        if len(self._ran_flows) >= 1024:
            self._ran_flows.clear()
        self._ran_flows[version] = flow
        return flow

    async def list(
        self,
        caller: Principal,
        f: ExecutionFilter,
        *,
        cursor: str | None,
        limit: int,
        offset: int,
    ) -> ExecutionList:
        """The caller's executions (the admin: every tenant's, or ``f.user_id``'s), newest
        first, from after ``cursor``; a user naming another tenant sees none of theirs."""
        if not caller.admin:
            named = f.user_id
            if named is not None and check(caller.caller, Action.EXECUTION_READ, named) is HIDDEN:
                return ExecutionList(executions=[], total=0, limit=limit, offset=offset)
            f = replace(f, user_id=caller.owner)
        if cursor is not None and offset:
            raise InvalidInput("pass either cursor or offset (deprecated), not both")
        after = decode_cursor("e", cursor) if cursor is not None else None
        rows, total = await self.read.executions_page(
            f, after=after, limit=limit + 1, offset=offset
        )
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows else None
        next_cursor = None
        if more and last is not None and last["created_at"] is not None:
            next_cursor = encode_cursor("e", last["created_at"], last["execution_id"])
        return ExecutionList(
            executions=[ExecutionView.of(r) for r in rows],
            total=total,
            limit=limit,
            offset=offset,
            next_cursor=next_cursor,
        )

    async def events(self, caller: Principal, execution_id: str) -> EventList:
        await self.own(caller, execution_id)
        rows = await self.read.events(execution_id)
        return EventList(execution_id=execution_id, events=[EventView.of(e) for e in rows])

    async def results(self, caller: Principal, execution_id: str) -> Results:
        row = await self.own(caller, execution_id)
        rows, flow = await asyncio.gather(self.read.nodes(execution_id), self._ran(row))
        return Results.of(row, truthful_nodes(row["status"], rows, flow))

    async def messages(self, caller: Principal, execution_id: str) -> MessageList:
        await self.own(caller, execution_id)
        rows = await self.read.events(execution_id, types=("execution.node_dispatched",))
        return MessageList(execution_id=execution_id, messages=[MessageView.of(e) for e in rows])

    async def stream(
        self,
        caller: Principal,
        execution_id: str,
        last_event_id: int | None,
        idle_s: float,
        still_valid: Callable[[], Awaitable[bool]],
    ) -> AsyncIterator[dict[str, str]]:
        """:meth:`trail` as Server-Sent Events: ``id`` the sequence number, ``event`` the
        type, ``data`` the view; a revoked or expired key ends it with an ``error`` event.
        Agents' progress comes as ``execution.node_progress`` events without an ``id``, so
        ``Last-Event-ID`` only ever names a trail event."""
        views = await self.trail(caller, execution_id, last_event_id, idle_s, still_valid)

        async def gen() -> AsyncIterator[dict[str, str]]:
            async with contextlib.aclosing(views):  # a client gone unsubscribes the trail
                async for view in views:
                    if view is None:  # the key was revoked or expired: say so, then end
                        yield {"event": "error", "data": KEY_GONE}
                        return
                    yield sse_event(view)

        return gen()

    async def trail(
        self,
        caller: Principal,
        execution_id: str,
        after: int | None,
        idle_s: float,
        still_valid: Callable[[], Awaitable[bool]],
    ) -> AsyncGenerator[View | None, None]:
        """The trail after ``after`` (``None``: all of it), live, up to and including the
        terminal event — what the SSE stream and the WebSocket send. While it runs,
        agents' verified progress is slipped in between as ``{"type":
        "execution.node_progress", "data"}`` views without ``seq`` (:mod:`.progress`):
        live only, never stored, never replayed on a resume. A finished execution's
        is read from the store and ends at once when the client has the terminal event
        already, even past it (a late cancel adds a rejection after the terminal event, so
        the last ``seq`` is not the terminal one). ``None`` and the end within
        :data:`REVALIDATE_S` of the key being revoked or expiring. 404 (raised here, before
        anything is sent) for an execution the caller may not read."""
        row = await self.own(caller, execution_id)
        client_has = -1 if after is None else after
        if row["status"] in TERMINAL_STATUSES:  # all there will be is stored
            stored = await self.read.events(execution_id, after_seq=client_has)
            views = [EventView.of(e).model_dump() for e in stored]
            return while_valid(_until_terminal(views), still_valid)

        async def stored_after(seq: int) -> list[dict[str, Any]]:
            stored = await self.read.events(execution_id, after_seq=seq)
            return [EventView.of(e).model_dump() for e in stored]

        async def caught_up() -> None:
            await self.rw.seen(self.projector, execution_id)

        async def gen() -> AsyncIterator[View]:
            with self.live.subscribe(execution_id) as queue:  # before the first read: no gap
                # followed from a seq that exists: a client past the end still sees the
                # terminal event end the trail (and is sent nothing it claims to have)
                trail = follow_trail(
                    queue,
                    stored_after,
                    caught_up,
                    after=min(client_has, row["last_seq"]),
                    idle_s=idle_s,
                )
                async with contextlib.aclosing(trail):
                    async for view in trail:
                        if int(view["seq"]) > client_has:
                            yield view

        if self.progress is None:
            return while_valid(gen(), still_valid)
        hub = self.progress

        async def with_live_progress() -> AsyncIterator[View]:
            with hub.subscribe(execution_id) as extra:
                # nodes dispatched before this replica decoded anything of the execution
                running = {
                    n["node_id"]: NodeState(str(n["agent_id"]), n["attempt"])
                    for n in await self.read.nodes(execution_id)
                    if n["status"] == "running" and n["agent_id"]
                }
                hub.book.seed(execution_id, running)
                merged = interleave(gen(), extra)
                async with contextlib.aclosing(merged):
                    async for view in merged:
                        yield view

        return while_valid(with_live_progress(), still_valid)

    async def _flow_to_run(self, flow_id: str) -> tuple[FlowRow, FlowDefinition] | None:
        row = await self.read.flow(flow_id)
        if row is None:
            return None
        return row, FlowDefinition.model_validate(row["definition"])
