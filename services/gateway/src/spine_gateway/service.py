"""The gateway's rules: authentication, tenancy, credits via auth, read-your-writes.

Routes translate HTTP into calls here; this layer publishes commands, waits for replies and
for its own projections, and raises the typed errors of :mod:`.errors`. It never calls
another service over HTTP nor reads another service's tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import TopicPartition
from spine_contracts import (
    TERMINAL_STATUSES,
    AddCredits,
    AgentInfo,
    CancelExecution,
    CreateUser,
    DeregisterAgent,
    ExecutionCommandRejected,
    FlowDefined,
    FlowDefinition,
    FlowDeleted,
    GatewayReply,
    InputReceived,
    Message,
    ProvideInput,
    RegisterAgent,
    ReserveCredits,
    RotateKey,
    UsageRecorded,
    WithdrawReservation,
    topics,
)
from spine_contracts.topics import TopicSpec
from spine_flows import FlowValidationError, flow_version
from spine_servicekit.logging import get_logger
from spine_servicekit.projector import Projector

from .adapters.kafka import (
    ConsumerLag,
    Heartbeats,
    MetricsSummary,
    Publisher,
    Replies,
    UsageRecorder,
)
from .adapters.postgres import ReadModel, Row
from .adapters.redis import RedisStore
from .cache import ReadCache
from .errors import (
    Conflict,
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
    from_reply,
    replayed,
)
from .keys import generate_key, hash_key, same_secret
from .live import LiveTrail, await_started, event_view, follow_trail
from .projection import Marks
from .ratelimit import RateDecision
from .settings import GatewaySettings

log = get_logger(__name__)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (from the read model) or the master key."""

    user: Row | None = None
    master: bool = False

    @property
    def user_id(self) -> str:
        assert self.user is not None
        return str(self.user["user_id"])


@dataclass
class Projectors:
    users: Projector
    flows: Projector
    agents: Projector
    executions: Projector
    usage: Projector

    def all(self) -> list[Projector]:
        return [self.users, self.flows, self.agents, self.executions, self.usage]


@dataclass
class Caches:
    """What every request reads, kept until its projection commits a change (cache.py)."""

    users_by_key: ReadCache[str, Row] = field(default_factory=ReadCache)
    #: a flow's row with its parsed definition
    flows: ReadCache[str, tuple[Row, FlowDefinition]] = field(
        default_factory=lambda: ReadCache(limit=1_000)
    )


@dataclass
class Observers:
    """What the operations endpoints read besides the read model."""

    heartbeats: Heartbeats
    summary: MetricsSummary
    lag: ConsumerLag
    usage: UsageRecorder
    started: float = field(default_factory=time.time)


#: how long an accepted execution is remembered in Redis (reads of it wait, never 404)
ACCEPTED_TTL_S = 3600
#: an Idempotency-Key reserved by a request still running (value ``pending:<token>``)
_PENDING = "pending:"
_SLUG = re.compile(r"[^A-Za-z0-9_.\-]+")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Read a background future's outcome, so an error nobody awaited is not logged as lost."""
    if not future.cancelled():
        future.exception()


def _new_request_id() -> str:
    return uuid.uuid4().hex


class GatewayService:
    def __init__(
        self,
        settings: GatewaySettings,
        *,
        publisher: Publisher,
        replies: Replies,
        read: ReadModel,
        store: RedisStore,
        projectors: Projectors,
        marks: Marks,
        observers: Observers,
        live: LiveTrail | None = None,
        caches: Caches | None = None,
    ) -> None:
        self.settings = settings
        self.publisher = publisher
        self.replies = replies
        self.read = read
        self.store = store
        self.projectors = projectors
        self.marks = marks
        self.observers = observers
        #: the executions projector's tap (``app.py`` wires it); streams follow it
        self.live = live or LiveTrail()
        #: invalidated by the users and flows projectors (``app.py`` wires them)
        self.caches = caches or Caches()

    # --- authentication and limits ---------------------------------------------------------

    async def authenticate(self, token: str | None) -> Principal:
        if token is None:
            if not self.settings.auth_required:
                return Principal(user=await self._dev_user())
            raise Unauthorized(
                "missing API key: send Authorization: Bearer <key>", code="MISSING_API_KEY"
            )
        if same_secret(token, self.settings.api_key):
            return Principal(master=True)
        digest = hash_key(token)
        user = await self.caches.users_by_key.get(
            digest, lambda: self.read.user_by_key_hash(digest)
        )
        if user is None or not same_secret(digest, str(user["key_hash"])):
            raise Unauthorized("invalid API key", code="INVALID_API_KEY")
        return Principal(user=user)

    def require_master(self, principal: Principal) -> None:
        """Even with API_KEY_REQUIRED=false: the anonymous development user may run flows,
        never mint users or credits."""
        if principal.master:
            return
        raise Forbidden("this operation needs the master key", code="MASTER_KEY_REQUIRED")

    def require_user(self, principal: Principal) -> Row:
        if principal.user is None:
            raise Forbidden("this operation needs a user's API key", code="USER_KEY_REQUIRED")
        return principal.user

    async def check_rate(self, user: Row) -> RateDecision:
        decision = await self.store.hit(
            str(user["user_id"]), int(user["rate_limit"]), self.settings.rate_window_s
        )
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {decision.limit} requests per minute exceeded",
                headers=decision.headers(),
            )
        return decision

    async def _dev_user(self) -> Row:
        user = await self.read.user(self.settings.dev_user_id)
        if user is None:
            raise Unavailable("the development user is not ready yet", code="DEV_USER_NOT_READY")
        return user

    async def ensure_dev_user(self) -> None:
        """With API_KEY_REQUIRED=false, a built-in user answers anonymous requests."""
        await self.projectors.users.wait_until_caught_up()
        if await self.read.user(self.settings.dev_user_id) is not None:
            return
        uid = self.settings.dev_user_id
        request_id = _new_request_id()
        cmd = CreateUser.build(
            tenant_id=uid,
            user_id=uid,
            email=f"{uid}@localhost",
            name="Development user",
            credits=self.settings.dev_user_credits,
            rate_limit=1_000_000,
            key_hash=hash_key(generate_key()),
            request_id=request_id,
        )
        reply = await self._request(topics.AUTH_COMMANDS, uid, cmd, request_id)
        if reply.data.ok:
            await self._wait_mark(self.projectors.users, "user", uid)
        log.info("dev_user_ready", user_id=uid, ok=reply.data.ok)

    # --- plumbing --------------------------------------------------------------------------

    async def _request(
        self,
        spec: TopicSpec,
        key: str,
        message: Message,
        request_id: str,
        what: str | None = None,
    ) -> GatewayReply:
        """Publish a command with this replica as reply-to and wait for its answer."""
        fut = self.replies.expect(request_id)
        try:
            await self.publisher.publish(
                spec, key, message, reply_to=self.replies.replica_id, what=what
            )
            async with asyncio.timeout(self.settings.reply_timeout_s):
                return await fut
        finally:
            self.replies.forget(request_id)

    async def _ask(self, spec: TopicSpec, key: str, message: Message, request_id: str) -> Row:
        try:
            reply = await self._request(spec, key, message, request_id)
        except TimeoutError as exc:
            raise Unavailable("no answer from the auth service in time") from exc
        if not reply.data.ok:
            raise from_reply(reply.data.error_code, reply.data.message)
        return dict(reply.data.body)

    async def _wait_mark(
        self, projector: Projector, kind: str, key: str, wait_s: float | None = None
    ) -> None:
        def reached(applied: Mapping[TopicPartition, int]) -> bool:
            mark = self.marks.get(kind, key)
            return mark is not None and applied.get(mark[0], -1) >= mark[1]

        async with asyncio.timeout(wait_s or self.settings.projection_timeout_s):
            await projector.wait_for(reached)

    async def _wait_offset(self, projector: Projector, tp: TopicPartition, nxt: int) -> None:
        async with asyncio.timeout(self.settings.projection_timeout_s):
            await projector.wait_for_offsets({tp: nxt})

    async def _caught_up(self, projector: Projector) -> None:
        async with asyncio.timeout(self.settings.projection_timeout_s):
            await projector.wait_until_caught_up()

    # --- executions ------------------------------------------------------------------------

    async def execute(
        self,
        user: Row,
        flow_id: str,
        input_data: dict[str, Any],
        metadata: dict[str, Any],
        idempotency_key: str | None,
    ) -> tuple[dict[str, Any], int]:
        """The accepted execution, and the credits this request reserved (0 for a replay)."""
        user_id = str(user["user_id"])
        found = await self.caches.flows.get(flow_id, lambda: self._flow_to_run(flow_id))
        if found is None:
            raise NotFound(f"flow {flow_id!r} not found", code="FLOW_NOT_FOUND")
        flow_row, flow = found
        execution_id = str(uuid.uuid4())
        if idempotency_key:
            execution_id = await self.store.claim_idempotency(
                user_id, idempotency_key, execution_id, self.settings.idempotency_ttl_s
            )
            existing = await self._visible_execution(user_id, execution_id)
            if existing is not None:
                return self._accepted(existing), 0
        request_id = _new_request_id()
        cmd = ReserveCredits.build(
            correlation_id=execution_id,
            tenant_id=user_id,
            user_id=user_id,
            execution_id=execution_id,
            amount=flow.cost,
            flow=flow,
            flow_version=str(flow_row["flow_version"]),
            input_data=input_data,
            metadata=metadata,
            request_id=request_id,
        )
        # Subscribed before the command goes: the start cannot be decoded unseen.
        with self.live.subscribe(execution_id) as trail:
            try:
                reply = await self._request(
                    topics.AUTH_COMMANDS,
                    user_id,
                    cmd,
                    request_id,
                    what="input_data (with the flow)",
                )
            except TimeoutError as exc:
                # Never charge and then answer 5xx: take the reservation back first.
                withdraw = WithdrawReservation.build(
                    cause=cmd, user_id=user_id, execution_id=execution_id
                )
                await self.publisher.publish(topics.AUTH_COMMANDS, user_id, withdraw)
                log.warning("execute_reply_timeout", execution_id=execution_id)
                raise Unavailable(
                    "the credit reservation was not confirmed in time; nothing was charged",
                    extra={"execution_id": execution_id},
                ) from exc
            if not reply.data.ok:
                raise from_reply(reply.data.error_code, reply.data.message)
            # Answered from the decoded start, not the read model: a read on this replica
            # first waits until its read model holds what was decoded (own_execution), and
            # the mark makes any other replica wait for its own, never answer 404.
            # The users projection applies the reservation meanwhile: GET /users/me after the
            # answer shows the balance it left.
            marked = asyncio.ensure_future(
                self.store.mark_accepted(execution_id, user_id, ACCEPTED_TTL_S)
            )
            reserved = asyncio.ensure_future(
                self._wait_mark(self.projectors.users, "reserved", execution_id)
            )
            try:
                try:
                    async with asyncio.timeout(self.settings.projection_timeout_s):
                        status, created_at = await await_started(trail)
                except TimeoutError:
                    log.warning("execute_start_slow", execution_id=execution_id)
                    status, created_at = "pending", datetime.now(UTC)
                await marked
                with contextlib.suppress(TimeoutError):
                    await reserved
            finally:  # a client gone meanwhile leaves no wait behind, nor an unread error
                reserved.cancel()
                marked.add_done_callback(_retrieve)
                reserved.add_done_callback(_retrieve)
        accepted = {"execution_id": execution_id, "status": status, "created_at": _iso(created_at)}
        return accepted, flow.cost

    async def _flow_to_run(self, flow_id: str) -> tuple[Row, FlowDefinition] | None:
        row = await self.read.flow(flow_id)
        if row is None:
            return None
        return row, FlowDefinition.model_validate(row["definition"])

    @staticmethod
    def _accepted(row: Row) -> dict[str, Any]:
        return {
            "execution_id": row["execution_id"],
            "status": row["status"],
            "created_at": _iso(row["created_at"]),
        }

    async def own_execution(self, user: Row, execution_id: str) -> Row:
        row = await self._visible_execution(str(user["user_id"]), execution_id)
        if row is None:
            raise NotFound(f"execution {execution_id!r} not found", code="EXECUTION_NOT_FOUND")
        return row

    async def _visible_execution(self, user_id: str, execution_id: str) -> Row | None:
        """The user's execution as the read model shows it, once it shows at least what this
        replica decoded; an accepted one not stored yet is waited for (503 if it stays
        invisible), because execute answers from the decoded start."""
        await self._seen_stored(execution_id)
        row = await self.read.execution(execution_id)
        if row is None and await self.store.accepted_by(execution_id) == user_id:
            row = await self._accepted_row(execution_id)
        return row if row is not None and str(row["user_id"]) == user_id else None

    async def _seen_stored(self, execution_id: str) -> None:
        """Wait until the read model holds every event of the execution this replica has
        decoded: a read after a stream's event shows at least that event."""
        projector = self.projectors.executions
        mark = self.live.pending(execution_id, projector.applied_offsets())
        if mark is None:
            return
        try:
            await self._wait_offset(projector, *mark)
        except TimeoutError:
            log.warning("read_model_behind_stream", execution_id=execution_id)

    async def _accepted_row(self, execution_id: str) -> Row:
        """An accepted execution this replica's read model does not show yet: wait for its
        start to be stored, then say 503 (retry), never 404."""
        try:
            await self._wait_mark(self.projectors.executions, "execution", execution_id)
        except TimeoutError:
            pass
        row = await self.read.execution(execution_id)
        if row is None:
            raise Unavailable(
                f"execution {execution_id!r} was accepted and is not visible yet; retry",
                extra={"execution_id": execution_id},
            )
        return row

    async def execution(self, user: Row, execution_id: str) -> dict[str, Any]:
        row = await self.own_execution(user, execution_id)
        nodes = await self.read.nodes(execution_id)
        return self._execution_view(row, nodes)

    @staticmethod
    def _node_view(n: Row) -> dict[str, Any]:
        return {
            "node_id": n["node_id"],
            "status": n["status"],
            "agent_id": n["agent_id"],
            "attempt": n["attempt"],
            "output": n["output"],
            "error_message": n["error_message"],
            "started_at": _iso(n["started_at"]),
            "completed_at": _iso(n["completed_at"]),
        }

    def _execution_view(self, row: Row, nodes: list[Row] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "execution_id": row["execution_id"],
            "flow_id": row["flow_id"],
            "flow_version": row["flow_version"],
            "status": row["status"],
            "input_data": row["input_data"],
            "output_data": row["output_data"],
            "error_message": row["error_message"],
            "metadata": row["metadata"],
            "created_at": _iso(row["created_at"]),
            "updated_at": _iso(row["updated_at"]),
            "completed_at": _iso(row["completed_at"]),
        }
        if nodes is not None:
            out["nodes"] = {n["node_id"]: self._node_view(n) for n in nodes}
        return out

    async def executions(
        self, user: Row, *, status: str | None, flow_id: str | None, limit: int, offset: int
    ) -> dict[str, Any]:
        rows, total = await self.read.executions(
            str(user["user_id"]), status=status, flow_id=flow_id, limit=limit, offset=offset
        )
        return {
            "executions": [self._execution_view(r) for r in rows],
            "total": total,
            "limit": limit,
            "offset": offset,
        }

    async def _idempotent(
        self,
        user: Row,
        key: str | None,
        scope: str,
        run: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """Run once per (user, scope, Idempotency-Key); every repeat gets the first answer.

        The first request reserves the key in Redis (SET NX) before it acts; a concurrent
        duplicate waits for that answer instead of acting too. Answers below 500 are kept
        (a 409 is an answer); a 5xx or a crash releases the key so a retry can act.
        """
        if not key:
            return await run()
        uid = str(user["user_id"])
        name = f"{scope}:{key}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._idempotency_wait_s
        delay = 0.01
        while True:
            token = _PENDING + uuid.uuid4().hex
            if await self.store.reserve_idempotent(
                uid, name, token, int(self._idempotency_wait_s) + 30
            ):
                return await self._first_answer(uid, name, token, run)
            stored = await self.store.get_idempotent(uid, name)
            if stored is None:
                continue  # the first request gave up (5xx) meanwhile: this one acts
            if not stored.startswith(_PENDING):
                return self._replay(stored)
            if loop.time() > deadline:
                raise Conflict(
                    "a request with this Idempotency-Key is still in progress",
                    code="IDEMPOTENCY_KEY_IN_USE",
                )
            await asyncio.sleep(delay)  # Redis has no "key changed" wait for one key
            delay = min(delay * 2, 0.2)

    @property
    def _idempotency_wait_s(self) -> float:
        return self.settings.reply_timeout_s + self.settings.projection_timeout_s + 5

    async def _first_answer(
        self, uid: str, name: str, token: str, run: Callable[[], Awaitable[dict[str, Any]]]
    ) -> dict[str, Any]:
        ttl = self.settings.idempotency_ttl_s
        try:
            result = await run()
        except GatewayError as exc:
            if exc.status < 500 and exc.status != 429:
                answer = {
                    "status": exc.status,
                    "code": exc.code,
                    "message": exc.message,
                    "extra": exc.extra,
                }
                await self.store.put_idempotent(uid, name, orjson.dumps(answer).decode(), ttl)
            else:
                await self.store.release_idempotent(uid, name, token)
            raise
        except BaseException:
            await self.store.release_idempotent(uid, name, token)
            raise
        answer = {"status": 200, "body": result}
        await self.store.put_idempotent(uid, name, orjson.dumps(answer).decode(), ttl)
        return result

    @staticmethod
    def _replay(stored: str) -> dict[str, Any]:
        answer = orjson.loads(stored)
        if answer.get("status") == 200:
            body: dict[str, Any] = answer["body"]
            return body
        raise replayed(
            int(answer["status"]), str(answer["code"]), str(answer["message"]), answer["extra"]
        )

    async def _outcome(self, command: Message) -> Message | None:
        """The first event ``command`` caused, once the read model applied it (None: not in
        time)."""
        key = str(command.message_id)
        try:
            await self._wait_mark(self.projectors.executions, "execution_cmd", key)
        except TimeoutError:
            log.warning("command_outcome_slow", command=command.type, message_id=key)
            return None
        return self.marks.message("execution_cmd", key)

    async def cancel(
        self, user: Row, execution_id: str, reason: str | None, idempotency_key: str | None
    ) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            row = await self.own_execution(user, execution_id)
            if row["status"] in TERMINAL_STATUSES:
                raise Conflict(
                    f"execution {execution_id!r} is already {row['status']}",
                    code="EXECUTION_TERMINAL",
                )
            cmd = CancelExecution.build(
                correlation_id=execution_id,
                tenant_id=str(user["user_id"]),
                execution_id=execution_id,
                reason=reason or "cancelled by user",
                requested_by=str(user["user_id"]),
            )
            await self.publisher.publish(topics.EXECUTION_COMMANDS, execution_id, cmd)
            outcome = await self._outcome(cmd)
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

        return await self._idempotent(user, idempotency_key, f"cancel:{execution_id}", run)

    async def provide_input(
        self,
        user: Row,
        execution_id: str,
        data: dict[str, Any],
        node_id: str | None,
        idempotency_key: str | None,
    ) -> dict[str, Any]:
        async def run() -> dict[str, Any]:
            row = await self.own_execution(user, execution_id)
            if row["status"] != "waiting_input":
                raise Conflict(
                    f"execution {execution_id!r} is {row['status']}, not waiting for input",
                    code="EXECUTION_NOT_WAITING",
                )
            cmd = ProvideInput.build(
                correlation_id=execution_id,
                tenant_id=str(user["user_id"]),
                execution_id=execution_id,
                node_id=node_id,
                input=data,
                request_id=_new_request_id(),
            )
            await self.publisher.publish(topics.EXECUTION_COMMANDS, execution_id, cmd, what="input")
            outcome = await self._outcome(cmd)
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

        return await self._idempotent(user, idempotency_key, f"input:{execution_id}", run)

    @staticmethod
    def _event_view(e: Row) -> dict[str, Any]:
        return event_view(e["seq"], e["type"], e["data"], e["occurred_at"])

    async def events(self, user: Row, execution_id: str) -> dict[str, Any]:
        await self.own_execution(user, execution_id)
        events = await self.read.events(execution_id)
        return {"execution_id": execution_id, "events": [self._event_view(e) for e in events]}

    async def results(self, user: Row, execution_id: str) -> dict[str, Any]:
        row = await self.own_execution(user, execution_id)
        nodes = await self.read.nodes(execution_id)
        return {
            "execution_id": execution_id,
            "status": row["status"],
            "output_data": row["output_data"],
            "error_message": row["error_message"],
            "nodes": {
                n["node_id"]: {
                    "status": n["status"],
                    "agent_id": n["agent_id"],
                    "output": n["output"],
                    "error_message": n["error_message"],
                }
                for n in nodes
            },
        }

    async def messages(self, user: Row, execution_id: str) -> dict[str, Any]:
        await self.own_execution(user, execution_id)
        events = await self.read.events(execution_id, types=("execution.node_dispatched",))
        return {
            "execution_id": execution_id,
            "messages": [
                {
                    "seq": e["seq"],
                    "node_id": e["data"]["node_id"],
                    "agent_id": e["data"]["agent_id"],
                    "task_id": e["data"]["task_id"],
                    "attempt": e["data"]["attempt"],
                    "payload": e["data"]["payload"],
                    "sent_at": _iso(e["occurred_at"]),
                }
                for e in events
            ],
        }

    async def stream(
        self, user: Row, execution_id: str, last_event_id: int | None
    ) -> AsyncIterator[dict[str, str]]:
        """The trail from after ``last_event_id``, live, until the terminal event."""
        await self.own_execution(user, execution_id)

        async def stored_after(seq: int) -> list[dict[str, Any]]:
            stored = await self.read.events(execution_id, after_seq=seq)
            return [self._event_view(e) for e in stored]

        async def gen() -> AsyncIterator[dict[str, str]]:
            with self.live.subscribe(execution_id) as queue:  # before the first read: no gap
                async for view in follow_trail(
                    queue,
                    stored_after,
                    lambda: self._seen_stored(execution_id),
                    after=-1 if last_event_id is None else last_event_id,
                    idle_s=self.settings.sse_keepalive_s,
                ):
                    yield {
                        "id": str(view["seq"]),
                        "event": str(view["type"]),
                        "data": orjson.dumps(view).decode(),
                    }

        return gen()

    # --- users -----------------------------------------------------------------------------

    @staticmethod
    def user_view(u: Row) -> dict[str, Any]:
        return {
            "user_id": u["user_id"],
            "email": u["email"],
            "name": u["name"],
            "organization": u["organization"],
            "credits": u["balance"],
            "balance": u["balance"],
            "rate_limit": u["rate_limit"],
            "created_at": _iso(u["created_at"]),
            "updated_at": _iso(u["updated_at"]),
        }

    async def me(self, user: Row) -> dict[str, Any]:
        """The caller's account and usage (from the projection of ``spine.usage``; the
        requests of the last moments may not be counted yet)."""
        u = await self.read.usage(str(user["user_id"]))
        last = u["last_request_at"]
        usage = {
            "requests_total": int(u["requests"] or 0),
            "requests_last_24h": int(u["requests_24h"]),
            "errors_last_24h": int(u["errors_24h"]),
            "credits_used_total": int(u["credits"] or 0),
            "credits_used_last_24h": int(u["credits_24h"]),
            "last_request_at": _iso(last),
        }
        # the principal's row may come from the key cache, whose balance is not kept fresh
        current = await self.read.user(str(user["user_id"])) or user
        return {**self.user_view(current), "usage": usage}

    def record_usage(
        self,
        user_id: str,
        *,
        method: str,
        path: str,
        status_code: int,
        duration_ms: float,
        credits: int,
    ) -> None:
        """One ``UsageRecorded`` per authenticated request; never waits for Kafka."""
        self.observers.usage.record(
            UsageRecorded.build(
                tenant_id=user_id,
                user_id=user_id,
                request_id=_new_request_id(),
                method=method,
                path=path[:500],
                status_code=status_code,
                duration_ms=round(duration_ms, 3),
                credits=credits,
            )
        )

    async def create_user(
        self,
        *,
        email: str,
        name: str,
        organization: str,
        credits: int,
        rate_limit: int,
        user_id: str | None,
    ) -> dict[str, Any]:
        if await self.read.user_by_email(email) is not None:
            raise Conflict(f"a user with e-mail {email!r} exists", code="USER_EXISTS")
        uid = user_id or f"user_{uuid.uuid4().hex[:16]}"
        key = generate_key()
        request_id = _new_request_id()
        cmd = CreateUser.build(
            tenant_id=uid,
            user_id=uid,
            email=email,
            name=name,
            organization=organization,
            credits=credits,
            rate_limit=rate_limit,
            key_hash=hash_key(key),
            request_id=request_id,
        )
        await self._ask(topics.AUTH_COMMANDS, uid, cmd, request_id)
        await self._wait_mark(self.projectors.users, "user", uid)
        user = await self.read.user(uid)
        assert user is not None
        return {**self.user_view(user), "api_key": key}

    async def rotate_key(self, user: Row) -> dict[str, Any]:
        uid = str(user["user_id"])
        key = generate_key()
        request_id = _new_request_id()
        cmd = RotateKey.build(
            tenant_id=uid, user_id=uid, key_hash=hash_key(key), request_id=request_id
        )
        try:
            await self._ask(topics.AUTH_COMMANDS, uid, cmd, request_id)
        except Unavailable as exc:
            # Auth may still apply the rotation when it comes back, but the caller never saw
            # the new key: queue the current hash right behind it (same partition, so in
            # order), and the key the caller holds keeps working either way.
            undo = RotateKey.build(
                cause=cmd,
                tenant_id=uid,
                user_id=uid,
                key_hash=str(user["key_hash"]),
                request_id=_new_request_id(),
            )
            await self.publisher.publish(topics.AUTH_COMMANDS, uid, undo)
            raise Unavailable(
                "the key rotation was not confirmed in time; your current key stays valid"
            ) from exc
        await self._caught_up(self.projectors.users)  # auth commits the event before replying
        return {
            "user_id": uid,
            "api_key": key,
            "message": "the previous key no longer works; store this one, it is shown once",
        }

    async def add_credits(self, user_id: str, credits: int) -> dict[str, Any]:
        if credits <= 0:
            raise InvalidInput("credits must be a positive integer")
        if await self.read.user(user_id) is None:
            raise NotFound(f"user {user_id!r} not found", code="USER_NOT_FOUND")
        request_id = _new_request_id()
        cmd = AddCredits.build(
            tenant_id=user_id, user_id=user_id, credits=credits, request_id=request_id
        )
        await self._ask(topics.AUTH_COMMANDS, user_id, cmd, request_id)
        await self._caught_up(self.projectors.users)
        user = await self.read.user(user_id)
        assert user is not None
        return {**self.user_view(user), "credits_added": credits}

    async def get_user(self, user_id: str) -> dict[str, Any]:
        user = await self.read.user(user_id)
        if user is None:
            raise NotFound(f"user {user_id!r} not found", code="USER_NOT_FOUND")
        return self.user_view(user)

    # --- flows -----------------------------------------------------------------------------

    @staticmethod
    def flow_view(f: Row) -> dict[str, Any]:
        d = f["definition"]
        return {
            "flow_id": f["flow_id"],
            "name": d.get("name", ""),
            "description": d.get("description", ""),
            "version": d.get("version", ""),
            "flow_version": f["flow_version"],
            "cost": d.get("cost", 1),
            "source": f["source"],
            "nodes": d.get("nodes", []),
            "definition": d,
            "updated_at": _iso(f["updated_at"]),
        }

    async def flows(self) -> dict[str, Any]:
        return {"flows": [self.flow_view(f) for f in await self.read.flows()]}

    async def flow(self, flow_id: str) -> dict[str, Any]:
        row = await self.read.flow(flow_id)
        if row is None:
            raise NotFound(f"flow {flow_id!r} not found", code="FLOW_NOT_FOUND")
        return self.flow_view(row)

    async def define_flow(self, defn: FlowDefinition) -> dict[str, Any]:
        current = await self.read.flow(defn.flow_id)
        replaced = current["source"] if current is not None else None
        event = FlowDefined.build(
            flow_id=defn.flow_id,
            flow_version=flow_version(defn),
            definition=defn,
            source="api",
            replaced_source=replaced,
        )
        tp, nxt = await self.publisher.publish(
            topics.FLOWS, defn.flow_id, event, what="flow definition"
        )
        await self._wait_offset(self.projectors.flows, tp, nxt)
        return {
            **await self.flow(defn.flow_id),
            "created": current is None,
            "replaced_source": replaced,
        }

    async def delete_flow(self, flow_id: str) -> dict[str, Any]:
        if await self.read.flow(flow_id) is None:
            raise NotFound(f"flow {flow_id!r} not found", code="FLOW_NOT_FOUND")
        tp, nxt = await self.publisher.publish(
            topics.FLOWS, flow_id, FlowDeleted.build(flow_id=flow_id, source="api")
        )
        await self._wait_offset(self.projectors.flows, tp, nxt)
        return {"flow_id": flow_id, "deleted": True}

    @staticmethod
    def invalid_flow(exc: FlowValidationError) -> InvalidInput:
        problems = [str(p) for p in exc.problems]
        return InvalidInput(
            "invalid flow: " + "; ".join(problems),
            code="INVALID_FLOW",
            extra={"problems": problems},
        )

    # --- agents ----------------------------------------------------------------------------

    @staticmethod
    def agent_view(a: Row) -> dict[str, Any]:
        info = a["info"]
        return {
            **info,
            # the original SDK's Agent model reads ``type`` and ``configuration``
            "type": info.get("agent_type", "processor"),
            "configuration": info.get("metadata", {}).get("configuration", {}),
            "status": "active" if a["active"] else "inactive",
            "active": a["active"],
            "last_seen": _iso(a["last_seen"]),
        }

    @staticmethod
    def agent_id_for(name: str) -> str:
        """An agent id from a name, for clients that send only ``{name, type, ...}``."""
        slug = _SLUG.sub("-", name.strip().lower()).strip("-.")[:100]
        if not slug:
            raise InvalidInput("agent_id (or a name to derive it from) is required")
        return slug

    async def agents(self, *, active_only: bool = False) -> dict[str, Any]:
        rows = await self.read.agents(active_only=active_only)
        return {"agents": [self.agent_view(a) for a in rows]}

    async def agent(self, agent_id: str) -> dict[str, Any]:
        row = await self.read.agent(agent_id)
        if row is None:
            raise NotFound(f"agent {agent_id!r} not found", code="AGENT_NOT_FOUND")
        return self.agent_view(row)

    async def register_agent(self, info: AgentInfo) -> tuple[dict[str, Any], bool]:
        """Register (or update); ``True`` when the catalogue shows it already."""
        cmd = RegisterAgent.build(agent=info, request_id=_new_request_id())
        await self.publisher.publish(topics.REGISTRY_COMMANDS, info.agent_id, cmd)
        try:
            await self._wait_mark(self.projectors.agents, "agent_cmd", str(cmd.message_id), 5.0)
        except TimeoutError:
            pending = info.model_dump(mode="json")
            pending.update(
                type=info.agent_type,
                configuration=info.metadata.get("configuration", {}),
                status="registering",
            )
            return pending, False
        return await self.agent(info.agent_id), True

    async def deregister_agent(self, agent_id: str) -> dict[str, Any]:
        await self.agent(agent_id)
        cmd = DeregisterAgent.build(agent_id=agent_id, request_id=_new_request_id())
        await self.publisher.publish(topics.REGISTRY_COMMANDS, agent_id, cmd)
        try:
            await self._wait_mark(self.projectors.agents, "agent_cmd", str(cmd.message_id), 5.0)
        except TimeoutError:
            return {"agent_id": agent_id, "status": "deregistering"}
        return {"agent_id": agent_id, "status": "deregistered"}

    # --- operations ------------------------------------------------------------------------

    def services(self) -> list[dict[str, Any]]:
        now = time.time()
        # an instance is alive while its beats keep coming (three intervals of slack)
        stale_after = 3 * self.settings.heartbeat_interval_s
        out = []
        for instance, (beat, at) in sorted(self.observers.heartbeats.last.items()):
            age = now - at.timestamp()
            out.append(
                {
                    "service": beat.data.service,
                    "instance_id": instance,
                    "status": beat.data.status,
                    "alive": beat.data.status != "stopping" and age <= stale_after,
                    "last_heartbeat": at.isoformat(),
                    "age_s": round(age, 3),
                    "details": beat.data.details,
                }
            )
        return out

    async def consumer_groups(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(5.0):
                return await self.observers.lag.groups()
        except TimeoutError:  # the measurement goes on; a later /status shows it
            return {"error": "TimeoutError"}

    async def metrics_summary(self) -> dict[str, Any]:
        """The operators' summary from ``spine.metrics.summary`` (the metrics service's
        aggregates), plus the catalogue sizes and the in-flight count of this read model."""
        summary = self.observers.summary
        counts = await self.read.status_counts()
        flows = len(await self.read.flows())
        agents = await self.read.agents()
        total = summary.value("executions_total")
        return {
            "timestamp": datetime.now(UTC).isoformat(),
            "executions_total": int(total) if total is not None else sum(counts.values()),
            "executions_active": sum(
                counts.get(s, 0) for s in ("pending", "running", "waiting_input")
            ),
            "flows_total": flows,
            "agents_total": len(agents),
            "agents_active": sum(1 for a in agents if a["active"]),
            "success_rate": summary.value("success_rate"),
            "failure_rate": summary.value("failure_rate"),
            "average_execution_ms": summary.value("average_execution_ms"),
            "credits_spent": summary.value("credits_spent"),
            "summary": {name: entry["value"] for name, entry in sorted(summary.values.items())},
            "summary_updated_at": max(
                (e["updated_at"] for e in summary.values.values()), default=None
            ),
            "executions": {"total": sum(counts.values()), "by_status": counts},
        }
