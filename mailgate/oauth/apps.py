from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_save, pre_save


class OauthConfig(AppConfig):
    name = "mailgate.oauth"
    label = "oauth"

    def ready(self) -> None:
        from mailgate.servers.models import MailServer

        pre_save.connect(_remember_credentials, sender=MailServer, dispatch_uid="oauth-creds-pre")
        post_save.connect(_credentials_saved, sender=MailServer, dispatch_uid="oauth-creds-post")


def _credentials(instance: Any) -> tuple[str, str]:
    secret = instance.client_secret
    ciphertext = getattr(secret, "ciphertext", secret) or ""
    return instance.client_id, str(ciphertext)


def _remember_credentials(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    """Note the stored Client ID / Secret before a save, to notice a replacement afterwards."""
    if raw or not instance.pk or not instance.is_oauth:
        return
    old = sender.objects.filter(pk=instance.pk).values_list("client_id", "client_secret").first()
    instance._oauth_old_credentials = old


def _credentials_saved(
    sender: Any, instance: Any, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    """A replaced secret (e.g. after AADSTS7000222) ends the refresh back-off and releases held mail."""
    old = getattr(instance, "_oauth_old_credentials", None)
    if raw or created or old is None:
        return
    instance._oauth_old_credentials = None
    old_id, old_secret = old
    new_id, new_secret = _credentials(instance)
    old_ciphertext = str(getattr(old_secret, "ciphertext", old_secret) or "")
    if (old_id, old_ciphertext) != (new_id, new_secret):
        from mailgate.oauth.tokens import credentials_changed

        credentials_changed(instance)
