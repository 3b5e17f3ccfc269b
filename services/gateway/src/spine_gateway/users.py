"""Users and their keys: created and credited by the master key through auth (the single
writer per user); a key is shown once and only its hash travels or is stored."""

from __future__ import annotations

import contextlib
import uuid

from spine_contracts import AddCredits, CreateUser, RotateKey, SetLimits, UsageRecorded, topics
from spine_contracts.access import primary_key_id
from spine_servicekit.logging import get_logger
from spine_servicekit.projector import Projector

from .adapters.kafka import UsageRecorder
from .adapters.postgres import ReadModel, UserRow
from .commands import Commands, new_request_id
from .errors import Conflict, InvalidInput, NotFound, Unavailable
from .identity import Principal
from .keys import generate_key, hash_key
from .listing import decode_cursor, encode_cursor
from .models import CreditsAddedView, Me, NewKeyView, NewUserView, Usage, UserList, UserView
from .policy import HIDDEN, Action, check
from .visibility import ReadYourWrites

log = get_logger(__name__)


class UsersService:
    def __init__(
        self,
        *,
        commands: Commands,
        read: ReadModel,
        rw: ReadYourWrites,
        users: Projector,
        usage: UsageRecorder,
    ) -> None:
        self.commands = commands
        self.read = read
        self.rw = rw
        self.projector = users
        self.usage = usage

    async def me(self, user: UserRow) -> Me:
        """The caller's account and usage (from the projection of ``spine.usage``; the
        requests of the last moments may not be counted yet)."""
        # every credit movement committed before this request shows (an execute answered a
        # moment ago on any replica included); a projection too far behind shows what it has
        with contextlib.suppress(TimeoutError):
            await self.rw.caught_up(self.projector)
        usage = await self.read.usage(user["user_id"])
        # the principal's row may come from the key cache, whose balance is not kept fresh
        current = await self.read.user(user["user_id"]) or user
        return Me(**UserView.fields_of(current), usage=Usage.of(usage))

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
        self.usage.record(
            UsageRecorded.build(
                tenant_id=user_id,
                user_id=user_id,
                request_id=new_request_id(),
                method=method,
                path=path[:500],
                status_code=status_code,
                duration_ms=round(duration_ms, 3),
                credits=credits,
            )
        )

    async def create(
        self,
        *,
        email: str,
        name: str,
        organization: str,
        credits: int,
        rate_limit: int,
        user_id: str | None,
        actor: str,
        max_in_flight: int | None = None,
        max_queued: int | None = None,
    ) -> NewUserView:
        if await self.read.user_by_email(email) is not None:
            raise Conflict(f"a user with e-mail {email!r} exists", code="USER_EXISTS")
        uid = user_id or f"user_{uuid.uuid4().hex[:16]}"
        key = generate_key()
        request_id = new_request_id()
        cmd = CreateUser.build(
            actor=actor,
            tenant_id=uid,
            user_id=uid,
            email=email,
            name=name,
            organization=organization,
            credits=credits,
            rate_limit=rate_limit,
            key_hash=hash_key(key),
            last4=key[-4:],
            max_in_flight=max_in_flight,
            max_queued=max_queued,
            request_id=request_id,
        )
        await self.commands.ask(topics.AUTH_COMMANDS, uid, cmd, request_id)
        await self.rw.event(self.projector, "user", uid)
        user = await self.read.user(uid)
        assert user is not None
        return NewUserView(**UserView.fields_of(user), api_key=key)

    async def rotate_key(self, caller: Principal) -> NewKeyView:
        """A new secret for the key that called (the development user's: its primary key)."""
        user = caller.user
        assert user is not None
        uid = user["user_id"]
        key_id = caller.key_id if caller.digest is not None else None
        current_hash = caller.digest or user["key_hash"]
        key = generate_key()
        request_id = new_request_id()
        cmd = RotateKey.build(
            actor=caller.actor,
            tenant_id=uid,
            user_id=uid,
            key_id=key_id,
            key_hash=hash_key(key),
            last4=key[-4:],
            request_id=request_id,
        )
        try:
            await self.commands.ask(topics.AUTH_COMMANDS, uid, cmd, request_id)
        except Unavailable as exc:
            # Auth may still apply the rotation when it comes back, but the caller never saw
            # the new key: queue the current hash right behind it (same partition, so in
            # order), and the key the caller holds keeps working either way.
            undo = RotateKey.build(
                cause=cmd,
                tenant_id=uid,
                user_id=uid,
                key_id=key_id,
                key_hash=current_hash,
                request_id=new_request_id(),
            )
            await self.commands.publish(topics.AUTH_COMMANDS, uid, undo)
            raise Unavailable(
                "the key rotation was not confirmed in time; your current key stays valid"
            ) from exc
        await self.rw.caught_up(self.projector)  # auth commits the event before replying
        return NewKeyView(
            user_id=uid,
            api_key=key,
            key_id=key_id or primary_key_id(uid),
            message="the previous key no longer works; store this one, it is shown once",
        )

    async def add_credits(self, user_id: str, credits: int, actor: str) -> CreditsAddedView:
        if credits <= 0:
            raise InvalidInput("credits must be a positive integer")
        if await self.read.user(user_id) is None:
            raise NotFound(f"user {user_id!r} not found", code="USER_NOT_FOUND")
        request_id = new_request_id()
        cmd = AddCredits.build(
            actor=actor, tenant_id=user_id, user_id=user_id, credits=credits, request_id=request_id
        )
        await self.commands.ask(topics.AUTH_COMMANDS, user_id, cmd, request_id)
        await self.rw.caught_up(self.projector)
        user = await self.read.user(user_id)
        assert user is not None
        return CreditsAddedView(**UserView.fields_of(user), credits_added=credits)

    async def set_limits(
        self, user_id: str, max_in_flight: int | None, max_queued: int | None, actor: str
    ) -> UserView:
        """The admin changes a user's limits (auth applies them: a higher ``max_in_flight``
        releases queued executions at once)."""
        if await self.read.user(user_id) is None:
            raise NotFound(f"user {user_id!r} not found", code="USER_NOT_FOUND")
        request_id = new_request_id()
        cmd = SetLimits.build(
            actor=actor,
            tenant_id=user_id,
            user_id=user_id,
            max_in_flight=max_in_flight,
            max_queued=max_queued,
            request_id=request_id,
        )
        await self.commands.ask(topics.AUTH_COMMANDS, user_id, cmd, request_id)
        await self.rw.caught_up(self.projector)
        return await self.get(user_id)

    async def list(self, *, cursor: str | None, limit: int) -> UserList:
        """Every user, newest first (``created_at``, then ``user_id``, descending)."""
        after = decode_cursor("u", cursor) if cursor is not None else None
        rows, total = await self.read.users_page(after=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if rows else None
        next_cursor = None
        if more and last is not None:
            next_cursor = encode_cursor("u", last["created_at"], last["user_id"])
        return UserList(
            users=[UserView.of(u) for u in rows], total=total, limit=limit, next_cursor=next_cursor
        )

    async def get(self, user_id: str) -> UserView:
        user = await self.read.user(user_id)
        if user is None:
            raise NotFound(f"user {user_id!r} not found", code="USER_NOT_FOUND")
        return UserView.of(user)

    async def ensure_dev_user(self, dev_user_id: str, credits: int) -> None:
        """With API_KEY_REQUIRED=false, a built-in user answers anonymous requests."""
        await self.projector.wait_until_caught_up()
        if await self.read.user(dev_user_id) is not None:
            return
        request_id = new_request_id()
        cmd = CreateUser.build(
            tenant_id=dev_user_id,
            user_id=dev_user_id,
            email=f"{dev_user_id}@localhost",
            name="Development user",
            credits=credits,
            rate_limit=1_000_000,
            key_hash=hash_key(generate_key()),
            request_id=request_id,
            actor="gateway",
        )
        reply = await self.commands.request(topics.AUTH_COMMANDS, dev_user_id, cmd, request_id)
        if reply.data.ok:
            await self.rw.event(self.projector, "user", dev_user_id)
        log.info("dev_user_ready", user_id=dev_user_id, ok=reply.data.ok)


async def usage_subject(read: ReadModel, caller: Principal, user_id: str | None) -> str | None:
    """Whose usage ``caller`` asks for (``None``: the admin's every user together): the
    caller's own, or ``user_id`` if the caller may read it — another tenant's, or an unknown
    user for the admin, is not found."""
    whose = caller.owner if user_id is None else user_id
    if whose is not None:
        unknown = NotFound(f"user {whose!r} not found", code="USER_NOT_FOUND")
        if check(caller.caller, Action.EXECUTION_READ, whose) is HIDDEN:
            raise unknown  # another tenant's usage, as if the user did not exist
        if caller.admin and await read.user(whose) is None:
            raise unknown
    return whose
