from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.config.settings")

from arbiter.telemetry import tracing  # noqa: E402

tracing.setup_tracing(service_name="arbiter-web")
application = get_wsgi_application()
