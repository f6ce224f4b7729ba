from __future__ import annotations

from drf_spectacular.utils import inline_serializer
from rest_framework import serializers

from arbiter.config.typed_settings import METERS

METER_HELP = f"One of {', '.join(METERS)}."


class BillingPeriodSerializer(serializers.Serializer):
    start = serializers.DateField(help_text="The period's first day (UTC).")
    end = serializers.DateField(help_text="The period's last day (UTC).")


class BillingMeterSerializer(serializers.Serializer):
    meter = serializers.CharField(help_text=METER_HELP)
    unit = serializers.CharField(help_text="What one unit is, in words.")
    included = serializers.IntegerField(
        allow_null=True,
        help_text="What the plan includes this period (per model for the playground); null: unlimited.",
    )
    used = serializers.IntegerField(help_text="Units used this period.")
    remaining = serializers.IntegerField(
        allow_null=True, help_text="What is left of `included` this period; null: unlimited or per model."
    )
    overage = serializers.BooleanField(help_text="Beyond `included`: metered and billed (true) or refused.")
    per_model = serializers.BooleanField(
        help_text="The allowance counts per model, for good (the playground)."
    )


class BillingStripeSerializer(serializers.Serializer):
    enabled = serializers.BooleanField(help_text="Stripe is configured on this installation.")
    customer = serializers.BooleanField(help_text="The org has a Stripe customer.")
    subscription_status = serializers.CharField(help_text="Stripe's subscription status; empty without one.")


class BillingSerializer(serializers.Serializer):
    plan = serializers.CharField()
    plan_label = serializers.CharField()
    paid = serializers.BooleanField()
    notice = serializers.CharField(help_text="Why the plan last changed without the org asking, if it did.")
    period = BillingPeriodSerializer()
    meters = BillingMeterSerializer(many=True)
    plans = serializers.ListField(child=serializers.CharField(), help_text="The plans an admin may choose.")
    stripe = BillingStripeSerializer()


class BillingPlanRequestSerializer(serializers.Serializer):
    plan = serializers.CharField(
        max_length=50, help_text="One of the configured plans, e.g. `free` or `pro`."
    )


class BillingUsageDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    meter = serializers.CharField(help_text=METER_HELP)
    units = serializers.IntegerField()


USAGE_RESPONSE = inline_serializer(
    "BillingUsageResponse",
    {
        "from": serializers.DateField(),
        "to": serializers.DateField(),
        "meter": serializers.CharField(allow_null=True, help_text=METER_HELP),
        "days": BillingUsageDaySerializer(many=True),
        "totals": serializers.DictField(child=serializers.IntegerField(), help_text="Units per meter."),
    },
)


class BillingInvoiceSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="Stripe's invoice id.")
    number = serializers.CharField(help_text="The invoice number; empty on a draft.")
    status = serializers.CharField(help_text="draft, open, paid, uncollectible or void.")
    amount_due = serializers.IntegerField(help_text="In the currency's smallest unit (cents).")
    amount_paid = serializers.IntegerField(help_text="In the currency's smallest unit (cents).")
    currency = serializers.CharField()
    created = serializers.DateTimeField()
    hosted_invoice_url = serializers.CharField(help_text="Stripe's page to view and pay the invoice.")


class BillingInvoicesSerializer(serializers.Serializer):
    stripe = serializers.BooleanField(help_text="Stripe is configured; without it there are no invoices.")
    invoices = BillingInvoiceSerializer(many=True)


class BillingPortalRequestSerializer(serializers.Serializer):
    return_url = serializers.URLField(
        required=False, help_text="Where Stripe sends the admin back (default: the console's Billing page)."
    )


class BillingPortalSerializer(serializers.Serializer):
    url = serializers.CharField(help_text="Stripe's customer portal: add a payment method, see invoices.")
