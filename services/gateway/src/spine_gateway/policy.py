"""Who may do what (DESIGN §12): the one place every permission is decided.

:func:`check` is a pure function of (principal, action, resource) — no I/O, no clock — and
is tested as a table of every action × role × scope × ownership (tests/gateway/test_policy.py).
Routes only declare the action they perform (``deps.Allowed``); services look the resource
up and ask again with its owner. The answers:

* allowed: ``None``;
* a missing role or scope: :class:`Forbidden` (403) with ``ADMIN_REQUIRED``,
  ``USER_KEY_REQUIRED``, ``FORBIDDEN_SCOPE`` or ``NOT_OWNER`` (a system resource the user
  may see but not change);
* a resource the caller may not see (another tenant's): ``HIDDEN`` — the service answers
  404 as if it did not exist (or, for a write to an id that is taken, 409).

Roles: the admin (the master key, or an expiring admin key it minted) administers users
and credits, the system catalogue and every tenant's executions (read, cancel) — but runs
nothing itself (it holds no credits) and answers no tenant's input node. A user acts on
their own executions, flows and agents and may use (never change) system ones, within the
scopes of the key they call with.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Final, Literal

from spine_contracts.access import MAX_ADMIN_KEY_TTL_S, SYSTEM, USER_SCOPES, Role, Scope

from .errors import Forbidden, Unauthorized

Hidden = Literal["hidden"]
HIDDEN: Final[Hidden] = "hidden"


@dataclass(frozen=True)
class Caller:
    """What the policy needs to know about a principal."""

    role: Role
    user_id: str | None  # None for the admin
    scopes: frozenset[str]
    expires_at: datetime | None = None

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Action(Enum):
    """What a request does; the value is the scope a user's key needs (None: any key)."""

    RUN_FLOW = "executions:run"
    EXECUTION_INPUT = "executions:run#input"
    EXECUTION_CANCEL = "executions:run#cancel"
    EXECUTION_READ = "executions:read"
    FLOW_READ = "#flow-read"
    FLOW_WRITE = "flows:write"
    FLOW_DELETE = "flows:write#delete"
    AGENT_READ = "#agent-read"
    AGENT_WRITE = "agents:write"
    AGENT_DELETE = "agents:write#delete"
    ACCOUNT = "#account"  # users/me, regenerate-key
    KEYS = "#keys"  # list, create (within the caller's own scopes), revoke
    AUDIT_READ = "#audit"
    ADMINISTER = "#admin"  # users and credits

    @property
    def scope(self) -> str | None:
        scope = self.value.split("#", 1)[0]
        return scope or None


#: actions only the admin performs
ADMIN_ONLY: Final = frozenset({Action.ADMINISTER})
#: actions only a user performs: they spend a user's credits or speak for the user
USER_ONLY: Final = frozenset({Action.RUN_FLOW, Action.EXECUTION_INPUT, Action.ACCOUNT})
#: actions whose resource is a shared catalogue entry (system: everyone may read it)
CATALOGUE_READS: Final = frozenset({Action.FLOW_READ, Action.AGENT_READ})
CATALOGUE_WRITES: Final = frozenset(
    {Action.FLOW_WRITE, Action.FLOW_DELETE, Action.AGENT_WRITE, Action.AGENT_DELETE}
)


def check(caller: Caller, action: Action, owner: str | None = None) -> Hidden | None:
    """``None`` when ``caller`` may do ``action`` on a resource of ``owner`` (``None``: no
    particular resource, e.g. a list or a new id); ``HIDDEN`` when the resource must look
    absent; raises :class:`Forbidden` otherwise."""
    if action in ADMIN_ONLY and not caller.admin:
        raise Forbidden(
            "this operation needs the master key or an admin key", code="ADMIN_REQUIRED"
        )
    if action in USER_ONLY and caller.admin:
        raise Forbidden(
            "this operation needs a user's API key (the admin runs no flows and holds no account)",
            code="USER_KEY_REQUIRED",
        )
    if caller.admin:
        return None  # every tenant's resources, read and changed (owners are kept)
    scope = action.scope
    if scope is not None and scope not in caller.scopes:
        raise Forbidden(f"this key lacks the scope {scope!r}", code="FORBIDDEN_SCOPE")
    if owner is None or owner == caller.user_id:
        return None
    if owner == SYSTEM and action in CATALOGUE_READS | {Action.RUN_FLOW}:
        return None
    if owner == SYSTEM and action in CATALOGUE_WRITES:
        raise Forbidden("system flows and agents are changed by the admin only", code="NOT_OWNER")
    return HIDDEN


def visible(caller: Caller, action: Action, owner: str) -> bool:
    """Whether a resource of ``owner`` is listed for ``caller`` (lists never raise)."""
    try:
        return check(caller, action, owner) is None
    except Forbidden:
        return False


def may_mint(
    caller: Caller, scopes: Iterable[str], expires_at: datetime | None, role: Role
) -> None:
    """A key creates keys only within itself: a subset of its scopes and no later expiry;
    admin keys only from the admin, for at most 12 hours (checked against the request
    time by the caller of this function, see ``keys``)."""
    if role == "admin":
        if not caller.admin:
            raise Forbidden("only the admin mints admin keys", code="ADMIN_REQUIRED")
        if expires_at is None:
            raise Forbidden(
                f"an admin key needs an expiry of at most {MAX_ADMIN_KEY_TTL_S // 3600} h",
                code="EXPIRY_REQUIRED",
            )
    elif caller.admin:
        raise Forbidden(
            "the admin mints admin keys; users create their own", code="USER_KEY_REQUIRED"
        )
    else:
        wider = sorted(set(scopes) - caller.scopes)
        if wider:
            raise Forbidden(f"a key cannot grant scopes it lacks: {wider}", code="FORBIDDEN_SCOPE")
    if caller.expires_at is not None and (expires_at is None or expires_at > caller.expires_at):
        raise Forbidden(
            "a key cannot create a key that outlives it (its expiry is "
            f"{caller.expires_at.isoformat()})",
            code="FORBIDDEN_EXPIRY",
        )


def may_revoke(caller: Caller, key_scopes: Iterable[str], own: bool) -> None:
    """Any key may revoke itself; otherwise a key revokes only keys no wider than itself
    (a read-only key cannot lock its owner out); the admin revokes any key."""
    if caller.admin or own:
        return
    wider = sorted(set(key_scopes) - caller.scopes)
    if wider:
        raise Forbidden(
            f"a key cannot revoke a key with scopes it lacks: {wider}", code="FORBIDDEN_SCOPE"
        )


# --- operations views: /status and /metrics -----------------------------------------------
# Their callers may also be nobody or the Prometheus scrape token, and the answer is a view
# (liveness, the caller's own figures, everything) rather than yes or no: ``ops_view``.


class OpsRole(Enum):
    """Who asks for an operations view."""

    ANONYMOUS = "no key"
    USER = "a user's key"
    ADMIN = "the master key or an admin key"
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
    "ADMIN_REQUIRED",
    "the Prometheus text shows every tenant: it needs the master key or the metrics scrape "
    "token (a user's key reads its own figures with Accept: application/json)",
)
_TOKEN_IS_TEXT_ONLY = _Refuse(
    Forbidden,
    "ADMIN_REQUIRED",
    "the metrics scrape token reads only the Prometheus text; the JSON summary needs a "
    "user's key or the master key",
)

#: (caller, endpoint) -> the view it gets, or the refusal. Anonymous callers learn only
#: whether the installation is up; a user sees their own figures; the operator everything.
_OPS_POLICY: dict[tuple[OpsRole, OpsEndpoint], OpsView | _Refuse] = {
    (OpsRole.ANONYMOUS, OpsEndpoint.STATUS): OpsView.LIVENESS,
    (OpsRole.ANONYMOUS, OpsEndpoint.METRICS_JSON): _NO_KEY,
    (OpsRole.ANONYMOUS, OpsEndpoint.METRICS_TEXT): _NO_KEY,
    (OpsRole.USER, OpsEndpoint.STATUS): OpsView.LIVENESS,
    (OpsRole.USER, OpsEndpoint.METRICS_JSON): OpsView.OWN,
    (OpsRole.USER, OpsEndpoint.METRICS_TEXT): _TEXT_IS_OPERATORS,
    (OpsRole.ADMIN, OpsEndpoint.STATUS): OpsView.ALL,
    (OpsRole.ADMIN, OpsEndpoint.METRICS_JSON): OpsView.ALL,
    (OpsRole.ADMIN, OpsEndpoint.METRICS_TEXT): OpsView.ALL,
    (OpsRole.SCRAPER, OpsEndpoint.STATUS): OpsView.LIVENESS,
    (OpsRole.SCRAPER, OpsEndpoint.METRICS_JSON): _TOKEN_IS_TEXT_ONLY,
    (OpsRole.SCRAPER, OpsEndpoint.METRICS_TEXT): OpsView.ALL,
}


def ops_view(caller: OpsRole, endpoint: OpsEndpoint) -> OpsView:
    """The view ``caller`` gets of ``endpoint``; raise the refusal (401, 403) otherwise."""
    decided = _OPS_POLICY[(caller, endpoint)]
    if isinstance(decided, _Refuse):
        raise decided.error(decided.message, code=decided.code)
    return decided


ALL_USER_SCOPES: Final[frozenset[str]] = frozenset(USER_SCOPES)
__all__ = [
    "ALL_USER_SCOPES",
    "OpsEndpoint",
    "OpsRole",
    "OpsView",
    "ops_view",
    "HIDDEN",
    "Action",
    "Caller",
    "Scope",
    "check",
    "may_mint",
    "may_revoke",
    "visible",
]
