from django.apps import AppConfig


class TrainingConfig(AppConfig):
    name = "services.training"
    label = "training"
    verbose_name = "training"
    default_auto_field = "django.db.models.BigAutoField"
