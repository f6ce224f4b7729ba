"""`POST /webhooks/stripe`: Stripe's events, verified by their `Stripe-Signature` (300 s tolerance) and applied
once each. Stripe is the caller, not a user: no token, the signature is the authentication."""

from __future__ import annotations

import logging

import stripe
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from arbiter.api.errors import error_body
from arbiter.entitlements import billing_settings
from services.billing import payments

log = logging.getLogger(__name__)

TOLERANCE_S = 300


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> JsonResponse:
    secret = billing_settings().stripe_webhook_secret
    if secret is None:
        return JsonResponse(
            error_body("stripe_not_configured", "STRIPE_WEBHOOK_SECRET is not set on this installation."),
            status=404,
        )
    try:
        event = stripe.Webhook.construct_event(
            request.body, request.headers.get("Stripe-Signature"), secret.get_secret_value(), TOLERANCE_S
        )
    except stripe.SignatureVerificationError as error:
        return JsonResponse(
            error_body(
                "invalid_signature",
                f"Stripe-Signature: {error.user_message or 'no valid signature'} (forged, or older than "
                f"{TOLERANCE_S} s).",
                {"Stripe-Signature": ["Invalid signature."]},
            ),
            status=400,
        )
    except ValueError:
        return JsonResponse(error_body("invalid", "The body is not a Stripe event (JSON)."), status=400)
    applied = payments.webhook_apply(event=event.to_dict())
    return JsonResponse({"received": True, "applied": applied})
