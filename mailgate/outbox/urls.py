"""Outbox console pages (owned by the outbox package)."""

from django.urls import path

from mailgate.outbox import views

app_name = "outbox"

urlpatterns = [
    path("", views.message_list, name="list"),
    path("<int:pk>/", views.message_detail, name="detail"),
    path("<int:pk>/retry/", views.message_retry, name="retry"),
    path("<int:pk>/cancel/", views.message_cancel, name="cancel"),
]
