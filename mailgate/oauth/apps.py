from django.apps import AppConfig


class OauthConfig(AppConfig):
    name = "mailgate.oauth"
    label = "oauth"
