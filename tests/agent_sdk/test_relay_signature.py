"""verify_relay_signature: what an HTTP agent runs on each call (docs/agents.md).

Signed here the way the relay signs (the shared ``signed_message``), then checked as an
agent checks: exactly the body, this agent's id, a recent timestamp, the relay's key. The
two snippets of docs/agents.md are run as written, so the guide stays true.
"""

from __future__ import annotations

import base64
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from spine_agent.http import (
    AGENT_ID_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    RelaySignatureError,
    load_public_key,
    verify_relay_signature,
)
from spine_agent.signature import key_id, signed_message

NOW = 1_767_225_600
BODY = b'{"execution_id":"e-1","node_id":"n1","input":{"user_message":"hi"}}'
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key()
RAW = PUBLIC.public_bytes(Encoding.Raw, PublicFormat.Raw)


def signed(agent_id: str = "echo-http", body: bytes = BODY, at: int = NOW) -> dict[str, str]:
    signature = KEY.sign(signed_message(at, agent_id, body))
    return {
        AGENT_ID_HEADER: agent_id,
        TIMESTAMP_HEADER: str(at),
        KEY_ID_HEADER: key_id(RAW),
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
    }


def refusal(headers: dict[str, str], body: bytes = BODY, agent_id: str = "echo-http") -> str:
    with pytest.raises(RelaySignatureError) as info:
        verify_relay_signature(PUBLIC, headers, body, agent_id, now=NOW)
    return str(info.value)


def test_the_signed_bytes_are_tag_timestamp_agent_and_body() -> None:
    assert signed_message(NOW, "echo-http", b"{}") == b"spine-relay-v1\n1767225600\necho-http\n{}"
    assert signed_message("7", "a", b"") == b"spine-relay-v1\n7\na\n"
    with pytest.raises(ValueError, match="no line break"):
        signed_message(NOW, "a\nb", b"")
    with pytest.raises(ValueError, match="not a decimal"):
        signed_message("-1", "a", b"")


def test_a_relay_call_verifies_with_any_header_case() -> None:
    headers = signed()
    verify_relay_signature(PUBLIC, headers, BODY, "echo-http", now=NOW)
    lower = {k.lower(): v for k, v in headers.items()}
    verify_relay_signature(PUBLIC, lower, BODY, "echo-http", now=NOW + 299)
    verify_relay_signature(PUBLIC, lower, BODY, "echo-http", now=NOW - 299)


def test_an_empty_body_signs_like_any_other() -> None:  # GET /health
    verify_relay_signature(PUBLIC, signed(body=b""), b"", "echo-http", now=NOW)
    assert "does not verify" in refusal(signed(body=b""), body=b"{}")


@pytest.mark.parametrize(
    "tampered",
    [
        BODY.replace(b"hi", b"ho"),
        BODY + b" ",
        BODY[:-1],
        b"",
    ],
)
def test_a_changed_body_fails(tampered: bytes) -> None:
    assert "the signature does not verify" in refusal(signed(), body=tampered)


def test_a_changed_timestamp_fails() -> None:
    headers = {**signed(), TIMESTAMP_HEADER: str(NOW + 1)}
    assert "does not verify" in refusal(headers)


def test_a_call_signed_for_another_agent_fails() -> None:
    # the header says who it was for: refused without looking further
    assert refusal(signed("zoe-http")) == "signed for agent 'zoe-http', not 'echo-http'"
    # the header rewritten to match: the signature was over the other id
    headers = {**signed("zoe-http"), AGENT_ID_HEADER: "echo-http"}
    assert "does not verify" in refusal(headers)


def test_an_old_or_future_timestamp_is_outside_the_window() -> None:
    old = refusal(signed(at=NOW - 301))
    assert old == "X-Spine-Timestamp is 301s old (more than 300s)"
    future = refusal(signed(at=NOW + 400))
    assert future == "X-Spine-Timestamp is 400s in the future (more than 300s)"
    with pytest.raises(RelaySignatureError, match="61s old"):
        verify_relay_signature(
            PUBLIC, signed(at=NOW - 61), BODY, "echo-http", max_skew_s=60, now=NOW
        )


@pytest.mark.parametrize("missing", [SIGNATURE_HEADER, TIMESTAMP_HEADER, AGENT_ID_HEADER])
def test_an_unsigned_call_names_the_missing_header(missing: str) -> None:
    headers = {k: v for k, v in signed().items() if k != missing}
    assert refusal(headers) == f"missing header {missing}"


def test_another_key_fails_and_the_key_id_says_which() -> None:
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    forged = {
        **signed(),
        SIGNATURE_HEADER: base64.b64encode(
            other.sign(signed_message(NOW, "echo-http", BODY))
        ).decode(),
    }
    assert "does not verify" in refusal(forged)
    rotated = {**signed(), KEY_ID_HEADER: "0123456789abcdef"}
    assert "signed with key '0123456789abcdef', not the relay key" in refusal(rotated)
    # the key id is informative: without it the signature alone decides
    without = {k: v for k, v in signed().items() if k != KEY_ID_HEADER}
    verify_relay_signature(PUBLIC, without, BODY, "echo-http", now=NOW)


def test_garbage_headers_are_refused_not_crashes() -> None:
    assert "not base64" in refusal({**signed(), SIGNATURE_HEADER: "%%%"})
    assert "does not verify" in refusal({**signed(), SIGNATURE_HEADER: "AAAA"})
    assert "is not Unix seconds" in refusal({**signed(), TIMESTAMP_HEADER: "soon"})
    assert "is not Unix seconds" in refusal({**signed(), TIMESTAMP_HEADER: "١٢٣"})


def test_the_public_key_in_every_form_an_author_has() -> None:
    pem = PUBLIC.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    b64 = base64.b64encode(RAW).decode()
    for form in (PUBLIC, pem, pem.decode(), RAW, b64, f"  {b64}\n"):
        verify_relay_signature(form, signed(), BODY, "echo-http", now=NOW)
        assert load_public_key(form).public_bytes(Encoding.Raw, PublicFormat.Raw) == RAW
    with pytest.raises(ValueError, match="32 bytes"):
        load_public_key(base64.b64encode(b"short").decode())
    with pytest.raises(ValueError, match="not a PEM"):
        load_public_key("not a key at all!")


# --- the snippets of docs/agents.md work as written ------------------------------------
def _doc_snippets() -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "agents.md").read_text()
    section = text.split("### Verifying the relay's calls", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def _relay_call(body: bytes, agent_id: str = "my-agent") -> dict[str, str]:
    stamp = int(time.time())
    signature = KEY.sign(signed_message(stamp, agent_id, body))
    return {
        "X-Spine-Agent-Id": agent_id,
        "X-Spine-Timestamp": str(stamp),
        "X-Spine-Key-Id": key_id(RAW),
        "X-Spine-Signature": base64.b64encode(signature).decode(),
    }


async def test_the_documented_fastapi_agent_serves_only_signed_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sdk_snippet, _ = _doc_snippets()
    pem = PUBLIC.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    monkeypatch.setenv("RELAY_PUBLIC_KEY", pem)
    namespace: dict[str, Any] = {}
    exec(compile(sdk_snippet, "docs/agents.md", "exec"), namespace)
    body = b'{"execution_id": "e-1", "node_id": "n1"}'
    transport = httpx.ASGITransport(app=namespace["app"])
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        signed = await client.post("/execute", content=body, headers=_relay_call(body))
        unsigned = await client.post("/execute", content=body)
        other = await client.post("/execute", content=body, headers=_relay_call(body, "zoe"))
    assert signed.status_code == 200 and signed.json()["execution_id"] == "e-1"
    assert (unsigned.status_code, unsigned.json()) == (
        401,
        {"detail": "missing header X-Spine-Signature"},
    )
    assert other.status_code == 401


def test_the_documented_check_without_the_sdk_agrees_with_it() -> None:
    _, plain_snippet = _doc_snippets()
    namespace: dict[str, Any] = {}
    exec(compile(plain_snippet, "docs/agents.md", "exec"), namespace)
    verify = namespace["verify"]
    pem = PUBLIC.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    body = b'{"execution_id": "e-1"}'
    verify(pem, _relay_call(body), body, "my-agent")
    with pytest.raises(InvalidSignature):
        verify(pem, _relay_call(body), body + b" ", "my-agent")
    with pytest.raises(ValueError, match="not for this agent"):
        verify(pem, _relay_call(body, "zoe"), body, "my-agent")
