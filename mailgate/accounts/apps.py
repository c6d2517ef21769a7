from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "mailgate.accounts"
    label = "accounts"
