"""The vocabulary of trust (DESIGN §12) every service shares: who owns what, which scopes a
key may carry, and how a principal is named on the bus.

Owners: a flow or an agent belongs to :data:`SYSTEM` (flow files, the admin's writes, the
demo agents: everyone may use them, only the admin changes them) or to one user id.
Actors: every command records who acted — a key id (``key_…``), :data:`MASTER` for the
operator's master key, or a service name for what a service decided on its own.
"""

from __future__ import annotations

import hashlib
from typing import Final, Literal, get_args

#: The owner of shared flows and agents, and the account that holds the admin keys.
SYSTEM: Final = "system"
#: The actor recorded for the master key (``API_KEY``).
MASTER: Final = "master"

Scope = Literal["executions:run", "executions:read", "flows:write", "agents:write"]
#: Every scope a user key can carry; the key from ``users/create`` has them all.
USER_SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)
Role = Literal["user", "admin"]
#: Keys a user may hold at once (expired and revoked keys do not count).
MAX_KEYS_PER_USER: Final = 20
#: The longest an admin key minted with the master key may live.
MAX_ADMIN_KEY_TTL_S: Final = 12 * 3600


def primary_key_id(user_id: str) -> str:
    """The id of the key ``users/create`` returned (stable across ``regenerate-key``):
    derived from the user id, so events written before key ids existed still name it."""
    return "key_" + hashlib.sha256(f"primary:{user_id}".encode()).hexdigest()[:16]


def owner_may_use(owner: str, user_id: str) -> bool:
    """Whether a flow or agent of ``owner`` is usable by ``user_id``'s executions."""
    return owner == SYSTEM or owner == user_id
