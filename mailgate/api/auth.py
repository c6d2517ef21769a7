"""Bearer API keys for the REST API: `Authorization: Bearer <key>`."""

from __future__ import annotations

import datetime as dt
import math
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja.security import HttpBearer

from mailgate.accounts import throttle
from mailgate.api.models import APIKey, hash_key

if TYPE_CHECKING:
    from ninja import NinjaAPI

# last_used_at is written at most this often per key, so a busy client does not write on every call.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class APIKeyError(Exception):
    """A request's API key is missing, malformed, unknown, revoked, lacks the scope (403) or has
    made too many requests (429, retry_after seconds); the message says which."""

    def __init__(self, code: str, message: str, status: int = 401, retry_after: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.retry_after = retry_after


class BearerKey(HttpBearer):
    """Authenticates a request by its API key; `request.auth` is the APIKey row.

    With `actions`, the key's scope must allow one of them (403 otherwise); every key is held to
    MAILGATE_API_RATE_LIMIT requests a minute (429 with Retry-After past it).
    """

    def __init__(self, actions: set[str] | None = None) -> None:
        super().__init__()
        self.actions = actions

    def __call__(self, request: HttpRequest) -> Any:
        header = request.headers.get(self.header, "")
        if not header:
            raise APIKeyError(
                "missing_api_key",
                "No API key: send the header 'Authorization: Bearer <key>' with a key created "
                "in Settings \u203a API Keys or with `mailgate api-keys create`.",
            )
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise APIKeyError(
                "malformed_authorization",
                "The Authorization header must be 'Bearer <key>'.",
            )
        return self.authenticate(request, token.strip())

    def authenticate(self, request: HttpRequest, token: str) -> APIKey:
        key = APIKey.objects.filter(key_hash=hash_key(token)).first()
        if key is None:
            raise APIKeyError("invalid_api_key", "The API key is not valid.")
        if key.revoked_at is not None:
            raise APIKeyError(
                "revoked_api_key",
                f"The API key {key.prefix}… was revoked on {key.revoked_at:%Y-%m-%d}: "
                "create a new one.",
            )
        if self.actions is not None and not any(key.allows(a) for a in self.actions):
            needed = "read" if "read_all" in self.actions else "send"
            raise APIKeyError(
                "insufficient_scope",
                f"The API key {key.prefix}… has scope {key.scope!r}, which does not allow this: "
                f"it needs scope {needed} or admin (`mailgate apikeys create --name N "
                f"--scope {needed}`).",
                status=403,
            )
        _count_request(key)
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
            APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
        return key


def _count_request(key: APIKey) -> None:
    """Count the request against the key's rate (atomic across processes); 429 past the limit."""
    limit = settings.MAILGATE_API_RATE_LIMIT
    if not limit:
        return
    count, window_end = throttle.hit(f"apikey:{key.pk}", 60)
    if count > limit:
        wait = max(1, math.ceil((window_end - timezone.now()).total_seconds()))
        raise APIKeyError(
            "rate_limited",
            f"The API key {key.prefix}… made more than {limit} requests this minute "
            f"(MAILGATE_API_RATE_LIMIT): retry after {wait} seconds.",
            status=429,
            retry_after=wait,
        )


def api_key_error_response(
    api: NinjaAPI, request: HttpRequest, exc: APIKeyError | type[APIKeyError]
) -> HttpResponse:
    """401 with a JSON body naming the problem (RFC 6750 §3 WWW-Authenticate challenge).

    `api` renders the body, so the answer looks like every other one of that API; it is passed in
    (bound with functools.partial where the API is built) so this module does not import the API.
    """
    code = exc.code if isinstance(exc, APIKeyError) else "invalid_api_key"
    status = exc.status if isinstance(exc, APIKeyError) else 401
    body = {"detail": str(exc), "code": code, "errors": {"Authorization": str(exc)}}
    response = api.create_response(request, body, status=status)
    if status == 429:
        response["Retry-After"] = str(exc.retry_after if isinstance(exc, APIKeyError) else 60)
        return response
    error = "insufficient_scope" if status == 403 else "invalid_token"
    response["WWW-Authenticate"] = (
        f'Bearer realm="mailgate", error="{error}", error_description="{code}"'
    )
    if code == "missing_api_key":
        response["WWW-Authenticate"] = 'Bearer realm="mailgate"'
    return response
