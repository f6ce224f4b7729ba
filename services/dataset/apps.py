from django.apps import AppConfig


class DatasetConfig(AppConfig):
    name = "services.dataset"
    label = "dataset"
    verbose_name = "dataset"
    default_auto_field = "django.db.models.BigAutoField"
