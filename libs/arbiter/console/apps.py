from django.apps import AppConfig


class ConsoleConfig(AppConfig):
    name = "arbiter.console"
    label = "console"
