"""The permission policy, as tables: who may do what (identity.permit) and who sees what
of the operations endpoints (identity.ops_view); both pure."""

from __future__ import annotations

from typing import Any

import pytest
from spine_gateway.errors import Forbidden, Unauthorized
from spine_gateway.identity import (
    Caller,
    OpsEndpoint,
    OpsView,
    Permission,
    Principal,
    ops_view,
    permit,
)

USER = Principal(user={"user_id": "u1"})  # type: ignore[typeddict-item]
MASTER = Principal(master=True)

TABLE: list[tuple[Principal, Permission, str | None]] = [
    (USER, Permission.USER, None),
    (USER, Permission.MASTER, "MASTER_KEY_REQUIRED"),
    (MASTER, Permission.USER, "USER_KEY_REQUIRED"),
    (MASTER, Permission.MASTER, None),
]


@pytest.mark.parametrize(("principal", "permission", "refused"), TABLE)
def test_policy(principal: Principal, permission: Permission, refused: Any) -> None:
    if refused is None:
        permit(principal, permission)
        return
    with pytest.raises(Forbidden) as caught:
        permit(principal, permission)
    assert caught.value.code == refused and caught.value.status == 403


def test_every_pair_is_decided() -> None:
    assert {(p.master, perm) for p, perm, _ in TABLE} == {
        (m, perm) for m in (False, True) for perm in Permission
    }


# --- operations views: who sees what of /status and /metrics (identity.ops_view) ----------

LIVENESS, OWN, ALL = OpsView.LIVENESS, OpsView.OWN, OpsView.ALL
STATUS, JSON, TEXT = OpsEndpoint.STATUS, OpsEndpoint.METRICS_JSON, OpsEndpoint.METRICS_TEXT

#: (caller, endpoint) -> the view, or (status, code) of the refusal
OPS_TABLE: list[tuple[Caller, OpsEndpoint, OpsView | tuple[int, str]]] = [
    (Caller.ANONYMOUS, STATUS, LIVENESS),
    (Caller.ANONYMOUS, JSON, (401, "MISSING_API_KEY")),
    (Caller.ANONYMOUS, TEXT, (401, "MISSING_API_KEY")),
    (Caller.USER, STATUS, LIVENESS),
    (Caller.USER, JSON, OWN),
    (Caller.USER, TEXT, (403, "MASTER_KEY_REQUIRED")),
    (Caller.MASTER, STATUS, ALL),
    (Caller.MASTER, JSON, ALL),
    (Caller.MASTER, TEXT, ALL),
    (Caller.SCRAPER, STATUS, LIVENESS),
    (Caller.SCRAPER, JSON, (403, "MASTER_KEY_REQUIRED")),
    (Caller.SCRAPER, TEXT, ALL),
]


@pytest.mark.parametrize(("caller", "endpoint", "decided"), OPS_TABLE)
def test_ops_view(caller: Caller, endpoint: OpsEndpoint, decided: Any) -> None:
    if isinstance(decided, OpsView):
        assert ops_view(caller, endpoint) is decided
        return
    with pytest.raises((Unauthorized, Forbidden)) as caught:
        ops_view(caller, endpoint)
    assert (caught.value.status, caught.value.code) == decided


def test_every_ops_pair_is_decided_and_only_the_operator_sees_all() -> None:
    assert {(c, e) for c, e, _ in OPS_TABLE} == {(c, e) for c in Caller for e in OpsEndpoint}
    sees_all = {(c, e) for c, e, d in OPS_TABLE if d is ALL}
    assert {c for c, _ in sees_all} == {Caller.MASTER, Caller.SCRAPER}
    assert {e for c, e in sees_all if c is Caller.SCRAPER} == {TEXT}  # the token: text only
