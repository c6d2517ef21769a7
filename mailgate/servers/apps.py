from django.apps import AppConfig


class ServersConfig(AppConfig):
    name = "mailgate.servers"
    label = "servers"
