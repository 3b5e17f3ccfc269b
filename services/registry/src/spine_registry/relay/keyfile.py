"""The relay's Ed25519 signing key on disk (``SPINE_RELAY_SIGNING_KEY_FILE``).

The relay signs its calls to HTTP agents (:mod:`.signing`); agents trust its public key,
so the key must outlive restarts and be the same for every relay replica: it is a file
(a Kubernetes Secret, a compose volume, ``.spine/relay/`` under ``make up``), not
something made up per process.

* :func:`load_or_create` reads the PEM (PKCS#8, unencrypted); when the file is missing it
  generates a key and writes it ``0600`` in a ``0700`` directory, atomically and without
  ever replacing a key another process wrote first (two relays starting together end up
  with the same key), plus ``<file>.pub`` beside it for the agent authors.
* A key readable by other users is used, and :class:`LoadedKey` says so for the caller
  to warn: the file mode is the only protection it has (DESIGN §12). Nothing here logs:
  ``spine-relay public-key`` prints the key on stdout, which must hold nothing else.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

#: The setting naming the key file, quoted in errors.
KEY_FILE_SETTING = "SPINE_RELAY_SIGNING_KEY_FILE"


class SigningKeyError(RuntimeError):
    """The key file exists but is not a usable Ed25519 private key, or cannot be written."""


@dataclass(frozen=True)
class LoadedKey:
    key: Ed25519PrivateKey
    path: Path
    created: bool
    #: ``<path>.pub``, or None where it could not be written (then why not)
    public_file: Path | None
    public_file_error: str | None
    #: the file's permission bits let users other than its owner and group read it
    readable_by_others: bool


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """The public half as SubjectPublicKeyInfo PEM (what ``openssl pkey -pubout`` prints)."""
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def public_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def _read(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"{KEY_FILE_SETTING}={path} cannot be read: {exc}") from exc
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"{KEY_FILE_SETTING}={path}: not an unencrypted PEM private key ({exc})"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{KEY_FILE_SETTING}={path}: a {type(key).__name__}, not an Ed25519 key"
        )
    return key


def _write_new(path: Path) -> bool:
    """Write a new key at ``path`` unless one appears there first; True if ours is there."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    fd, tmp = tempfile.mkstemp(prefix=".signing-key-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)  # never replaces: the first writer's key wins
        except FileExistsError:
            return False
    finally:
        os.unlink(tmp)
    return True


def write_public(path: Path, key: Ed25519PrivateKey) -> Path:
    """``<path>.pub`` (0644), written when it is missing or stale; raises ``OSError`` where
    it cannot be (a read-only Secret mount: ``spine-relay public-key`` prints it there)."""
    target = public_path(path)
    pem = public_pem(key)
    if target.exists() and target.read_bytes() == pem:
        return target
    fd, tmp = tempfile.mkstemp(prefix=".signing-key-pub-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def load_or_create(path: Path) -> LoadedKey:
    """The key at ``path``, generated first if the file does not exist (blocking I/O: call
    it from a thread in async code)."""
    created = False
    if not path.exists():
        try:
            created = _write_new(path)
        except OSError as exc:
            raise SigningKeyError(
                f"{KEY_FILE_SETTING}={path} does not exist and cannot be created: {exc}"
            ) from exc
    key = _read(path)
    public_file: Path | None = None
    public_error: str | None = None
    try:
        public_file = write_public(path, key)
    except OSError as exc:
        public_error = str(exc)
    others = bool(stat.S_IMODE(path.stat().st_mode) & 0o007)
    return LoadedKey(key, path, created, public_file, public_error, others)
