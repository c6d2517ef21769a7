from django.contrib.auth import views as auth_views
from django.urls import include, path

from mailgate.accounts import views as account_views
from mailgate.accounts.views import LoginView
from mailgate.api import console_views as api_console_views
from mailgate.console import views as console_views
from mailgate.diagnostics.metrics import metrics_view

urlpatterns = [
    # First: an API call is resolved without trying every console pattern before it.
    path("api/v1/", include("mailgate.api.urls")),
    path("", console_views.dashboard, name="dashboard"),
    path("accounts/login/", LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        account_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/reset/<uidb64>/<token>/",
        account_views.PasswordResetConfirmView.as_view(),
        name="password_reset_confirm",
    ),
    path("settings/users/", account_views.user_list, name="users"),
    path("settings/users/<int:pk>/", account_views.user_action, name="user-action"),
    path("settings/", console_views.settings_menu, name="settings"),
    path("settings/technical/", console_views.technical_menu, name="settings-technical"),
    path("settings/technical/mail-servers/", include("mailgate.servers.urls")),
    path("settings/technical/mail-servers/", include("mailgate.diagnostics.urls")),
    path("settings/api-keys/", include("mailgate.api.console_urls")),
    path("settings/smtp-relay/", api_console_views.relay_page, name="smtp-relay"),
    path("settings/audit/", console_views.audit_log, name="audit"),
    path("oauth/", include("mailgate.oauth.urls")),
    path("outbox/", include("mailgate.outbox.urls")),
    path("inbox/", include("mailgate.inbox.urls")),
    path("healthz", console_views.healthz, name="healthz"),
    path("static/<path:path>", console_views.static_file, name="static-file"),
    path("metrics", metrics_view, name="metrics"),
]

handler404 = "mailgate.console.views.not_found"
