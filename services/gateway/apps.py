from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "services.gateway"
    label = "gateway"
    verbose_name = "gateway"
    default_auto_field = "django.db.models.BigAutoField"
