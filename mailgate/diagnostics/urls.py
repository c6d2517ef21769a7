"""Diagnostics routes under a mail server's page (mounted beside mailgate.servers.urls)."""

from django.urls import URLPattern, URLResolver, path

from mailgate.diagnostics import views

app_name = "diagnostics"

urlpatterns: list[URLPattern | URLResolver] = [
    path("<int:pk>/test", views.test_connection, name="test"),
    path("<int:pk>/send-test", views.send_test, name="send-test"),
]
