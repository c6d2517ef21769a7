"""Provider plugins: one package each; registered in REGISTRY (docs/architecture.md, "Adding a provider")."""

from __future__ import annotations

from mailgate.providers.base import Provider
from mailgate.providers.google import PROVIDER as GOOGLE
from mailgate.providers.microsoft import PROVIDER as MICROSOFT

REGISTRY: dict[str, Provider] = {p.key: p for p in (MICROSOFT, GOOGLE)}


def get(key: str) -> Provider:
    return REGISTRY[key]
