from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "mailgate.console"
    label = "console"

    def ready(self) -> None:
        from mailgate.console import checks  # noqa: F401 (registers the system checks)
