"""The relay signs each call to an HTTP agent (docs/agents.md, "Verifying the relay's calls").

The key file (created 0600 when missing, ``.pub`` beside it, the same key for two relays
starting together), the ``spine-relay public-key`` command, and what a real local HTTP
server receives from :func:`deliver` and :func:`probe`: headers whose signature the SDK's
verifier accepts over exactly the body received, and refuses once anything is changed.
"""

from __future__ import annotations

import base64
import re
import stat
import threading
from pathlib import Path

import orjson
import pytest
from agent_http import Received, http_reply, serving, success
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)
from spine_agent import Task
from spine_agent.http import RelaySignatureError, verify_relay_signature
from spine_agent.testing import task_message
from spine_registry.addresses import AddressPolicy
from spine_registry.relay import run
from spine_registry.relay.delivery import RetryPolicy, deliver
from spine_registry.relay.guard import guarded_client
from spine_registry.relay.keyfile import SigningKeyError, load_or_create, public_pem
from spine_registry.relay.probe import probe
from spine_registry.relay.signing import RelaySigner

AGENT = "echo-http"
LOOPBACK = AddressPolicy.from_setting("127.0.0.1/32")
POLICY = RetryPolicy(max_retries=2, backoff_s=0.01, max_backoff_s=0.01)
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key()
NOW = 1_767_225_600


def make_task() -> Task:
    return Task.from_message(
        task_message(AGENT, execution_id="exec-1", node_id="n1", input={"user_message": "hi"})
    )


def raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def verify(request: Received, *, agent_id: str = AGENT, now: float = NOW) -> None:
    verify_relay_signature(PUBLIC, request.headers, request.body, agent_id, now=now)


# --- the key file ----------------------------------------------------------------------
def test_a_missing_key_is_created_private_with_its_public_half_beside_it(tmp_path: Path) -> None:
    path = tmp_path / "relay" / "signing-key.pem"
    first = load_or_create(path)
    assert first.created and first.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert first.public_file == tmp_path / "relay" / "signing-key.pem.pub"
    assert first.public_file.read_bytes() == public_pem(first.key)
    assert first.public_file.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    again = load_or_create(path)
    assert not again.created
    assert raw(again.key) == raw(first.key)


def test_an_existing_key_is_used_and_its_pub_file_refreshed(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    (tmp_path / "k.pem.pub").write_text("stale")
    loaded = load_or_create(path)
    assert not loaded.created
    assert (tmp_path / "k.pem.pub").read_bytes() == public_pem(KEY)


def test_a_read_only_place_or_a_loose_mode_is_reported_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(KEY.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o644)
    (tmp_path / "k.pem.pub").mkdir()  # cannot become the file, like a read-only mount
    loaded = load_or_create(path)
    assert raw(loaded.key) == raw(KEY)
    assert loaded.public_file is None and loaded.public_file_error
    assert loaded.readable_by_others
    path.chmod(0o440)  # a Kubernetes Secret mount: owner and group
    assert not load_or_create(path).readable_by_others


def test_two_relays_starting_together_share_one_key(tmp_path: Path) -> None:
    path = tmp_path / "shared" / "signing-key.pem"
    start = threading.Barrier(8)
    keys: list[bytes] = []

    def one() -> None:
        start.wait()
        keys.append(raw(load_or_create(path).key))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_a_key_file_that_is_not_an_ed25519_key_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key")
    with pytest.raises(SigningKeyError, match="SPINE_RELAY_SIGNING_KEY_FILE=.*junk.pem: not an"):
        load_or_create(junk)
    ec = tmp_path / "ec.pem"
    ec.write_bytes(
        generate_private_key(SECP256R1()).private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()
        )
    )
    with pytest.raises(SigningKeyError, match="not an Ed25519 key"):
        load_or_create(ec)
    with pytest.raises(SigningKeyError, match="cannot be created"):
        load_or_create(junk / "below-a-file.pem")


def test_the_public_key_command_prints_what_agents_verify_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "signing-key.pem"
    monkeypatch.setenv("SPINE_RELAY_SIGNING_KEY_FILE", str(path))
    run(["public-key"])
    pem = capsys.readouterr()
    assert "created a new signing key" in pem.err
    assert pem.out.encode() == (tmp_path / "signing-key.pem.pub").read_bytes()
    run(["public-key", "--base64"])
    raw_b64 = capsys.readouterr()
    assert raw_b64.err == ""  # the same key, not a new one
    assert base64.b64decode(raw_b64.out.strip()) == raw(load_or_create(path).key)


# --- what the agent receives -----------------------------------------------------------
async def test_execute_carries_a_signature_over_exactly_the_body() -> None:
    signer = RelaySigner(KEY, clock=lambda: NOW)
    async with serving(success()) as server, guarded_client(LOOPBACK) as client:
        await deliver(client, server.url, make_task(), POLICY, sign=signer.for_agent(AGENT))
    [request] = server.requests
    assert (request.method, request.target) == ("POST", "/execute")
    assert request.headers["x-spine-agent-id"] == AGENT
    assert request.headers["x-spine-timestamp"] == str(NOW)
    assert request.headers["x-spine-key-id"] == signer.key_id
    assert orjson.loads(request.body)["execution_id"] == "exec-1"
    verify(request)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("body", "the signature does not verify"),
        ("timestamp", "the signature does not verify"),
        ("agent id", "signed for agent 'echo-http', not 'zoe-http'"),
        ("agent id header", "the signature does not verify"),
        ("old", "is 301s old (more than 300s)"),
    ],
)
async def test_a_tampered_or_stale_call_fails_verification(change: str, reason: str) -> None:
    signer = RelaySigner(KEY, clock=lambda: NOW)
    async with serving(success()) as server, guarded_client(LOOPBACK) as client:
        await deliver(client, server.url, make_task(), POLICY, sign=signer.for_agent(AGENT))
    [request] = server.requests
    headers, body, agent_id, now = dict(request.headers), request.body, AGENT, NOW
    if change == "body":
        body = body.replace(b'"hi"', b'"hI"')
    elif change == "timestamp":
        headers["x-spine-timestamp"] = str(NOW - 1)
    elif change == "agent id":
        agent_id = "zoe-http"
    elif change == "agent id header":
        headers["x-spine-agent-id"] = agent_id = "zoe-http"
    else:
        now = NOW + 301
    with pytest.raises(RelaySignatureError, match=re.escape(reason)):
        verify_relay_signature(PUBLIC, headers, body, agent_id, now=now)


async def test_each_retry_is_signed_afresh() -> None:
    ticks = iter(range(NOW, NOW + 10))
    signer = RelaySigner(KEY, clock=lambda: next(ticks))
    answers = iter([http_reply("503 Service Unavailable", b"busy")])

    def reply(request: Received) -> bytes:
        return next(answers, None) or success()(request)

    async with serving(reply) as server, guarded_client(LOOPBACK) as client:
        await deliver(client, server.url, make_task(), POLICY, sign=signer.for_agent(AGENT))
    first, second = server.requests
    assert first.body == second.body
    assert first.headers["x-spine-timestamp"] == str(NOW)
    assert second.headers["x-spine-timestamp"] == str(NOW + 1)
    verify(first)
    verify(second, now=NOW + 1)


async def test_the_health_probe_is_signed_over_the_empty_body() -> None:
    signer = RelaySigner(KEY, clock=lambda: NOW)
    async with serving(http_reply("200 OK", b'{"ready": true}')) as server:
        async with guarded_client(LOOPBACK) as client:
            result = await probe(client, server.url, 2.0, sign=signer.for_agent(AGENT))
    assert result.ready
    [request] = server.requests
    assert (request.method, request.target, request.body) == ("GET", "/health", b"")
    verify(request)
