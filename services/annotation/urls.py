"""URLs of the annotation service: its API and the console's Labeling pages."""

from django.urls import include, path

urlpatterns = [
    path("", include("services.annotation.api.urls")),
    path("", include("services.annotation.console.urls")),
]
