"""Outbox console pages (owned by the outbox package)."""

from django.urls import URLPattern, URLResolver

app_name = "outbox"

urlpatterns: list[URLPattern | URLResolver] = []
