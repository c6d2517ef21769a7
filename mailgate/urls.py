from django.contrib.auth import views as auth_views
from django.urls import include, path

from mailgate.accounts.views import LoginView
from mailgate.core import views as core_views
from mailgate.diagnostics.metrics import metrics_view

urlpatterns = [
    path("", core_views.dashboard, name="dashboard"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("settings/", core_views.settings_menu, name="settings"),
    path("settings/technical/", core_views.technical_menu, name="settings-technical"),
    path("settings/technical/mail-servers/", include("mailgate.servers.urls")),
    path("settings/api-keys/", include("mailgate.api.console_urls")),
    path("oauth/", include("mailgate.oauth.urls")),
    path("outbox/", include("mailgate.outbox.urls")),
    path("healthz", core_views.healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    path("api/v1/", include("mailgate.api.urls")),
]
