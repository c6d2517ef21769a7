"""Bearer API keys for the REST API: `Authorization: Bearer <key>`."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from ninja.security import HttpBearer

from mailgate.api.models import APIKey, hash_key

if TYPE_CHECKING:
    from ninja import NinjaAPI

# last_used_at is written at most this often per key, so a busy client does not write on every call.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class APIKeyError(Exception):
    """A request's API key is missing, malformed, unknown or revoked; the message says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class BearerKey(HttpBearer):
    """Authenticates a request by its API key; `request.auth` is the APIKey row."""

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
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > LAST_USED_RESOLUTION:
            APIKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
        return key


def api_key_error_response(
    api: NinjaAPI, request: HttpRequest, exc: APIKeyError | type[APIKeyError]
) -> HttpResponse:
    """401 with a JSON body naming the problem (RFC 6750 §3 WWW-Authenticate challenge).

    `api` renders the body, so the answer looks like every other one of that API; it is passed in
    (bound with functools.partial where the API is built) so this module does not import the API.
    """
    code = exc.code if isinstance(exc, APIKeyError) else "invalid_api_key"
    response = api.create_response(request, {"detail": str(exc), "code": code}, status=401)
    response["WWW-Authenticate"] = (
        f'Bearer realm="mailgate", error="invalid_token", error_description="{code}"'
    )
    if code == "missing_api_key":
        response["WWW-Authenticate"] = 'Bearer realm="mailgate"'
    return response
