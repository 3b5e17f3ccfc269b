"""Further keys, admin keys and revocation in the auth state machine, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import reduce

from spine_auth.domain import UserAccount, decide, evolve
from spine_auth.errors import ErrorCode
from spine_contracts import (
    CreateKey,
    CreateUser,
    KeyCreated,
    KeyRevoked,
    KeyRotated,
    Message,
    RevokeKey,
    RotateKey,
)
from spine_contracts.access import MAX_KEYS_PER_USER, SYSTEM, primary_key_id

UID = "u1"
NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def h(tag: str) -> str:
    return (tag * 64)[:64]


def account() -> UserAccount:
    created = CreateUser.build(user_id=UID, email="a@example.com", key_hash=h("a"), credits=1)
    state = decide(None, created).state
    assert state is not None
    return state


def new_key(key_id: str, *, user_id: str = UID, role: str = "user", **fields: object) -> CreateKey:
    msg = CreateKey.build(
        user_id=user_id,
        key_id=key_id,
        key_hash=h(key_id[-1]),
        name=key_id,
        scopes=("executions:read",),
        role=role,
        request_id=f"r-{key_id}",
        **fields,
    )
    return msg.model_copy(update={"occurred_at": NOW})


def fold(events: list[Message]) -> UserAccount | None:
    return reduce(evolve, events, None)


def test_a_further_key_is_created_once_and_answered_with_its_id() -> None:
    acc = account()
    cmd = new_key("key_b")
    first = decide(acc, cmd)
    assert [type(e) for e in first.events] == [KeyCreated]
    assert first.reply is not None and first.reply.data.ok
    assert first.reply.data.body["key_id"] == "key_b"
    assert "key_hash" not in first.reply.data.body
    assert first.state is not None
    again = decide(first.state, cmd)
    assert again.events == () and again.reply is not None and again.reply.data.ok


def test_the_cap_counts_live_keys_only() -> None:
    acc = account()  # the primary key counts
    events: list[Message] = []
    for i in range(MAX_KEYS_PER_USER - 2):
        d = decide(acc, new_key(f"key_{i:02d}x"))
        assert d.state is not None
        acc = d.state
        events += d.events
    expired = decide(acc, new_key("key_oldz", expires_at=NOW - timedelta(seconds=1)))
    assert expired.state is not None
    acc = expired.state
    last = decide(acc, new_key("key_lastq"))
    assert last.state is not None and last.reply is not None and last.reply.data.ok
    over = decide(last.state, new_key("key_overr"))
    assert over.reply is not None and not over.reply.data.ok
    assert over.reply.data.error_code == ErrorCode.KEY_LIMIT_REACHED
    revoked = decide(last.state, RevokeKey.build(user_id=UID, key_id="key_lastq"))
    assert [type(e) for e in revoked.events] == [KeyRevoked]
    assert revoked.state is not None
    room = decide(revoked.state, new_key("key_roomm"))
    assert room.reply is not None and room.reply.data.ok


def test_rotating_a_further_key_leaves_the_primary_key_alone() -> None:
    acc = decide(account(), new_key("key_b")).state
    assert acc is not None
    rotated = decide(acc, RotateKey.build(user_id=UID, key_id="key_b", key_hash=h("z")))
    (event,) = rotated.events
    assert isinstance(event, KeyRotated) and event.data.previous_key_hash == h("b")
    assert rotated.state is not None
    assert rotated.state.key_hash == h("a")
    assert rotated.state.keys["key_b"].key_hash == h("z")
    assert rotated.state.keys[primary_key_id(UID)].key_hash == h("a")


def test_a_revoked_key_cannot_be_rotated_and_revoking_twice_emits_once() -> None:
    acc = decide(account(), new_key("key_b")).state
    assert acc is not None
    once = decide(acc, RevokeKey.build(user_id=UID, key_id="key_b"))
    assert once.state is not None
    twice = decide(once.state, RevokeKey.build(user_id=UID, key_id="key_b"))
    assert twice.events == ()
    refused = decide(once.state, RotateKey.build(user_id=UID, key_id="key_b", key_hash=h("y")))
    assert refused.reply is None or not refused.reply.data.ok
    assert not any(isinstance(e, KeyRotated) for e in refused.events)


def test_admin_keys_live_in_the_system_account_and_only_there() -> None:
    admin = decide(None, new_key("key_adm1", user_id=SYSTEM, role="admin"))
    assert [type(e) for e in admin.events] == [KeyCreated]
    assert admin.state is not None and admin.state.user_id == SYSTEM
    assert fold(list(admin.events)) == admin.state
    for bad in (new_key("key_x", role="admin"), new_key("key_y", user_id=SYSTEM)):
        refused = decide(account() if bad.data.user_id == UID else None, bad)
        assert refused.reply is not None
        assert refused.reply.data.error_code == ErrorCode.INVALID_KEY_REQUEST
        assert not any(isinstance(e, KeyCreated) for e in refused.events)


def test_the_keys_are_the_fold_of_their_events() -> None:
    created = decide(None, CreateUser.build(user_id=UID, email="a@example.com", key_hash=h("a")))
    acc = created.state
    events: list[Message] = list(created.events)
    for cmd in (
        new_key("key_b"),
        RotateKey.build(user_id=UID, key_id="key_b", key_hash=h("q")),
        RevokeKey.build(user_id=UID, key_id=primary_key_id(UID)),
    ):
        d = decide(acc, cmd)
        assert d.state is not None
        acc = d.state
        events += d.events
    assert fold(events) == acc
    assert acc is not None and acc.keys[primary_key_id(UID)].revoked
