"""The permission policy, as a table: who may do what (identity.permit; pure)."""

from __future__ import annotations

from typing import Any

import pytest
from spine_gateway.errors import Forbidden
from spine_gateway.identity import Permission, Principal, permit

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
