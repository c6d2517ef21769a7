"""Inbox console pages (owned by the inbox package)."""

from django.urls import path

from mailgate.inbox import views

app_name = "inbox"

urlpatterns = [
    path("", views.message_list, name="list"),
    path("<int:pk>/", views.message_detail, name="detail"),
    path("<int:pk>/raw/", views.message_raw, name="raw"),
    path("<int:pk>/html/", views.message_html, name="html"),
    path("<int:pk>/attachments/<int:n>/", views.message_attachment, name="attachment"),
    path("<int:pk>/retry/", views.message_retry, name="retry"),
]
