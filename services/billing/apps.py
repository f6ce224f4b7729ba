from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "services.billing"
    label = "billing"
    verbose_name = "billing"
    default_auto_field = "django.db.models.BigAutoField"
