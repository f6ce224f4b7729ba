from django.apps import AppConfig


class ConfigConfig(AppConfig):
    """Holds the process-level commands: `up`, `serve`, `migrate_services`, `bootstrap`."""

    name = "arbiter.config"
    label = "arbiter_config"
