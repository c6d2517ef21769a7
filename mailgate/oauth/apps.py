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


# Fields that decide whose grant the stored tokens are: a change to any of them makes them someone
# else's (or another app's), so they are discarded and the server must be connected again.
GRANT_OWNER_FIELDS = ("username", "client_id", "tenant", "cloud", "auth_method")


def _credentials(instance: Any) -> tuple[str, str]:
    secret = instance.client_secret
    ciphertext = getattr(secret, "ciphertext", secret) or ""
    return instance.client_id, str(ciphertext)


def _remember_credentials(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    """Note the stored Client ID / Secret before a save, to notice a replacement afterwards."""
    if raw or not instance.pk:
        return
    instance._oauth_old_owner = (
        sender.objects.filter(pk=instance.pk).values(*GRANT_OWNER_FIELDS).first()
    )
    if not instance.is_oauth:
        return
    old = sender.objects.filter(pk=instance.pk).values_list("client_id", "client_secret").first()
    instance._oauth_old_credentials = old


def _credentials_saved(
    sender: Any, instance: Any, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    """An edit of whose grant it is discards the tokens (Reconnect required); a replaced secret
    (e.g. after AADSTS7000222) ends the refresh back-off and releases held mail."""
    if raw or created:
        return
    old_owner = getattr(instance, "_oauth_old_owner", None)
    instance._oauth_old_owner = None
    if old_owner is not None:
        changed = [f for f in GRANT_OWNER_FIELDS if old_owner[f] != getattr(instance, f)]
        if changed:
            from mailgate.oauth.tokens import grant_owner_changed

            instance._oauth_old_credentials = None
            grant_owner_changed(instance, changed)
            return
    old = getattr(instance, "_oauth_old_credentials", None)
    if old is None:
        return
    instance._oauth_old_credentials = None
    old_id, old_secret = old
    new_id, new_secret = _credentials(instance)
    old_ciphertext = str(getattr(old_secret, "ciphertext", old_secret) or "")
    if (old_id, old_ciphertext) != (new_id, new_secret):
        from mailgate.oauth.tokens import credentials_changed

        credentials_changed(instance)
