"""Shapes of the webhooks API: endpoints, REST hooks, deliveries with their attempts, and the event catalogue."""

from __future__ import annotations

import json
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from services.gateway.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint

EVENTS_HELP = (
    "Event types or patterns: `training.completed`, `training.*`, `*` (see GET /api/v1/webhooks/event-types)."
)


class EndpointSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "url",
            "description",
            "events",
            "enabled",
            "disabled_reason",
            "disabled_at",
            "failing_since",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "events": {"help_text": EVENTS_HELP},
            "disabled_reason": {
                "help_text": "`gone` (it answered 410), `failing` (the failure window), `user`"
            },
        }

    events = serializers.ListField(child=serializers.CharField(), help_text=EVENTS_HELP, read_only=True)


class EndpointCreatedSerializer(EndpointSerializer):
    secret = serializers.CharField(
        read_only=True, help_text="The signing secret (`whsec_...`). Shown once: store it now."
    )

    class Meta(EndpointSerializer.Meta):
        fields = [*EndpointSerializer.Meta.fields, "secret"]
        read_only_fields = fields


class EndpointCreateSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=2000, help_text="https URL that receives the events (POST).")
    events = serializers.ListField(child=serializers.CharField(max_length=100), help_text=EVENTS_HELP)
    description = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")


class EndpointUpdateSerializer(serializers.Serializer):
    url = serializers.CharField(max_length=2000, required=False)
    events = serializers.ListField(
        child=serializers.CharField(max_length=100), required=False, help_text=EVENTS_HELP
    )
    description = serializers.CharField(max_length=500, required=False, allow_blank=True)
    enabled = serializers.BooleanField(
        required=False, help_text="false pauses deliveries; true resumes them."
    )


class RotateSerializer(serializers.Serializer):
    overlap_seconds = serializers.FloatField(
        required=False,
        min_value=0,
        max_value=30 * 24 * 3600,
        help_text="How long the old secret keeps signing too (both signatures are sent); default "
        "ARBITER_WEBHOOK_SECRET_OVERLAP_SECONDS.",
    )


class RotatedSerializer(serializers.Serializer):
    secret = serializers.CharField(help_text="The new signing secret. Shown once: store it now.")
    previous_secret_until = serializers.DateTimeField(
        allow_null=True, help_text="Until when the old secret signs too."
    )


class ResendSerializer(serializers.Serializer):
    since = serializers.DateTimeField(help_text="Resend every failed delivery made since this time.")


class ResentSerializer(serializers.Serializer):
    resent = serializers.IntegerField(help_text="How many failed deliveries are sent again.")


class AttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookAttempt
        fields = ["number", "outcome", "status_code", "latency_ms", "response_body", "error", "started_at"]
        read_only_fields = fields
        extra_kwargs = {
            "response_body": {"help_text": "The first 2 KB of the answer."},
            "outcome": {
                "help_text": "`succeeded`, `failed` or `refused` (the egress guard refused the address)."
            },
        }


@extend_schema_field(
    {
        "type": "object",
        "description": "The message exactly as signed and sent.",
        "properties": {
            "type": {"type": "string"},
            "timestamp": {"type": "string", "format": "date-time"},
            "data": {
                "type": "object",
                "description": "As the event type's public JSON Schema says (GET /api/v1/webhooks/event-types).",
                "additionalProperties": {"description": "a field of the event type's schema"},
            },
        },
        "required": ["type", "timestamp", "data"],
    }
)
class MessageField(serializers.Field):
    def to_representation(self, value: Any) -> Any:
        return json.loads(value)


class DeliverySerializer(serializers.ModelSerializer):
    webhook_id = serializers.CharField(
        source="message_id", read_only=True, help_text="The `webhook-id` header."
    )
    payload = MessageField(source="body", read_only=True)
    attempts = AttemptSerializer(source="attempt_log", many=True, read_only=True)
    attempt_count = serializers.IntegerField(source="attempts", read_only=True)

    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "webhook_id",
            "event_id",
            "event_type",
            "status",
            "attempt_count",
            "next_attempt_at",
            "last_status_code",
            "last_error",
            "created_at",
            "finished_at",
            "payload",
            "attempts",
        ]
        read_only_fields = fields


class HookCreateSerializer(serializers.Serializer):
    target_url = serializers.CharField(
        max_length=2000, help_text="The URL Zapier (or any client) listens on."
    )
    event = serializers.CharField(max_length=100, help_text="One event type, e.g. `training.completed`.")


class HookSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    target_url = serializers.CharField(source="url")
    event = serializers.SerializerMethodField()
    enabled = serializers.BooleanField()
    created_at = serializers.DateTimeField()

    def get_event(self, obj: WebhookEndpoint) -> str:
        return str(obj.events[0]) if obj.events else ""


class HookCreatedSerializer(HookSerializer):
    secret = serializers.CharField(help_text="The signing secret to verify deliveries with. Shown once.")


@extend_schema_field(
    {
        "type": "object",
        "description": "As the event type's public JSON Schema says (GET /api/v1/webhooks/event-types).",
        "additionalProperties": {"description": "a field of the event type's schema"},
    }
)
class EventDataField(serializers.Field):
    def to_representation(self, value: Any) -> Any:
        return value


class SampleSerializer(serializers.Serializer):
    type = serializers.CharField()
    timestamp = serializers.CharField(help_text="ISO 8601, UTC")
    data = EventDataField()  # type: ignore[assignment]  # the field named as the body names it


@extend_schema_field(
    {
        "type": "object",
        "description": "A JSON Schema (draft 2020-12) of the event's `data`, with examples.",
        "properties": {
            "$schema": {"type": "string"},
            "$id": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": "string"},
            "type": {"type": "string"},
            "properties": {"type": "object", "additionalProperties": {"type": "object", "properties": {}}},
            "required": {"type": "array", "items": {"type": "string"}},
            "examples": {"type": "array", "items": {"type": "object", "properties": {}}},
        },
    }
)
class JsonSchemaField(serializers.Field):
    def to_representation(self, value: Any) -> Any:
        return value


class EventTypeSerializer(serializers.Serializer):
    type = serializers.CharField()
    version = serializers.IntegerField(
        help_text="The version of this type's schema; a breaking change is a new version."
    )
    description = serializers.CharField()
    schema = JsonSchemaField()


class EventCatalogueSerializer(serializers.Serializer):
    version = serializers.CharField(help_text="The catalogue's version (a date).")
    envelope = serializers.CharField(help_text="What every delivery's body is.")
    event_types = EventTypeSerializer(many=True)
