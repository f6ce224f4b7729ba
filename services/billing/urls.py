"""URLs of the billing service, included by the root urlconf when the service is enabled."""

from django.urls import URLPattern, URLResolver

urlpatterns: list[URLPattern | URLResolver] = []
