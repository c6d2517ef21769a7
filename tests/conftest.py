"""Personas (an administrator, a viewer, a stranger) and fast settings for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client

from mailgate.transports import smtp

pytest_plugins = ["tests.sandbox_fixtures"]

PASSWORD = "correct horse battery staple"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: pytest.FixtureRequest) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _forget_servers_without_bdat() -> Iterator[None]:
    """The SMTP transport remembers, per process, which host:port did not take BDAT; loopback ports
    are reused from test to test, so each test starts without that memory."""
    yield
    smtp._WITHOUT_BDAT.clear()


@pytest.fixture
def admin(db: None) -> User:
    return User.objects.create_user(
        "alice@example.com", "alice@example.com", PASSWORD, is_staff=True
    )


@pytest.fixture
def viewer(db: None) -> User:
    return User.objects.create_user(
        "victor@example.com", "victor@example.com", PASSWORD, is_staff=False
    )


@pytest.fixture
def admin_client(admin: User) -> Client:
    client = Client()
    client.force_login(admin)
    return client


@pytest.fixture
def viewer_client(viewer: User) -> Client:
    client = Client()
    client.force_login(viewer)
    return client


@pytest.fixture
def stranger_client(db: None) -> Client:
    return Client()
