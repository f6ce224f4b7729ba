"""URLs of the dataset service, included by the root urlconf when the service is enabled."""

from django.urls import include, path

urlpatterns = [path("", include("services.dataset.api.urls"))]
urlpatterns += [path("", include("services.dataset.console.urls"))]
