"""Bearer API keys for the REST API: `Authorization: Bearer <key>`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponse
from ninja.security import HttpBearer

from mailgate.keys.check import APIKeyError, count_request, find_key, note_use
from mailgate.keys.models import APIKey

if TYPE_CHECKING:
    from ninja import NinjaAPI

__all__ = ["APIKeyError", "BearerKey", "api_key_error_response"]


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
        key = find_key(token, self.actions)
        count_request(key)
        note_use(key)
        return key


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
