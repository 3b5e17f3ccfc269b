"""The permission policy as tables: every action × role × scope × ownership, and who sees
what of the operations endpoints (both pure, policy.check and policy.ops_view)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from spine_contracts.access import SYSTEM, USER_SCOPES
from spine_gateway.errors import Forbidden, Unauthorized
from spine_gateway.policy import (
    ADMIN_ONLY,
    HIDDEN,
    USER_ONLY,
    Action,
    Caller,
    OpsEndpoint,
    OpsRole,
    OpsView,
    check,
    may_mint,
    may_revoke,
    ops_view,
)

ALL = frozenset(USER_SCOPES)
ADMIN = Caller("admin", None, ALL)
USER = Caller("user", "u1", ALL)
READER = Caller("user", "u1", frozenset({"executions:read"}))
NO_SCOPES = Caller("user", "u1", frozenset())
OWNERS = {"none": None, "own": "u1", "system": SYSTEM, "other": "u2"}

ALLOW, HIDE = "allow", "hidden"


def expected(caller: Caller, action: Action, owner_kind: str) -> str:
    """The rules written out once more, the table's oracle (DESIGN §12)."""
    if action in ADMIN_ONLY:
        return ALLOW if caller.admin else "ADMIN_REQUIRED"
    if action in USER_ONLY and caller.admin:
        return "USER_KEY_REQUIRED"
    if caller.admin:
        return ALLOW
    if action.scope is not None and action.scope not in caller.scopes:
        return "FORBIDDEN_SCOPE"
    if owner_kind in ("none", "own"):
        return ALLOW
    if owner_kind == "system":
        if action in (Action.FLOW_READ, Action.AGENT_READ, Action.RUN_FLOW):
            return ALLOW
        if action in (
            Action.FLOW_WRITE,
            Action.FLOW_DELETE,
            Action.AGENT_WRITE,
            Action.AGENT_DELETE,
        ):
            return "NOT_OWNER"
    return HIDE


CASES = [
    (name, caller, action, owner_kind)
    for name, caller in {
        "admin": ADMIN,
        "user": USER,
        "reader": READER,
        "no-scopes": NO_SCOPES,
    }.items()
    for action in Action
    for owner_kind in OWNERS
]


@pytest.mark.parametrize(("who", "caller", "action", "owner_kind"), CASES)
def test_every_route_role_and_ownership(
    who: str, caller: Caller, action: Action, owner_kind: str
) -> None:
    want = expected(caller, action, owner_kind)
    if want in (ALLOW, HIDE):
        got = check(caller, action, OWNERS[owner_kind])
        assert (ALLOW if got is None else got) == (ALLOW if want == ALLOW else HIDDEN)
        return
    with pytest.raises(Forbidden) as refused:
        check(caller, action, OWNERS[owner_kind])
    assert refused.value.code == want and refused.value.status == 403


def test_some_rows_spelled_out() -> None:
    """A few rows by hand, so the oracle above cannot drift with the code unnoticed."""
    assert check(USER, Action.FLOW_WRITE, "u2") == HIDDEN
    assert check(USER, Action.RUN_FLOW, SYSTEM) is None
    assert check(ADMIN, Action.EXECUTION_CANCEL, "u2") is None
    with pytest.raises(Forbidden, match="admin only"):
        check(USER, Action.FLOW_WRITE, SYSTEM)
    with pytest.raises(Forbidden) as no_run:
        check(READER, Action.RUN_FLOW)
    assert no_run.value.code == "FORBIDDEN_SCOPE"
    with pytest.raises(Forbidden) as admin_input:
        check(ADMIN, Action.EXECUTION_INPUT, "u1")
    assert admin_input.value.code == "USER_KEY_REQUIRED"


NOW = datetime(2026, 12, 7, tzinfo=UTC)


def test_a_key_mints_only_within_itself() -> None:
    may_mint(USER, ["executions:read"], None, "user")
    with pytest.raises(Forbidden) as wider:
        may_mint(READER, ["executions:run"], None, "user")
    assert wider.value.code == "FORBIDDEN_SCOPE"
    expiring = Caller("user", "u1", ALL, NOW + timedelta(hours=1))
    may_mint(expiring, ["flows:write"], NOW + timedelta(minutes=30), "user")
    for later in (None, NOW + timedelta(hours=2)):
        with pytest.raises(Forbidden) as longer:
            may_mint(expiring, ["flows:write"], later, "user")
        assert longer.value.code == "FORBIDDEN_EXPIRY"


def test_admin_keys_come_from_the_admin_with_an_expiry() -> None:
    may_mint(ADMIN, [], NOW + timedelta(hours=1), "admin")
    with pytest.raises(Forbidden) as by_user:
        may_mint(USER, [], NOW + timedelta(hours=1), "admin")
    assert by_user.value.code == "ADMIN_REQUIRED"
    with pytest.raises(Forbidden) as forever:
        may_mint(ADMIN, [], None, "admin")
    assert forever.value.code == "EXPIRY_REQUIRED"
    with pytest.raises(Forbidden) as user_key:
        may_mint(ADMIN, ["executions:run"], None, "user")
    assert user_key.value.code == "USER_KEY_REQUIRED"


def test_revocation_any_key_itself_and_only_no_wider_ones() -> None:
    may_revoke(READER, ALL, own=True)
    may_revoke(USER, ["executions:read"], own=False)
    may_revoke(ADMIN, ALL, own=False)
    with pytest.raises(Forbidden) as wider:
        may_revoke(READER, ALL, own=False)
    assert wider.value.code == "FORBIDDEN_SCOPE"


# --- operations views: who sees what of /status and /metrics (policy.ops_view) ----------

LIVENESS, OWN, EVERYTHING = OpsView.LIVENESS, OpsView.OWN, OpsView.ALL
STATUS, JSON, TEXT = OpsEndpoint.STATUS, OpsEndpoint.METRICS_JSON, OpsEndpoint.METRICS_TEXT

#: (caller, endpoint) -> the view, or (status, code) of the refusal
OPS_TABLE: list[tuple[OpsRole, OpsEndpoint, OpsView | tuple[int, str]]] = [
    (OpsRole.ANONYMOUS, STATUS, LIVENESS),
    (OpsRole.ANONYMOUS, JSON, (401, "MISSING_API_KEY")),
    (OpsRole.ANONYMOUS, TEXT, (401, "MISSING_API_KEY")),
    (OpsRole.USER, STATUS, LIVENESS),
    (OpsRole.USER, JSON, OWN),
    (OpsRole.USER, TEXT, (403, "ADMIN_REQUIRED")),
    (OpsRole.ADMIN, STATUS, EVERYTHING),
    (OpsRole.ADMIN, JSON, EVERYTHING),
    (OpsRole.ADMIN, TEXT, EVERYTHING),
    (OpsRole.SCRAPER, STATUS, LIVENESS),
    (OpsRole.SCRAPER, JSON, (403, "ADMIN_REQUIRED")),
    (OpsRole.SCRAPER, TEXT, EVERYTHING),
]


@pytest.mark.parametrize(("caller", "endpoint", "decided"), OPS_TABLE)
def test_ops_view(caller: OpsRole, endpoint: OpsEndpoint, decided: Any) -> None:
    if isinstance(decided, OpsView):
        assert ops_view(caller, endpoint) is decided
        return
    with pytest.raises((Unauthorized, Forbidden)) as caught:
        ops_view(caller, endpoint)
    assert (caught.value.status, caught.value.code) == decided


def test_every_ops_pair_is_decided_and_only_the_operator_sees_all() -> None:
    assert {(c, e) for c, e, _ in OPS_TABLE} == {(c, e) for c in OpsRole for e in OpsEndpoint}
    sees_all = {(c, e) for c, e, d in OPS_TABLE if d is EVERYTHING}
    assert {c for c, _ in sees_all} == {OpsRole.ADMIN, OpsRole.SCRAPER}
    assert {e for c, e in sees_all if c is OpsRole.SCRAPER} == {TEXT}  # the token: text only
