from django.apps import AppConfig


class InferenceConfig(AppConfig):
    name = "services.inference"
    label = "inference"
    verbose_name = "inference"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A restarted web process warms its live deployments in the background (see serving.preload).
        from services.inference.serving.preload import preload_start

        preload_start()
