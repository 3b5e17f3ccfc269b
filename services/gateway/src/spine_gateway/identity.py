"""Who is calling, and what they may do: the one place a request's principal and its
permission are decided (routes only declare what they need, through ``deps``).

:func:`permit` is the policy: pure, a table of (principal kind, permission) → allowed or
the refusal, tested as a table. :class:`Identity` turns a bearer token into a
:class:`Principal` (the master key, a user's key, or — with ``API_KEY_REQUIRED=false`` —
the development user) and counts the user's requests against their rate limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .adapters.postgres import ReadModel, UserRow
from .adapters.redis import RedisStore
from .cache import ReadCache
from .errors import Forbidden, RateLimited, Unauthorized, Unavailable
from .keys import hash_key, same_secret
from .ratelimit import RateDecision
from .settings import GatewaySettings


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user (their read-model row) or the master key."""

    user: UserRow | None = None
    master: bool = False

    @property
    def user_id(self) -> str:
        assert self.user is not None
        return self.user["user_id"]


class Permission(Enum):
    """What a route needs."""

    USER = "a user's API key"  # the caller's own resources: executions, flows, agents, me
    MASTER = "the master key"  # users and credits


#: (master?, permission) -> the refusal's code, or None when allowed
_POLICY: dict[tuple[bool, Permission], str | None] = {
    (False, Permission.USER): None,
    (False, Permission.MASTER): "MASTER_KEY_REQUIRED",
    (True, Permission.USER): "USER_KEY_REQUIRED",
    (True, Permission.MASTER): None,
}


def permit(principal: Principal, permission: Permission) -> None:
    """Raise :class:`Forbidden` unless ``principal`` holds ``permission``. Even with
    ``API_KEY_REQUIRED=false`` the anonymous development user is a user: it may run flows,
    never mint users or credits."""
    code = _POLICY[(principal.master, permission)]
    if code is not None:
        raise Forbidden(f"this operation needs {permission.value}", code=code)


class Identity:
    def __init__(
        self,
        settings: GatewaySettings,
        read: ReadModel,
        store: RedisStore,
        users_by_key: ReadCache[str, UserRow],
    ) -> None:
        self.settings = settings
        self.read = read
        self.store = store
        self.users_by_key = users_by_key

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
        user = await self.users_by_key.get(digest, lambda: self.read.user_by_key_hash(digest))
        if user is None or not same_secret(digest, user["key_hash"]):
            raise Unauthorized("invalid API key", code="INVALID_API_KEY")
        return Principal(user=user)

    async def rate(self, user: UserRow) -> RateDecision:
        """Count one request of ``user``; 429 past their limit in the current window."""
        decision = await self.store.hit(
            user["user_id"], int(user["rate_limit"]), self.settings.rate_window_s
        )
        if not decision.allowed:
            raise RateLimited(
                f"rate limit of {decision.limit} requests per minute exceeded",
                headers=decision.headers(),
            )
        return decision

    async def _dev_user(self) -> UserRow:
        user = await self.read.user(self.settings.dev_user_id)
        if user is None:
            raise Unavailable("the development user is not ready yet", code="DEV_USER_NOT_READY")
        return user
