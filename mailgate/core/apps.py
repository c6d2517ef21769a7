from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "mailgate.core"
    label = "core"
