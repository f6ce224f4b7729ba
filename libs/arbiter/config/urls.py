"""Root URL configuration: the kernel's URLs plus those of every service enabled in this process."""

from __future__ import annotations

from importlib import import_module

from django.conf import settings
from django.urls import URLPattern, URLResolver, include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from arbiter.api import health

urlpatterns: list[URLPattern | URLResolver] = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

for _service in settings.ARBITER_SERVICES:
    urlpatterns.append(path("", include(import_module(f"services.{_service}.urls"))))
    # Each service's own part of the API, served by that service: in split mode `/api/schema/` holds only the
    # services of the process that answers it (the gateway's, behind a path router).
    urlpatterns.append(
        path(
            f"api/schema/{_service}/",
            SpectacularAPIView.as_view(urlconf=f"services.{_service}.urls"),
            name=f"api-schema-{_service}",
        )
    )

handler400 = "arbiter.api.errors.bad_request"
handler403 = "arbiter.api.errors.permission_denied"
handler404 = "arbiter.api.errors.page_not_found"
handler500 = "arbiter.api.errors.server_error"
