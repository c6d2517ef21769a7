from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "mailgate.console"
    label = "console"
