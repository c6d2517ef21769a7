from __future__ import annotations

import math
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse_lazy
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from mailgate.accounts import throttle
from mailgate.accounts.roles import admin_required
from mailgate.accounts.users import (
    UserProblem,
    add_user,
    all_users,
    reset_path,
    set_active,
    set_password,
)
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


# -- Settings > Users (administrators) and Change password (everyone) ---------------------------


class _SaysDone:
    """After a valid form, say `done` on the next page."""

    done = ""
    request: HttpRequest

    def form_valid(self, form: Any) -> HttpResponse:
        response: HttpResponse = super().form_valid(form)  # type: ignore[misc]
        messages.success(self.request, self.done)
        return response


class PasswordChangeView(_SaysDone, auth_views.PasswordChangeView):
    """Change password: every signed-in user, for their own account."""

    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("dashboard")
    done = "Your password was changed."


class PasswordResetConfirmView(_SaysDone, auth_views.PasswordResetConfirmView):
    """The page a one-time reset link opens: choose a new password, then sign in."""

    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("login")
    done = "Password set: sign in with it."


class AddUserForm(forms.Form):
    email = forms.EmailField(label="Email", max_length=254)
    role = forms.ChoiceField(
        label="Role",
        choices=[("viewer", "Viewer (reads only)"), ("administrator", "Administrator")],
        initial="viewer",
    )
    password = forms.CharField(
        label="Password",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Leave empty to generate one, shown once.",
    )


def _users_page(request: HttpRequest, **extra: Any) -> HttpResponse:
    context = {"users": all_users(), "form": AddUserForm(), **extra}
    response = render(request, "accounts/users.html", context)
    response["Cache-Control"] = "no-store"  # it may show a password or a reset link once
    return response


@admin_required
@require_http_methods(["GET", "POST"])
def user_list(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return _users_page(request)
    form = AddUserForm(request.POST)
    if not form.is_valid():
        return _users_page(request, form=form)
    data = form.cleaned_data
    try:
        password = add_user(
            data["email"], administrator=data["role"] == "administrator", password=data["password"]
        )
    except UserProblem as exc:
        form.add_error(exc.field if exc.field in form.fields else None, str(exc))
        return _users_page(request, form=form)
    messages.success(request, f"User {data['email'].lower()} added.")
    once = "" if data["password"] else password
    return _users_page(request, once_for=data["email"].lower(), once_password=once)


@admin_required
@require_POST
def user_action(request: HttpRequest, pk: int) -> HttpResponse:
    """Deactivate, reactivate, set a password or make a one-time link for one user."""
    user = get_object_or_404(get_user_model(), pk=pk)
    action = request.POST.get("action", "")
    try:
        if action in ("deactivate", "activate"):
            set_active(user.username, action == "activate")
            messages.success(request, f"{user.username} {action}d.")
        elif action == "set-password":
            set_password(user.username, request.POST.get("password", ""))
            messages.success(request, f"Password of {user.username} set.")
        elif action == "reset-link":
            link = request.build_absolute_uri(reset_path(user))
            return _users_page(request, once_for=user.username, once_link=link)
        else:
            messages.error(request, f"Unknown action {action!r}.")
    except UserProblem as exc:
        messages.error(request, str(exc))
    return redirect("users")
