from django.apps import AppConfig


class InboxConfig(AppConfig):
    name = "mailgate.inbox"
    label = "inbox"
