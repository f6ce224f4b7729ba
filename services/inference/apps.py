from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "services.inference"
    label = "inference"
    verbose_name = "inference"
    default_auto_field = "django.db.models.BigAutoField"
