"""Connect (start the sign-in), the providers' callbacks and Disconnect."""

from __future__ import annotations

import logging
import secrets

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from mailgate.accounts.roles import admin_required, is_administrator
from mailgate.oauth import tokens
from mailgate.oauth.callback import SignInAnswer, SignInRefused, complete_sign_in
from mailgate.oauth.models import OAuthState, digest
from mailgate.providers.base import revealed
from mailgate.servers.models import MailServer

log = logging.getLogger("mailgate.oauth")


def _edit_url(server: MailServer) -> str:
    """The server's page, opened on its connection panel (status, Connect, Test Connection)."""
    return reverse("servers:edit", args=[server.pk]) + "#connection"


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


def _problem(request: HttpRequest, refused: SignInRefused) -> HttpResponse:
    server = refused.server
    context = {
        "title": refused.title,
        "explanation": refused.explanation,
        "fix": refused.fix,
        "server": server,
        "details": refused.details,
        "edit_url": _edit_url(server) if server else reverse("servers:list"),
    }
    return render(request, "oauth/callback_problem.html", context, status=refused.status)


@require_GET
def callback(request: HttpRequest, provider_key: str) -> HttpResponse:
    """The provider's redirect back: the checks of mailgate.oauth.callback, then a page."""
    answer = SignInAnswer(
        provider_key=provider_key,
        params=request.GET,
        session_key=request.session.session_key or "",
        is_administrator=is_administrator(request.user),
    )
    try:
        connected = complete_sign_in(answer)
    except SignInRefused as refused:
        return _problem(request, refused)
    if connected.warning:
        messages.warning(request, connected.warning)
    messages.success(request, f"Connected as {connected.account}.")
    return redirect(_edit_url(connected.server))


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
