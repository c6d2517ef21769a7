"""Creating administrators: by e-mail address, which is also the username."""

from __future__ import annotations

import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.password_validation import validate_password
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
        f"One-time password (shown once, change it after signing in): {generated}"
    )
