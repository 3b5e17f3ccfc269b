"""Keys: a user's further keys (scoped, expiring) and the admin keys the master key mints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from ..deps import KeysCallerDep, KeysDep
from ..errors import error_responses
from ..models import ID_PATTERN, CreateKeyRequest, KeyList, KeyRevokedView, NewScopedKey
from . import answer

router = APIRouter(
    prefix="/keys", tags=["keys"], responses=error_responses(401, 403, 413, 422, 429, 503)
)


@router.get("", response_model=KeyList)
async def list_keys(caller: KeysCallerDep, keys: KeysDep) -> Response:
    """The caller's account's keys (the admin: the admin keys): id, name, scopes, last four
    characters, created, last used, expiry — never a secret."""
    return answer(await keys.list(caller))


@router.post("", status_code=201, response_model=NewScopedKey, responses=error_responses(409))
async def create_key(body: CreateKeyRequest, caller: KeysCallerDep, keys: KeysDep) -> Response:
    """A further key, its secret in this answer only. Scopes are a subset of the calling
    key's (default: all of them) and the expiry no later than its own (403 otherwise); at
    most 20 keys at once per user, 10 created per minute. With the master key (or an admin
    key): an admin key, expiring within 12 hours (default 1 hour)."""
    return answer(await keys.create(caller, body), 201)


@router.delete("/{key_id}", response_model=KeyRevokedView, responses=error_responses(404))
async def revoke_key(
    key_id: Annotated[str, Path(pattern=ID_PATTERN)], caller: KeysCallerDep, keys: KeysDep
) -> Response:
    """Revoke a key: any key itself, or a key no wider than the calling one; every gateway
    refuses it within a second and its open streams close."""
    return answer(await keys.revoke(caller, key_id))
