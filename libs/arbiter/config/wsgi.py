from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.config.settings")

from arbiter.telemetry import tracing  # noqa: E402

traced = tracing.setup_tracing(service_name="arbiter-web")
application = get_wsgi_application()

from django.conf import settings  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

# With tracing on, every request goes through Django's instrumented handler.
for wrapper in [] if traced else settings.WSGI_WRAPPERS:
    application = import_string(wrapper)(application)
