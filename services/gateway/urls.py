"""URLs of the gateway service: the identity API and the console's account pages."""

from django.urls import include, path

urlpatterns = [
    path("", include("services.gateway.api.urls")),
    path("", include("services.gateway.console.urls")),
]
