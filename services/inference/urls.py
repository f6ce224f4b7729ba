"""URLs of the inference service: the native API (deployments, classify, playground, usage) and the
OpenAI- and Mistral-compatible endpoints."""

from django.urls import include, path

urlpatterns = [
    path("", include("services.inference.api.urls")),
    path("", include("services.inference.console.urls")),
]
