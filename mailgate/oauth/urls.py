"""OAuth connect / callback / disconnect routes (owned by the oauth package)."""

from django.urls import URLPattern, URLResolver, path

from mailgate.oauth import views

app_name = "oauth"

urlpatterns: list[URLPattern | URLResolver] = [
    path("servers/<int:pk>/connect", views.connect, name="connect"),
    path("servers/<int:pk>/disconnect", views.disconnect, name="disconnect"),
    path(
        "microsoft/callback",
        views.callback,
        {"provider_key": "microsoft"},
        name="microsoft-callback",
    ),
    path("google/callback", views.callback, {"provider_key": "google"}, name="google-callback"),
]
