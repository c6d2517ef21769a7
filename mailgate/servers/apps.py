from django.apps import AppConfig
from django.db.models.signals import post_delete, post_save, pre_save


class ServersConfig(AppConfig):
    name = "mailgate.servers"
    label = "servers"

    def ready(self) -> None:
        from mailgate.servers import audit
        from mailgate.servers.models import MailServer

        pre_save.connect(audit.remember, sender=MailServer, dispatch_uid="servers-audit-pre")
        post_save.connect(audit.saved, sender=MailServer, dispatch_uid="servers-audit-post")
        post_delete.connect(audit.deleted, sender=MailServer, dispatch_uid="servers-audit-del")
