"""Where an agent's signing key comes from (docs/agents.md, "The agent's key").

Everything an agent publishes — its registration, its heartbeats, its results — is signed
with its Ed25519 key (:mod:`spine_contracts.signing`), or the orchestrator and the
registry refuse it. The operator creates the key and records its public half on the bus
in one step, ``spine-admin issue-agent <agent_id>``, which writes the private key to
``.spine/agents/<agent_id>/signing-key.pem`` (0600); the agent reads it from there, or
from ``SPINE_AGENT_SIGNING_KEY_FILE``. A missing key stops the agent before it touches
Kafka, with the command that makes one: an agent that cannot sign would only have its
work refused.
"""

from __future__ import annotations

from pathlib import Path

from spine_contracts.signing import Signer, SigningKeyError

#: ``spine-admin issue-agent``'s default ``--key-dir``, relative to the working directory
DEFAULT_KEY_DIR = Path(".spine/agents")
KEY_FILE_NAME = "signing-key.pem"
KEY_FILE_SETTING = "SPINE_AGENT_SIGNING_KEY_FILE"

__all__ = ["DEFAULT_KEY_DIR", "KEY_FILE_NAME", "SigningKeyError", "default_key_file", "load"]


def default_key_file(agent_id: str, key_dir: Path = DEFAULT_KEY_DIR) -> Path:
    """Where ``spine-admin issue-agent <agent_id> --key-dir <key_dir>`` writes the key."""
    return key_dir / agent_id / KEY_FILE_NAME


def load(agent_id: str, key_file: Path | None = None) -> Signer:
    """The agent's signer from ``key_file`` (default :func:`default_key_file`); raises
    :class:`SigningKeyError` saying how to issue the agent when there is none."""
    path = key_file or default_key_file(agent_id)
    setting = f"{KEY_FILE_SETTING}={path}" if key_file else f"the default key file {path}"
    try:
        return Signer.from_file(path, setting)
    except SigningKeyError as exc:
        raise SigningKeyError(
            f"agent {agent_id!r} has no usable signing key: {exc}. The operator issues one "
            f"with `spine-admin issue-agent {agent_id}` (make agent-credentials "
            f"AGENT={agent_id}); point {KEY_FILE_SETTING} at the file it writes"
        ) from exc
