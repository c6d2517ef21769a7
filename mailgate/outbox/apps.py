from typing import Any

from django.apps import AppConfig


class OutboxConfig(AppConfig):
    name = "mailgate.outbox"
    label = "outbox"

    def ready(self) -> None:
        from mailgate.servers.signals import mail_may_flow

        mail_may_flow.connect(_release_held_mail, dispatch_uid="outbox-release-held")


def _release_held_mail(sender: Any, server: Any, **kwargs: Any) -> int:
    """Mail may flow again for `server`: its held messages go back to the queue."""
    from mailgate.outbox.hold import release_server

    return release_server(server)
