"""URLs of the training service, included by the root urlconf when the service is enabled."""

from django.urls import URLPattern, URLResolver, include, path

urlpatterns: list[URLPattern | URLResolver] = [path("", include("services.training.api.urls"))]
urlpatterns += [path("", include("services.training.console.urls"))]
