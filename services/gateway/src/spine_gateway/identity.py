"""Who is calling: a bearer token becomes a :class:`Principal` — the master key, an admin key,
a user's key (with its scopes and expiry), or, with ``API_KEY_REQUIRED=false``, the
development user. What a principal may do is :mod:`.policy`'s to decide.

Keys are looked up by their SHA-256 in this replica's read model (``api_keys``) through a
cache that the users projector empties for an account as soon as it applies one of its key
events, so a revoked key is refused here within the projector's latency (well under a
second). Expiry needs no event: it is compared with the clock on every request. Long
streams ask :meth:`Identity.still_valid` as they go, so they close within a second too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from spine_contracts.access import MASTER, USER_SCOPES, Role

from .adapters.postgres import KeyRow, ReadModel, UserRow
from .adapters.redis import RedisStore
from .cache import ReadCache
from .errors import RateLimited, Unauthorized, Unavailable
from .keys import hash_key, same_secret
from .policy import Caller, OpsRole
from .ratelimit import RateDecision
from .settings import GatewaySettings

#: the key id recorded for the development user (``API_KEY_REQUIRED=false``)
DEV_KEY_ID = "dev"
#: a key's last use is written to Redis at most this often per replica
TOUCH_EVERY_S = 30.0


@dataclass(frozen=True)
class Credential:
    """A live key and, for a user's key, its account (what the key cache holds)."""

    key: KeyRow
    user: UserRow | None

    @property
    def user_id(self) -> str:
        return self.key["user_id"]


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    role: Role
    key_id: str  # recorded as the actor of what the request causes
    scopes: frozenset[str]
    user: UserRow | None = None
    expires_at: datetime | None = None
    digest: str | None = None  # the key's hash, to check it again on long streams

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def user_id(self) -> str:
        assert self.user is not None, "the admin has no account"
        return self.user["user_id"]

    @property
    def owner(self) -> str | None:
        """The owner id of what this principal creates (``None``: the admin → system)."""
        return self.user["user_id"] if self.user is not None else None

    @property
    def actor(self) -> str:
        return self.key_id

    @property
    def caller(self) -> Caller:
        return Caller(self.role, self.owner, self.scopes, self.expires_at)


MASTER_PRINCIPAL = Principal(role="admin", key_id=MASTER, scopes=frozenset(USER_SCOPES))


@dataclass(frozen=True)
class OpsCaller:
    """The caller of an operations endpoint (``/status``, ``/metrics``); ``principal`` only
    for a key."""

    kind: OpsRole
    principal: Principal | None = None


class Identity:
    def __init__(
        self,
        settings: GatewaySettings,
        read: ReadModel,
        store: RedisStore,
        credentials: ReadCache[str, Credential],
    ) -> None:
        self.settings = settings
        self.read = read
        self.store = store
        self.credentials = credentials
        self._touched: dict[str, float] = {}

    async def authenticate(self, token: str | None) -> Principal:
        if token is None:
            if not self.settings.auth_required:
                user = await self._dev_user()
                return Principal("user", DEV_KEY_ID, frozenset(USER_SCOPES), user=user)
            raise Unauthorized(
                "missing API key: send Authorization: Bearer <key>", code="MISSING_API_KEY"
            )
        if same_secret(token, self.settings.api_key):
            return MASTER_PRINCIPAL
        digest = hash_key(token)
        found = await self._credential(digest)
        if found is None:
            raise Unauthorized("invalid API key", code="INVALID_API_KEY")
        key = found.key
        if expired(key, datetime.now(UTC)):
            raise Unauthorized(
                f"this API key expired at {key['expires_at']:%Y-%m-%dT%H:%M:%SZ}",
                code="KEY_EXPIRED",
            )
        await self._touch(key["key_id"])
        return Principal(
            role="admin" if key["role"] == "admin" else "user",
            key_id=key["key_id"],
            scopes=frozenset(key["scopes"]),
            user=found.user,
            expires_at=key["expires_at"],
            digest=digest,
        )

    async def still_valid(self, principal: Principal) -> bool:
        """Whether the principal's key still works (not revoked, not expired) — asked by
        long-lived streams; the master key and the development user always do."""
        if principal.digest is None:
            return True
        found = await self._credential(principal.digest)
        if found is None or found.key["key_id"] != principal.key_id:
            return False
        return not expired(found.key, datetime.now(UTC))

    async def ops_caller(self, token: str | None) -> OpsCaller:
        """Who asks for an operations view. No key is anonymous, even with
        ``API_KEY_REQUIRED=false`` (liveness needs no user, nor the development user to
        exist yet); the scrape token, compared in constant time, is a caller of its own;
        any other key must authenticate (401 when it does not)."""
        if token is None:
            return OpsCaller(OpsRole.ANONYMOUS)
        scrape = self.settings.metrics_scrape_token
        if scrape is not None and same_secret(token, scrape):
            return OpsCaller(OpsRole.SCRAPER)
        principal = await self.authenticate(token)
        return OpsCaller(OpsRole.ADMIN if principal.admin else OpsRole.USER, principal)

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

    async def _credential(self, digest: str) -> Credential | None:
        return await self.credentials.get(digest, lambda: self._load(digest))

    async def _load(self, digest: str) -> Credential | None:
        key = await self.read.live_key(digest)
        if key is None or not same_secret(digest, key["key_hash"]):
            return None
        if key["role"] == "admin":
            return Credential(key, None)
        user = await self.read.user(key["user_id"])
        return Credential(key, user) if user is not None else None

    async def _touch(self, key_id: str) -> None:
        """Remember the key's use; written to Redis at most every ``TOUCH_EVERY_S`` per
        key and replica, so it costs no round trip on most requests."""
        now = time.time()
        if now - self._touched.get(key_id, 0.0) < TOUCH_EVERY_S:
            return
        self._touched[key_id] = now
        if len(self._touched) > 100_000:
            self._touched.clear()
        await self.store.touch_keys({key_id: now})

    async def _dev_user(self) -> UserRow:
        user = await self.read.user(self.settings.dev_user_id)
        if user is None:
            raise Unavailable("the development user is not ready yet", code="DEV_USER_NOT_READY")
        return user


def expired(key: KeyRow, now: datetime) -> bool:
    """Whether ``key`` has expired at ``now``."""
    return key["expires_at"] is not None and key["expires_at"] <= now
