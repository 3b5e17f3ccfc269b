"""The relay's Ed25519 signing key on disk (``SPINE_RELAY_SIGNING_KEY_FILE``).

The relay signs its calls to HTTP agents (:mod:`.signing`); agents trust its public key,
so the key must outlive restarts and be the same for every relay replica: it is a file
(a Kubernetes Secret, a compose volume, ``.spine/relay/`` under ``make up``), not
something made up per process.

* :func:`load_or_create` reads the PEM (PKCS#8, unencrypted); when the file is missing it
  generates a key and writes it ``0600`` in a ``0700`` directory, atomically and without
  ever replacing a key another process wrote first (two relays starting together end up
  with the same key), plus ``<file>.pub`` beside it for the agent authors.
* A key readable by other users is used but warned about: the file mode is the only
  protection it has (DESIGN §12).
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
from spine_servicekit.logging import get_logger

log = get_logger(__name__)

#: The setting naming the key file, quoted in errors.
KEY_FILE_SETTING = "SPINE_RELAY_SIGNING_KEY_FILE"


class SigningKeyError(RuntimeError):
    """The key file exists but is not a usable Ed25519 private key, or cannot be written."""


@dataclass(frozen=True)
class LoadedKey:
    key: Ed25519PrivateKey
    path: Path
    created: bool
    #: ``<path>.pub``, or None where it could not be written
    public_file: Path | None


def public_pem(key: Ed25519PrivateKey) -> bytes:
    """The public half as SubjectPublicKeyInfo PEM (what ``openssl pkey -pubout`` prints)."""
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def public_path(path: Path) -> Path:
    return path.with_name(path.name + ".pub")


def _read(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"{KEY_FILE_SETTING}={path}: not an unencrypted PEM private key ({exc})"
        ) from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{KEY_FILE_SETTING}={path}: a {type(key).__name__}, not an Ed25519 key"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:
        log.warning("relay_signing_key_readable_by_others", path=str(path), mode=oct(mode))
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


def write_public(path: Path, key: Ed25519PrivateKey) -> Path | None:
    """``<path>.pub`` (0644) when it is missing or stale; None where it cannot be written
    (a read-only Secret mount: ``spine-relay public-key`` prints it there)."""
    target = public_path(path)
    pem = public_pem(key)
    tmp: str | None = None
    try:
        if target.exists() and target.read_bytes() == pem:
            return target
        fd, tmp = tempfile.mkstemp(prefix=".signing-key-pub-", dir=path.parent)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        log.info("relay_public_key_file_not_written", path=str(target), reason=str(exc))
        return None
    finally:
        if tmp is not None:
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
    return LoadedKey(key, path, created, write_public(path, key))
