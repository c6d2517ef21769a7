"""Connect (start the sign-in), the providers' callbacks, Disconnect and Test Connection."""

from __future__ import annotations

import logging
import secrets

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from mailgate import providers
from mailgate.accounts.roles import admin_required, is_administrator
from mailgate.oauth import tokens
from mailgate.oauth.models import OAuthState, digest
from mailgate.providers.base import Diagnosis, revealed
from mailgate.providers.http import TokenEndpointError, TransientHTTPError
from mailgate.providers.oidc import IdTokenError
from mailgate.servers.models import MailServer

log = logging.getLogger("mailgate.oauth")


def _edit_url(server: MailServer) -> str:
    return reverse("servers:edit", args=[server.pk])


def _setup_problems(server: MailServer) -> list[str]:
    """Fields that must be filled before a sign-in can start, each with its fix."""
    problems = []
    if not server.username or "@" not in server.username:
        problems.append("Username: enter the mailbox's e-mail address, then Save.")
    if not server.client_id.strip():
        problems.append("Client ID: copy it from the app registration / OAuth client, then Save.")
    if not revealed(server.client_secret):
        problems.append("Client Secret: paste the secret's value, then Save.")
    return problems + tokens.flow_for(server).setup_problems(server)


@require_POST
@admin_required
def connect(request: HttpRequest, pk: int) -> HttpResponse:
    """Start the authorization code flow with PKCE and a single-use state bound to this session."""
    server = get_object_or_404(MailServer, pk=pk)
    if not server.is_oauth or server.provider_key is None:
        messages.error(request, f"{server.auth_label} does not connect with OAuth.")
        return redirect(_edit_url(server))
    problems = _setup_problems(server)
    if problems:
        for problem in problems:
            messages.error(request, problem)
        return redirect(_edit_url(server))
    flow = tokens.flow_for(server)
    if not request.session.session_key:
        request.session.save()
    session_key = request.session.session_key or ""
    state = secrets.token_urlsafe(32)
    # RFC 7636 §4.1: 43-128 characters of [A-Za-z0-9-._~]; token_urlsafe(64) gives 86.
    verifier = secrets.token_urlsafe(64)
    OAuthState.objects.create(
        state_hash=digest(state),
        session_hash=digest(session_key),
        server=server,
        provider=server.provider_key,
        code_verifier=verifier,
        redirect_uri=server.redirect_url,
    )
    url = flow.authorization_url(
        server, state=state, code_verifier=verifier, redirect_uri=server.redirect_url
    )
    log.info("sign-in started for %s by %s", server.name, request.user)
    return HttpResponseRedirect(url)


def _problem(
    request: HttpRequest,
    *,
    status: int,
    title: str,
    explanation: str,
    fix: str,
    server: MailServer | None = None,
    details: str = "",
) -> HttpResponse:
    context = {
        "title": title,
        "explanation": explanation,
        "fix": fix,
        "server": server,
        "details": details,
        "edit_url": _edit_url(server) if server else reverse("servers:list"),
    }
    return render(request, "oauth/callback_problem.html", context, status=status)


def _diagnosed(
    request: HttpRequest, diagnosis: Diagnosis, server: MailServer, details: str, status: int = 200
) -> HttpResponse:
    return _problem(
        request,
        status=status,
        title=diagnosis.title,
        explanation=diagnosis.explanation,
        fix=diagnosis.fix,
        server=server,
        details=details,
    )


def _scope_name(scope: str) -> str:
    return scope.rstrip("/").rsplit("/", 1)[-1].lower()


@require_GET
def callback(request: HttpRequest, provider_key: str) -> HttpResponse:
    """The provider's redirect back: check the state, redeem the code, check the account, keep the tokens."""
    restart = "Open the server's page and press the Connect button again."
    state = request.GET.get("state", "")
    if not state:
        return _problem(
            request,
            status=400,
            title="Sign-in answer without state",
            explanation="The request carries no state parameter, so it cannot be matched to a "
            "sign-in started here. Nothing was changed.",
            fix=restart,
        )
    pending = OAuthState.objects.select_related("server").filter(state_hash=digest(state)).first()
    if pending is None:
        return _problem(
            request,
            status=400,
            title="Unknown or already used sign-in",
            explanation="This sign-in answer does not match any sign-in in progress: it was "
            "already used, has expired, or was altered. Nothing was changed.",
            fix=restart,
        )
    if pending.session_hash != digest(request.session.session_key or ""):
        return _problem(
            request,
            status=403,
            title="Sign-in started in another browser session",
            explanation="The sign-in was started from another session than this one. Nothing "
            "was changed.",
            fix="Finish the sign-in in the browser where you pressed Connect, or start again here.",
        )
    if pending.provider != provider_key:
        return _problem(
            request,
            status=400,
            title="Sign-in answer at the wrong address",
            explanation="The answer arrived at another provider's callback. Nothing was changed.",
            fix=restart,
        )
    if not is_administrator(request.user):
        return _problem(
            request,
            status=403,
            title="Administrators only",
            explanation="Only administrators can connect accounts.",
            fix="Sign in as an administrator.",
        )
    if OAuthState.objects.filter(pk=pending.pk).delete()[0] != 1:
        return _problem(
            request,
            status=400,
            title="Sign-in already used",
            explanation="This sign-in answer was already processed. Nothing was changed.",
            fix=restart,
        )
    server = pending.server
    if pending.is_expired():
        return _problem(
            request,
            status=400,
            title="Sign-in expired",
            explanation="More than 10 minutes passed since Connect was pressed. Nothing was changed.",
            fix=restart,
            server=server,
        )
    flow = tokens.flow_for(server)
    provider = providers.get(provider_key)
    error = request.GET.get("error", "")
    if error:
        description = request.GET.get("error_description", "")
        log.info("sign-in for %s refused by %s: %s", server.name, provider.label, error)
        return _diagnosed(
            request, flow.explain(error, description), server, f"{error}\n{description}".strip()
        )
    code = request.GET.get("code", "")
    if not code:
        return _problem(
            request,
            status=400,
            title="Sign-in answer without a code",
            explanation="The provider's answer carries neither a code nor an error.",
            fix=restart,
            server=server,
        )
    try:
        tokenset = flow.exchange_code(
            server,
            code=code,
            code_verifier=revealed(pending.code_verifier),
            redirect_uri=pending.redirect_uri,
        )
    except TokenEndpointError as exc:
        return _diagnosed(
            request,
            flow.explain(exc.error, exc.description),
            server,
            f"{exc.error}\n{exc.description}".strip(),
        )
    except TransientHTTPError as exc:
        return _problem(
            request,
            status=502,
            title=f"{provider.label} could not be reached",
            explanation=f"The token endpoint did not answer properly: {exc}. Nothing was changed.",
            fix="Try again in a few minutes. " + restart,
            server=server,
        )
    if not tokenset.refresh_token:
        return _problem(
            request,
            status=200,
            title="No refresh token",
            explanation="The provider issued no refresh token, so mailgate could not keep "
            "access. Nothing was stored.",
            fix="Press Connect again and accept every permission listed (including keeping "
            "access to data you have given it access to).",
            server=server,
        )
    try:
        accounts = (
            flow.accounts_from_id_token(server, tokenset.id_token) if tokenset.id_token else set()
        )
    except IdTokenError as exc:
        return _problem(
            request,
            status=200,
            title="The sign-in could not be verified",
            explanation=f"The id_token is not acceptable: {exc}. Nothing was stored.",
            fix=restart,
            server=server,
        )
    expected = server.username.strip().lower()
    if not tokenset.id_token:
        # Without an id_token the provider did not say who signed in; the mail server will refuse
        # a token for another mailbox at the first Test Connection, so store and say so.
        messages.warning(
            request,
            f"The provider did not say which account signed in; make sure it was {server.username} "
            "and press Test Connection.",
        )
    elif expected not in accounts:
        signed_in = ", ".join(sorted(accounts)) or "an account the provider did not name"
        return _problem(
            request,
            status=200,
            title="Signed in with another account",
            explanation=f"You signed in as {signed_in}, but this server's Username is "
            f"{server.username}. The tokens were not stored.",
            fix=f"Press Connect again and sign in as {server.username} (sign out of the other "
            "account first, or use a private window), or change Username to the account you "
            "want to use.",
            server=server,
        )
    granted = {_scope_name(s) for s in tokenset.scope.split()}
    missing = [s for s in flow.required_scopes(server) if granted and _scope_name(s) not in granted]
    if missing:
        return _problem(
            request,
            status=200,
            title="Permissions not granted",
            explanation="The sign-in did not grant " + ", ".join(missing) + ". Nothing was stored.",
            fix="Press Connect again and allow every permission, or have an administrator grant "
            "consent for the app.",
            server=server,
        )
    tokens.store_grant(server, tokens=tokenset, account=expected, scopes=flow.scopes(server))
    log.info("%s connected as %s", server.name, expected)
    messages.success(request, f"Connected as {expected}.")
    return redirect(_edit_url(server))


@require_POST
@admin_required
def disconnect(request: HttpRequest, pk: int) -> HttpResponse:
    """Delete the server's tokens (Google: revoke them first)."""
    server = get_object_or_404(MailServer, pk=pk)
    note = tokens.disconnect(server)
    messages.success(request, "Disconnected: the tokens were deleted.")
    if note:
        messages.warning(request, note)
    return redirect(_edit_url(server))
