"""spine_contracts.signing: what a signature covers, why a record fails, and key files."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from spine_contracts import IssueAgent
from spine_contracts.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    SignatureRefused,
    Signer,
    SigningKeyError,
    check,
    decode_public_key,
    key_id,
    load_or_create_key,
    load_private_key,
    signed_bytes,
    topic_base,
)

A, B = Signer.generate(), Signer.generate()
TOPIC, KEY, VALUE = "spine.agents.results", b"ex-1", b'{"type":"agent.result"}'


def test_a_signed_record_verifies_with_its_key_only() -> None:
    headers = A.headers(TOPIC, KEY, VALUE)
    assert [name for name, _ in headers] == [SIGNATURE_HEADER, KEY_ID_HEADER]
    assert check(headers, TOPIC, KEY, VALUE, A.public_key) is None
    assert check(headers, TOPIC, KEY, VALUE, B.public_key) == "wrong_key"


@pytest.mark.parametrize(
    ("topic", "key", "value"),
    [
        ("spine.registry.heartbeats", KEY, VALUE),  # another topic
        (TOPIC, b"ex-2", VALUE),  # another key (another execution, another partition)
        (TOPIC, KEY, VALUE + b" "),  # other bytes
        (TOPIC, None, VALUE),
    ],
)
def test_the_signature_covers_topic_key_and_value(
    topic: str, key: bytes | None, value: bytes
) -> None:
    headers = A.headers(TOPIC, KEY, VALUE)
    assert check(headers, topic, key, value, A.public_key) == "bad_signature"


def test_key_and_value_cannot_trade_bytes() -> None:
    assert signed_bytes(TOPIC, b"ab", b"c") != signed_bytes(TOPIC, b"a", b"bc")


def test_why_a_record_fails() -> None:
    headers = A.headers(TOPIC, KEY, VALUE)
    assert check([], TOPIC, KEY, VALUE, A.public_key) == "unsigned"
    assert check(headers, TOPIC, KEY, VALUE, None) == "unknown_key"
    no_key_id = [h for h in headers if h[0] != KEY_ID_HEADER]
    assert check(no_key_id, TOPIC, KEY, VALUE, B.public_key) == "bad_signature"
    garbage = [(SIGNATURE_HEADER, b"not base64!"), (KEY_ID_HEADER, A.key_id.encode())]
    assert check(garbage, TOPIC, KEY, VALUE, A.public_key) == "bad_signature"


def test_a_refusal_names_the_signer_never_a_key() -> None:
    error = SignatureRefused.of("wrong_key", "agent.result", "echo")
    assert error.reason == "wrong_key" and str(error).startswith("wrong_key: ")
    assert "'echo'" in str(error) and A.public_key_b64 not in str(error)
    assert "spine-admin issue-agent echo" in str(SignatureRefused.of("unknown_key", "x", "echo"))


def test_key_ids_and_public_keys() -> None:
    assert A.key_id == key_id(A.public_key) and len(A.key_id) == 16
    assert decode_public_key(A.public_key_b64) == A.public_key
    for bad in ("", "abc", base64.b64encode(b"x" * 31).decode()):
        with pytest.raises(ValueError):
            decode_public_key(bad)
    assert topic_base("t1.spine.agents.results", "t1.") == "spine.agents.results"
    assert topic_base("spine.agents.results", "") == "spine.agents.results"


def test_issue_agent_takes_only_a_32_byte_key() -> None:
    IssueAgent.build(agent_id="a", public_key=A.public_key_b64)
    for bad in ("x", base64.b64encode(b"k" * 33).decode()):
        with pytest.raises(ValueError):
            IssueAgent.build(agent_id="a", public_key=bad)
    with pytest.raises(ValueError):
        IssueAgent.build(agent_id="a.b", public_key=A.public_key_b64)


def test_a_key_file_is_created_0600_in_a_0700_dir_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "agents" / "echo" / "signing-key.pem"
    made = load_or_create_key(path)
    assert made.created and not made.open_to_others
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = load_or_create_key(path)
    assert not again.created and again.signer.key_id == made.signer.key_id
    assert [p.name for p in path.parent.iterdir()] == ["signing-key.pem"]  # no temp files left
    path.chmod(0o644)
    assert load_or_create_key(path).open_to_others


def test_a_bad_key_file_says_which_and_why(tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="does not exist"):
        load_private_key(tmp_path / "missing.pem", "SPINE_AGENT_SIGNING_KEY_FILE=x")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(SigningKeyError, match="not an unencrypted PEM private key"):
        load_private_key(junk)
