"""OAuth connect / callback / disconnect routes (owned by the oauth package)."""

from django.urls import URLPattern, URLResolver

app_name = "oauth"

urlpatterns: list[URLPattern | URLResolver] = []
