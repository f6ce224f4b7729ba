from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.config.settings")

from arbiter.telemetry import tracing  # noqa: E402

traced = tracing.setup_tracing(service_name="arbiter-web")
application = get_wsgi_application()

from django.conf import settings  # noqa: E402

if "inference" in settings.ARBITER_SERVICES and not traced:
    from services.inference.serving.fastpath import ClassifyFastPathWSGI

    # Ordinary classify calls are answered below Django's handler (see its module); with tracing on, every
    # request goes through the instrumented handler.
    application = ClassifyFastPathWSGI(application)
