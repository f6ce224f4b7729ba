"""URLs of the billing service: the billing API and the console's Billing page."""

from django.urls import include, path

urlpatterns = [
    path("", include("services.billing.api.urls")),
    path("", include("services.billing.console.urls")),
]
