"""The API app's model: APIKey, defined in mailgate.keys (below the mail layer, for the relay)."""

from __future__ import annotations

from mailgate.keys.models import (
    ADMIN,
    KEY_PREFIX,
    PREFIX_LENGTH,
    READ,
    SCOPE_ACTIONS,
    SCOPES,
    SEND,
    APIKey,
    hash_key,
)

__all__ = [
    "ADMIN",
    "KEY_PREFIX",
    "PREFIX_LENGTH",
    "READ",
    "SCOPES",
    "SCOPE_ACTIONS",
    "SEND",
    "APIKey",
    "hash_key",
]
