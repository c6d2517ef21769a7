from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "mailgate.outbox"
    label = "outbox"
