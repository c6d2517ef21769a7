"""Creating administrators: by e-mail address, which is also the username."""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.core.validators import validate_email


def create_user(email: str, password: str, *, administrator: bool = True) -> None:
    """Create (or update the password and role of) the user with this address."""
    validate_email(email)
    User = get_user_model()
    user = User.objects.filter(username__iexact=email).first() or User(
        username=email.lower(), email=email.lower()
    )
    validate_password(password, user)
    user.set_password(password)
    user.is_staff = administrator
    user.is_active = True
    user.save()


def generate_password() -> str:
    return secrets.token_urlsafe(15)


def ensure_first_admin(email: str, password: str) -> str:
    """Create the first administrator when none exists; return what to tell the operator."""
    User = get_user_model()
    if User.objects.filter(is_staff=True, is_active=True).exists():
        return ""
    email = email or "admin@localhost"
    if password:
        create_user(email, password)
        return f"Created administrator {email} with the password from MAILGATE_ADMIN_PASSWORD."
    generated = generate_password()
    create_user(email, generated)
    return (
        f"Created administrator {email}.\n"
        f"One-time password (shown once): {generated}\n"
        "Change it after signing in: Change password, at the top right of every page "
        "(/accounts/password_change/)."
    )


class UserProblem(ValueError):
    """A user change refused, with the field it concerns ("email", "password" or "role")."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def find_user(email: str) -> Any:
    user = get_user_model().objects.filter(username__iexact=email.strip()).first()
    if user is None:
        raise UserProblem("email", f"no user {email.strip().lower()!r}: add it first")
    return user


def all_users() -> list[Any]:
    return list(get_user_model().objects.order_by("-is_active", "username"))


def add_user(email: str, *, administrator: bool, password: str = "") -> str:
    """Add a user (refusing an existing address); return the password (generated when empty)."""
    email = email.strip().lower()
    try:
        validate_email(email)
    except ValidationError as exc:
        raise UserProblem("email", f"{email!r} is not an e-mail address") from exc
    if get_user_model().objects.filter(username__iexact=email).exists():
        raise UserProblem("email", f"{email} exists already: reset its password instead")
    password = password or generate_password()
    try:
        create_user(email, password, administrator=administrator)
    except ValidationError as exc:
        raise UserProblem("password", " ".join(exc.messages)) from exc
    return password


def set_password(email: str, password: str = "") -> str:
    """Set (or generate) a user's password; return it."""
    user = find_user(email)
    password = password or generate_password()
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise UserProblem("password", " ".join(exc.messages)) from exc
    user.set_password(password)
    user.save(update_fields=["password"])
    return password


def set_active(email: str, active: bool) -> Any:
    """Deactivate (sign-in refused, sessions end) or reactivate a user; never the last administrator."""
    user = find_user(email)
    if not active and user.is_staff and user.is_active:
        others = get_user_model().objects.filter(is_staff=True, is_active=True).exclude(pk=user.pk)
        if not others.exists():
            raise UserProblem(
                "email", f"{user.username} is the last active administrator: add another first"
            )
    user.is_active = active
    user.save(update_fields=["is_active"])
    return user


def reset_path(user: Any) -> str:
    """The path of a one-time link that lets the user choose a new password (Django's token:
    it stops working once the password changes or after PASSWORD_RESET_TIMEOUT)."""
    from django.contrib.auth.tokens import default_token_generator
    from django.urls import reverse
    from django.utils.encoding import force_bytes
    from django.utils.http import urlsafe_base64_encode

    uid = urlsafe_base64_encode(force_bytes(user.pk))
    token = default_token_generator.make_token(user)
    return reverse("password_reset_confirm", kwargs={"uidb64": uid, "token": token})
