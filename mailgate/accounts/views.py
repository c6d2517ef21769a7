from __future__ import annotations

import math
from typing import Any

from django import forms
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest
from django.utils import timezone

from mailgate.accounts import throttle
from mailgate.audit.log import record


class ThrottledAuthenticationForm(AuthenticationForm):
    """Django's sign-in form that refuses further attempts after repeated failures."""

    def __init__(self, request: HttpRequest | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(request, *args, **kwargs)
        self.fields["username"].label = "Email"

    def clean_username(self) -> str:
        # Accounts are stored under the lower-cased address (accounts.users.create_user).
        return str(self.cleaned_data.get("username") or "").strip().lower()

    def _address(self) -> str:
        return self.request.META.get("REMOTE_ADDR", "") if self.request else ""

    def clean(self) -> dict[str, Any]:
        username = self.cleaned_data.get("username") or ""
        until = throttle.locked_until(username, self._address())
        if until is not None:
            record("sign_in_throttled", subject=username[:150], address=self._address())
            minutes = max(1, math.ceil((until - timezone.now()).total_seconds() / 60))
            raise forms.ValidationError(
                f"Too many failed sign-ins. Wait {minutes} minute(s) and try again, or ask "
                "another administrator to reset your password.",
                code="throttled",
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            throttle.record_failure(username, self._address())
            raise
        throttle.reset(username, self._address())
        return cleaned


class LoginView(auth_views.LoginView):
    form_class = ThrottledAuthenticationForm
    template_name = "accounts/login.html"
    redirect_authenticated_user = True
