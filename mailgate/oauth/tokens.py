"""The token lifecycle: `get_fresh_access_token(server)` for every component that needs a token.

One refresh at a time per grant, for all threads, processes and machines: a caller claims the refresh
with a compare-and-swap on the grant row, calls the identity provider with no database transaction
open, then writes the rotated tokens (or the failure) in a short one; concurrent callers wait for
that result instead of calling again. A claim outlives no refresh: it lapses after claim_lifetime().
Call these functions outside a caller's transaction so failures are recorded.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from mailgate import providers
from mailgate.audit.log import record
from mailgate.crypto import Sealed
from mailgate.oauth.models import REFRESH_IDLE_AFTER, STATE_LIFETIME, Grant, OAuthState
from mailgate.providers.base import OAuthFlow, TokenSet, revealed
from mailgate.providers.errors import (
    ClientCredentialsInvalid,
    ReconnectRequired,
    TokenError,
    TokenUnavailable,
)
from mailgate.providers.http import timeout as http_timeout
from mailgate.servers.models import MailServer, ServerStatus
from mailgate.servers.signals import mail_may_flow

log = logging.getLogger("mailgate.oauth")

# Transient failures: retried within the call after these pauses, then across calls with back-off.
RETRY_PAUSES: tuple[float, ...] = (0.5,)
BACKOFF_FIRST = dt.timedelta(seconds=30)
BACKOFF_MAX = dt.timedelta(minutes=15)
# After a refusal of the app's credentials, wait this long before asking again (unless the
# secret is replaced, which clears the wait).
CREDENTIALS_RETRY = dt.timedelta(minutes=5)
IDLE_BATCH = 20
# How often a caller waiting for another's refresh looks at the grant row.
CLAIM_POLL_SECONDS = 0.1


def flow_for(server: MailServer) -> OAuthFlow:
    key = server.provider_key
    flow = providers.get(key).flow if key else None
    if flow is None:
        raise TokenError(
            f"{server.name} uses {server.auth_label}, which has no OAuth tokens",
            diagnosis="Only Outlook and Gmail OAuth servers have tokens.",
            code="not_oauth",
        )
    return flow


def not_connected(server: MailServer) -> ReconnectRequired:
    label = providers.get(server.provider_key).connect_label if server.provider_key else "Connect"
    return ReconnectRequired(
        f"{server.name} is not connected",
        diagnosis=f"Press {label} on the server's page and sign in as {server.username}.",
        code="not_connected",
    )


def get_fresh_access_token(server: MailServer, *, refused: str | None = None) -> str:
    """An access token valid for at least 5 more minutes; raises a TokenError subclass otherwise.

    `refused`: a server refused that token, so a new one is asked for even if it looks valid,
    unless the stored token is already another one (a caller that was refused the same token
    renewed it meanwhile; callers that waited on the same refresh share its result).
    """
    grant = Grant.objects.filter(server_id=server.pk).first()
    if grant is None:
        raise not_connected(server)
    if not grant.is_dead and _usable_instead_of(grant, refused):
        return revealed(grant.access_token)
    return refresh_access_token(server.pk, reuse_fresh=refused is None, refused=refused)


def refresh_access_token(
    server_id: int,
    *,
    reuse_fresh: bool = True,
    refused: str | None = None,
    idle_before: dt.datetime | None = None,
) -> str:
    """Refresh once for everyone; concurrent callers wait for that refresh and take its result.

    The refresh is claimed with a compare-and-swap on the grant row (refresh_claim), the identity
    provider is called with no transaction open (a slow or hanging token endpoint holds no lock,
    so enqueues and the worker's writes go on), and the result is written in a short transaction.
    `reuse_fresh=False` forces a refresh even when the stored token looks fresh (a server refused
    it), except that a usable stored token other than `refused` is taken instead. With
    `idle_before`, refresh only when the last success is older (the background step).
    Call it outside a caller's transaction so that a failure is recorded.
    """
    claim = uuid.uuid4().hex
    waited_for: tuple[int, dt.datetime | None] | None = None
    deadline = time.monotonic() + claim_lifetime().total_seconds() + 5
    while True:
        grant = Grant.objects.select_related("server").filter(server_id=server_id).first()
        if grant is None:
            raise not_connected(MailServer.objects.get(pk=server_id))
        server = grant.server
        now = timezone.now()
        if waited_for is not None and waited_for != (grant.refresh_count, grant.last_error_at):
            # The refresh we waited for is done: its result is ours too.
            return _result_of_refresh(grant)
        early = _answer_without_refresh(grant, now, reuse_fresh, idle_before, refused)
        if early is not None:
            return early
        expired = Q(refresh_claimed_until__isnull=True) | Q(refresh_claimed_until__lt=now)
        # Taken only if unclaimed and unchanged since read (no refresh finished in between).
        taken = (
            Grant.objects.filter(
                pk=grant.pk,
                connected_at=grant.connected_at,
                refresh_count=grant.refresh_count,
                last_error_at=grant.last_error_at,
            )
            .filter(expired)
            .update(refresh_claim=claim, refresh_claimed_until=now + claim_lifetime())
        )
        if taken:
            break
        if time.monotonic() > deadline:
            raise TokenUnavailable(
                f"the token refresh for {server.name} by another process did not finish",
                diagnosis="The identity provider answers slowly; the next attempt retries.",
                code="refresh_in_progress",
            )
        if waited_for is None:
            waited_for = (grant.refresh_count, grant.last_error_at)
        time.sleep(CLAIM_POLL_SECONDS)
    tokens: TokenSet | None = None
    failure: TokenError | None = None
    try:
        tokens = _refresh_with_retries(flow_for(server), server, grant)
    except TokenError as exc:
        failure = exc
    except BaseException:
        _release_claim(grant, claim)
        raise
    return _store_result(grant, claim, tokens, failure, now)


def claim_lifetime() -> dt.timedelta:
    """How long a refresh claim lasts: every try of the token call timing out, plus the pauses."""
    tries = len(RETRY_PAUSES) + 1
    seconds = tries * (http_timeout().read or 15.0) + sum(RETRY_PAUSES) + 10
    return dt.timedelta(seconds=seconds)


def _answer_without_refresh(
    grant: Grant,
    now: dt.datetime,
    reuse_fresh: bool,
    idle_before: dt.datetime | None,
    refused: str | None = None,
) -> str | None:
    """The stored token when no refresh is needed (or allowed yet); raise when none can be had."""
    if grant.is_dead:
        raise ReconnectRequired(
            grant.last_error or f"{grant.server.name} must be reconnected",
            diagnosis=grant.last_error_diagnosis,
            code=grant.last_error_code,
        )
    if (
        idle_before is None
        and (reuse_fresh or refused is not None)
        and _usable_instead_of(grant, refused, now)
    ):
        return revealed(grant.access_token)
    if idle_before is not None and grant.last_success_at and grant.last_success_at > idle_before:
        return revealed(grant.access_token)
    if grant.next_attempt_at and grant.next_attempt_at > now:
        if grant.access_token is not None and (grant.access_expires_at or now) > now:
            return revealed(grant.access_token)
        raise _waiting_error(grant)
    return None


def _usable_instead_of(grant: Grant, refused: str | None, now: dt.datetime | None = None) -> bool:
    """The stored token looks fresh and is not the one a server refused (None: refused none)."""
    if not grant.has_usable_access_token(now):
        return False
    return refused is None or revealed(grant.access_token) != refused


def _result_of_refresh(grant: Grant) -> str:
    """What another caller's refresh, just finished, gave: its token, or its failure."""
    if grant.is_dead:
        raise ReconnectRequired(
            grant.last_error or f"{grant.server.name} must be reconnected",
            diagnosis=grant.last_error_diagnosis,
            code=grant.last_error_code,
        )
    if grant.last_error or grant.access_token is None:
        raise _waiting_error(grant)
    return revealed(grant.access_token)


def _release_claim(grant: Grant, claim: str) -> None:
    Grant.objects.filter(pk=grant.pk, refresh_claim=claim).update(
        refresh_claim="", refresh_claimed_until=None
    )


def _store_result(
    claimed: Grant,
    claim: str,
    tokens: TokenSet | None,
    failure: TokenError | None,
    now: dt.datetime,
) -> str:
    """Write the refresh's outcome in one short transaction and release the claim."""
    with transaction.atomic():
        grant = Grant.objects.select_for_update().select_related("server").get(pk=claimed.pk)
        if grant.connected_at != claimed.connected_at:
            # Connected again while we refreshed: the new sign-in's tokens win.
            _release_claim(grant, claim)
            if failure is not None:
                raise failure
            return revealed(grant.access_token)
        grant.refresh_claim, grant.refresh_claimed_until = "", None
        if failure is not None:
            _record_failure(grant, grant.server, failure, now)
        else:
            assert tokens is not None
            _record_success(grant, grant.server, tokens, now)
    if failure is not None:
        raise failure
    assert tokens is not None
    return tokens.access_token


def _refresh_with_retries(flow: OAuthFlow, server: MailServer, grant: Grant) -> TokenSet:
    pauses = list(RETRY_PAUSES)
    while True:
        try:
            return flow.refresh(
                server, refresh_token=revealed(grant.refresh_token), scopes=grant.scopes
            )
        except Exception as exc:  # every provider error is classified below
            error = flow.classify(exc)
            if not isinstance(error, TokenUnavailable) or not pauses:
                log.warning("token refresh for %s failed: %s", server.name, error)
                raise error from exc
            time.sleep(pauses.pop(0))


def _waiting_error(grant: Grant) -> TokenError:
    cls: type[TokenError] = (
        ClientCredentialsInvalid
        if grant.last_error_code and grant.server.status == ServerStatus.FAILING
        else TokenUnavailable
    )
    return cls(
        grant.last_error or "the token endpoint failed recently",
        diagnosis=(grant.last_error_diagnosis + " " if grant.last_error_diagnosis else "")
        + f"Next attempt after {grant.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC.",
        code=grant.last_error_code,
    )


def _record_success(grant: Grant, server: MailServer, tokens: TokenSet, now: dt.datetime) -> None:
    had_failure = bool(grant.last_error)
    grant.access_token = Sealed.seal(tokens.access_token)  # type: ignore[assignment]
    grant.access_expires_at = now + dt.timedelta(seconds=tokens.expires_in)
    if tokens.refresh_token:
        grant.refresh_token = Sealed.seal(tokens.refresh_token)  # type: ignore[assignment]
    if tokens.scope:
        grant.granted_scopes = tokens.scope
    grant.last_refresh_at = grant.last_success_at = now
    grant.refresh_count += 1
    grant.failures = 0
    grant.next_attempt_at = None
    grant.last_error = grant.last_error_code = grant.last_error_diagnosis = ""
    grant.last_error_at = None
    grant.save()
    recover = server.status in (ServerStatus.NOT_CONNECTED, ServerStatus.RECONNECT_REQUIRED) or (
        server.status == ServerStatus.FAILING and had_failure
    )
    if recover:
        MailServer.objects.filter(pk=server.pk).update(
            status=ServerStatus.TOKEN_VALID, status_detail=""
        )
        server.status, server.status_detail = ServerStatus.TOKEN_VALID, ""
        transaction.on_commit(lambda: release_held_mail(server))


def _record_failure(grant: Grant, server: MailServer, exc: TokenError, now: dt.datetime) -> None:
    grant.last_error = str(exc)
    grant.last_error_code = exc.code[:100]
    grant.last_error_diagnosis = exc.diagnosis
    grant.last_error_at = now
    grant.failures += 1
    detail = f"{exc}. {exc.diagnosis}".strip()
    if isinstance(exc, ReconnectRequired):
        grant.is_dead = True
        grant.next_attempt_at = None
        MailServer.objects.filter(pk=server.pk).update(
            status=ServerStatus.RECONNECT_REQUIRED, status_detail=detail
        )
    elif isinstance(exc, TokenUnavailable):
        backoff = min(BACKOFF_FIRST * (2 ** (grant.failures - 1)), BACKOFF_MAX)
        grant.next_attempt_at = now + backoff
    else:
        grant.next_attempt_at = now + CREDENTIALS_RETRY
        MailServer.objects.filter(pk=server.pk).update(
            status=ServerStatus.FAILING, status_detail=detail
        )
    grant.save()


def store_grant(server: MailServer, *, tokens: TokenSet, account: str, scopes: list[str]) -> Grant:
    """Keep the tokens of a completed sign-in (replacing any earlier grant) and mark the server Token Valid."""
    now = timezone.now()
    key = server.provider_key or ""
    with transaction.atomic():
        grant = Grant.objects.select_for_update().filter(server_id=server.pk).first() or Grant(
            server=server
        )
        grant.provider = key
        grant.account = account
        grant.client_id = server.client_id
        grant.scopes = " ".join(scopes)
        grant.granted_scopes = tokens.scope
        grant.refresh_token = Sealed.seal(tokens.refresh_token)  # type: ignore[assignment]
        grant.access_token = Sealed.seal(tokens.access_token)  # type: ignore[assignment]
        grant.access_expires_at = now + dt.timedelta(seconds=tokens.expires_in)
        grant.connected_at = grant.last_success_at = now
        grant.last_refresh_at = None
        grant.refresh_count = 0
        grant.is_dead = False
        grant.failures = 0
        grant.next_attempt_at = None
        grant.last_error = grant.last_error_code = grant.last_error_diagnosis = ""
        grant.last_error_at = None
        grant.save()
        MailServer.objects.filter(pk=server.pk).update(
            status=ServerStatus.TOKEN_VALID, status_detail=""
        )
        server.status, server.status_detail = ServerStatus.TOKEN_VALID, ""
        transaction.on_commit(lambda: release_held_mail(server))
    return grant


def disconnect(server: MailServer) -> str:
    """Delete the server's tokens (revoking them where the provider offers it); return a note on revocation."""
    grant = Grant.objects.filter(server_id=server.pk).first()
    note = ""
    if grant is not None:
        try:
            flow = flow_for(server)
            token = revealed(grant.refresh_token) or revealed(grant.access_token)
            if token:
                flow.revoke(server, token=token)
        except Exception as exc:  # deleting the tokens matters more than the revocation answer
            note = f"The provider's revocation did not succeed ({exc}); the tokens were deleted anyway."
            log.warning("revocation for %s failed: %s", server.name, exc)
        grant.delete()
    # A test result belongs to the connection it tested: it goes with the tokens.
    cleared = {
        "status": ServerStatus.NOT_CONNECTED,
        "status_detail": "",
        "last_test_at": None,
        "last_test_ok": None,
        "last_test_summary": "",
    }
    MailServer.objects.filter(pk=server.pk).update(**cleared)
    for name, value in cleared.items():
        setattr(server, name, value)
    record("disconnected", subject=server.name)
    return note


def grant_owner_changed(server: MailServer, fields: list[str]) -> None:
    """Username, Client ID, Tenant, cloud or method changed: the stored tokens belong to another
    account or app, so they are deleted and an OAuth server must be connected again."""
    deleted, _ = Grant.objects.filter(server_id=server.pk).delete()
    if not deleted:
        return
    labels = ", ".join(
        str(getattr(MailServer._meta.get_field(f), "verbose_name", f)) for f in fields
    )
    if server.is_oauth:
        status = ServerStatus.RECONNECT_REQUIRED
        detail = (
            f"{labels} changed, so the stored tokens (issued for the previous value) were "
            "discarded: connect the account again"
        )
    else:
        status, detail = ServerStatus.NOT_CONNECTED, ""
    MailServer.objects.filter(pk=server.pk).update(status=status, status_detail=detail)
    server.status, server.status_detail = status, detail
    log.info("tokens of %s discarded: %s changed", server.name, labels)
    record("tokens_discarded", subject=server.name, fields=fields)


def credentials_changed(server: MailServer) -> None:
    """The Client ID or Secret was replaced: retry at once instead of waiting out the back-off."""
    Grant.objects.filter(server_id=server.pk, is_dead=False).update(
        next_attempt_at=None, failures=0
    )
    release_held_mail(server)


def release_held_mail(server: MailServer) -> None:
    """Announce that the server's mail may flow again (the outbox releases what it held)."""
    for _receiver, result in mail_may_flow.send_robust(MailServer, server=server):
        if isinstance(result, Exception):
            log.error("releasing the held mail of %s failed", server.name, exc_info=result)


def refresh_idle_grants() -> bool:
    """Worker step: refresh grants idle for REFRESH_IDLE_AFTER (long before the providers' inactivity
    limits, e.g. Microsoft's 90 days) and drop expired sign-in states. True when it did something."""
    now = timezone.now()
    expired = OAuthState.objects.filter(created_at__lt=now - STATE_LIFETIME)
    # Looked for with a read first: a delete is a write transaction (the database's write lock on
    # SQLite, which the relay's next INSERT would wait for) at every pass of the worker.
    did = expired.exists() and expired.delete()[0] > 0
    threshold = now - REFRESH_IDLE_AFTER
    due = (
        Grant.objects.filter(is_dead=False, last_success_at__lt=threshold)
        .exclude(next_attempt_at__gt=now)
        .order_by("last_success_at")
        .values_list("server_id", flat=True)[:IDLE_BATCH]
    )
    for server_id in list(due):
        try:
            refresh_access_token(server_id, idle_before=threshold)
        except TokenError as exc:
            log.info("background refresh of server %s: %s", server_id, exc)
        did = True
    return did
