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


# --- operations views: /status and /metrics -----------------------------------------------
# Their callers may also be nobody or the Prometheus scrape token, and the answer is a view
# (liveness, the caller's own figures, everything) rather than yes or no: ``ops_view``.


class Caller(Enum):
    """Who asks for an operations view."""

    ANONYMOUS = "no key"
    USER = "a user's key"
    MASTER = "the master key"
    SCRAPER = "the metrics scrape token"  # SPINE_METRICS_SCRAPE_TOKEN: Prometheus


class OpsEndpoint(Enum):
    STATUS = "GET /status"
    METRICS_JSON = "GET /metrics (JSON summary)"
    METRICS_TEXT = "GET /metrics (Prometheus text)"


class OpsView(Enum):
    """How much an operations answer shows."""

    LIVENESS = "liveness"  # up or degraded: no instance, agent, lag or tenant figure
    OWN = "own"  # the caller's own executions, credits and rates
    ALL = "all"  # every tenant's figures and every service instance: the operator's


@dataclass(frozen=True)
class OpsCaller:
    """The caller of an operations endpoint; ``principal`` only for a key."""

    kind: Caller
    principal: Principal | None = None


@dataclass(frozen=True)
class _Refuse:
    error: type[Unauthorized | Forbidden]
    code: str
    message: str


_NO_KEY = _Refuse(
    Unauthorized,
    "MISSING_API_KEY",
    "missing API key: send Authorization: Bearer <key> (a user's key, the master key, "
    "or the metrics scrape token for the Prometheus text)",
)
_TEXT_IS_OPERATORS = _Refuse(
    Forbidden,
    "MASTER_KEY_REQUIRED",
    "the Prometheus text shows every tenant: it needs the master key or the metrics scrape "
    "token (a user's key reads its own figures with Accept: application/json)",
)
_TOKEN_IS_TEXT_ONLY = _Refuse(
    Forbidden,
    "MASTER_KEY_REQUIRED",
    "the metrics scrape token reads only the Prometheus text; the JSON summary needs a "
    "user's key or the master key",
)

#: (caller, endpoint) -> the view it gets, or the refusal. Anonymous callers learn only
#: whether the installation is up; a user sees their own figures; the operator everything.
_OPS_POLICY: dict[tuple[Caller, OpsEndpoint], OpsView | _Refuse] = {
    (Caller.ANONYMOUS, OpsEndpoint.STATUS): OpsView.LIVENESS,
    (Caller.ANONYMOUS, OpsEndpoint.METRICS_JSON): _NO_KEY,
    (Caller.ANONYMOUS, OpsEndpoint.METRICS_TEXT): _NO_KEY,
    (Caller.USER, OpsEndpoint.STATUS): OpsView.LIVENESS,
    (Caller.USER, OpsEndpoint.METRICS_JSON): OpsView.OWN,
    (Caller.USER, OpsEndpoint.METRICS_TEXT): _TEXT_IS_OPERATORS,
    (Caller.MASTER, OpsEndpoint.STATUS): OpsView.ALL,
    (Caller.MASTER, OpsEndpoint.METRICS_JSON): OpsView.ALL,
    (Caller.MASTER, OpsEndpoint.METRICS_TEXT): OpsView.ALL,
    (Caller.SCRAPER, OpsEndpoint.STATUS): OpsView.LIVENESS,
    (Caller.SCRAPER, OpsEndpoint.METRICS_JSON): _TOKEN_IS_TEXT_ONLY,
    (Caller.SCRAPER, OpsEndpoint.METRICS_TEXT): OpsView.ALL,
}


def ops_view(caller: Caller, endpoint: OpsEndpoint) -> OpsView:
    """The view ``caller`` gets of ``endpoint``; raise the refusal (401, 403) otherwise."""
    decided = _OPS_POLICY[(caller, endpoint)]
    if isinstance(decided, _Refuse):
        raise decided.error(decided.message, code=decided.code)
    return decided


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

    async def ops_caller(self, token: str | None) -> OpsCaller:
        """Who asks for an operations view. No key is anonymous, even with
        ``API_KEY_REQUIRED=false`` (liveness needs no user, nor the development user to
        exist yet); the scrape token, compared in constant time, is a caller of its own;
        any other key must authenticate (401 when it does not)."""
        if token is None:
            return OpsCaller(Caller.ANONYMOUS)
        scrape = self.settings.metrics_scrape_token
        if scrape is not None and same_secret(token, scrape):
            return OpsCaller(Caller.SCRAPER)
        principal = await self.authenticate(token)
        return OpsCaller(Caller.MASTER if principal.master else Caller.USER, principal)

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
