"""Settings > API Keys: administrators create (key shown once) and revoke; viewers read the list.
Settings > SMTP Relay: the keys that send through the relay and the settings applications need."""

from __future__ import annotations

from urllib.parse import urlsplit

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from mailgate.accounts.roles import admin_required
from mailgate.api.models import SCOPES, SEND, APIKey
from mailgate.relay.clients import endpoints, relay_clients


class APIKeyForm(forms.Form):
    name = forms.CharField(
        label="Key Name",
        max_length=100,
        help_text="What uses this key, e.g. erp or helpdesk.",
    )

    scope = forms.ChoiceField(
        label="Scope",
        choices=[(k, f"{k}: {v}") for k, v in SCOPES.items()],
        initial=SEND,
        required=False,
        help_text="What the key may do; give each application the least it needs.",
    )

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.label_suffix = ""

    def clean_name(self) -> str:
        name: str = self.cleaned_data["name"].strip()
        if APIKey.objects.filter(name__iexact=name).exists():
            raise forms.ValidationError(
                f"A key named “{name}” exists already: choose another name, or revoke that key."
            )
        return name


@require_http_methods(["GET", "POST"])
def apikey_list(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        return _create(request)
    context = {"keys": APIKey.objects.select_related("created_by"), "form": APIKeyForm()}
    return render(request, "api/apikeys.html", context)


@admin_required
def _create(request: HttpRequest) -> HttpResponse:
    form = APIKeyForm(request.POST)
    new_key = ""
    if form.is_valid():
        row, new_key = APIKey.issue(
            form.cleaned_data["name"],
            created_by=request.user,  # type: ignore[arg-type]
            scope=form.cleaned_data["scope"] or SEND,
        )
        messages.success(
            request, f"API key “{row.name}” created. Copy it now: it is not shown again."
        )
        form = APIKeyForm()
    context = {
        "keys": APIKey.objects.select_related("created_by"),
        "form": form,
        "new_key": new_key,
    }
    response = render(request, "api/apikeys.html", context)
    # The page holds a key that must not be kept by caches or the browser's history.
    response["Cache-Control"] = "no-store"
    return response


@admin_required
@require_POST
def apikey_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    key = get_object_or_404(APIKey, pk=pk)
    key.revoke()
    messages.success(request, f"API key “{key.name}” revoked.")
    return redirect("apikeys")


def relay_page(request: HttpRequest) -> HttpResponse:
    public_host = urlsplit(settings.MAILGATE_PUBLIC_URL).hostname or "localhost"
    context = {
        "clients": relay_clients(),
        "endpoints": endpoints(settings.MAILGATE_RELAY, public_host),
        "plain_on_loopback": getattr(settings.MAILGATE_RELAY, "plain_on_loopback", True),
    }
    return render(request, "api/relay.html", context)
