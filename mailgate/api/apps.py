from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "mailgate.api"
    label = "api"
