from django.apps import AppConfig


class ApiConfig(AppConfig):
    """Shared API pieces; its one table (idempotency records) lives in every service's database."""

    name = "arbiter.api"
    label = "api"
    default_auto_field = "django.db.models.BigAutoField"
