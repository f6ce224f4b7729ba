"""The webhooks API: endpoints (`/webhooks`), their delivery log, Zapier REST hooks (`/hooks`) and the public
event catalogue (`/api/v1/webhooks/event-types`). Managing webhooks needs the `admin` scope."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from arbiter.api.schema import error_responses
from arbiter.tenancy.viewsets import OrgScopedViewSet
from services.gateway import logic, selectors
from services.gateway.api import webhook_serializers as s
from services.gateway.catalogue import CATALOGUE_VERSION, PUBLIC_TYPES
from services.gateway.models import WebhookDelivery, WebhookEndpoint

ENVELOPE = (
    'Every delivery is a POST with the JSON body {"type", "timestamp", "data"} and the Standard Webhooks headers '
    "webhook-id (the same on every attempt), webhook-timestamp and webhook-signature (v1,<base64 HMAC-SHA256 of "
    "id.timestamp.body> per live secret); verify them with any Standard Webhooks library."
)


def _id(value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise Http404 from None
    if number < 1:
        raise Http404
    return number


class WebhookViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    read_scope = "admin"
    write_scope = "admin"
    idempotency_redact = ("secret",)
    serializer_class = s.EndpointSerializer
    pagination_class = None

    def safely_get_queryset(self) -> Any:
        return selectors.endpoints()

    @extend_schema(request=s.EndpointCreateSerializer, responses={201: s.EndpointCreatedSerializer})
    def create(self, request: Request, org: str) -> Response:
        payload = s.EndpointCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        endpoint = logic.endpoint_create(org_id=self.org_id, **payload.validated_data)
        return Response(s.EndpointCreatedSerializer(endpoint).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=s.EndpointUpdateSerializer, responses=s.EndpointSerializer)
    def partial_update(self, request: Request, org: str, pk: str) -> Response:
        payload = s.EndpointUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        endpoint = logic.endpoint_update(endpoint=self.get_object(), **payload.validated_data)
        return Response(s.EndpointSerializer(endpoint).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, org: str, pk: str) -> Response:
        logic.endpoint_delete(endpoint=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=s.RotateSerializer, responses=s.RotatedSerializer)
    def rotate(self, request: Request, org: str, pk: str) -> Response:
        payload = s.RotateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        endpoint = self.get_object()
        secret = logic.secret_rotate(
            endpoint=endpoint, overlap_s=payload.validated_data.get("overlap_seconds")
        )
        return Response(
            s.RotatedSerializer(
                {"secret": secret, "previous_secret_until": endpoint.previous_secret_until}
            ).data
        )

    @extend_schema(request=None, responses={202: s.DeliverySerializer})
    def test(self, request: Request, org: str, pk: str) -> Response:
        delivery = logic.endpoint_test(endpoint=self.get_object())
        return Response(s.DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=s.ResendSerializer, responses={202: s.ResentSerializer, **error_responses(409)})
    def resend(self, request: Request, org: str, pk: str) -> Response:
        payload = s.ResendSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        count = logic.deliveries_resend_failed(
            endpoint=self.get_object(), since=payload.validated_data["since"]
        )
        return Response({"resent": count}, status=status.HTTP_202_ACCEPTED)


class DeliveryViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    read_scope = "admin"
    write_scope = "admin"
    serializer_class = s.DeliverySerializer

    def safely_get_queryset(self) -> Any:
        endpoint = WebhookEndpoint.objects.filter(pk=_id(self.kwargs["webhook_id"])).first()
        if endpoint is None:
            raise Http404
        wanted = self.request.query_params.get("status") or None
        return selectors.endpoint_deliveries(endpoint_id=endpoint.pk, status=wanted)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "status",
                str,
                enum=[WebhookDelivery.PENDING, WebhookDelivery.SUCCEEDED, WebhookDelivery.FAILED],
                required=False,
                description="Only deliveries in this state.",
            )
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        wanted = request.query_params.get("status")
        if wanted and wanted not in (
            WebhookDelivery.PENDING,
            WebhookDelivery.SUCCEEDED,
            WebhookDelivery.FAILED,
        ):
            return Response(
                {
                    "error": {
                        "code": "invalid",
                        "message": "status: choose pending, succeeded or failed.",
                        "details": {"status": ["choose pending, succeeded or failed"]},
                    }
                },
                status=status.HTTP_400_BAD_REQUEST,
            )
        return super().list(request, *args, **kwargs)

    @extend_schema(request=None, responses={202: s.DeliverySerializer, **error_responses(409)})
    def retry(self, request: Request, org: str, webhook_id: str, pk: str) -> Response:
        delivery = logic.delivery_resend(delivery=self.get_object())
        return Response(s.DeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


class HookViewSet(OrgScopedViewSet, mixins.ListModelMixin):
    """Zapier-style REST hooks: subscribe a target URL to one event type; unsubscribe by deleting it."""

    read_scope = "admin"
    write_scope = "admin"
    idempotency_redact = ("secret",)
    serializer_class = s.HookSerializer
    pagination_class = None

    def safely_get_queryset(self) -> Any:
        return selectors.endpoints(kind=WebhookEndpoint.KIND_REST_HOOK)

    @extend_schema(request=s.HookCreateSerializer, responses={201: s.HookCreatedSerializer})
    def create(self, request: Request, org: str) -> Response:
        payload = s.HookCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        hook = logic.endpoint_create(
            org_id=self.org_id,
            url=payload.validated_data["target_url"],
            events=[payload.validated_data["event"]],
            kind=WebhookEndpoint.KIND_REST_HOOK,
        )
        body = s.HookCreatedSerializer(hook).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, org: str, pk: str) -> Response:
        logic.endpoint_delete(endpoint=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses=s.SampleSerializer(many=True))
    def samples(self, request: Request, org: str, event: str) -> Response:
        if event not in PUBLIC_TYPES:
            raise Http404
        return Response(s.SampleSerializer(selectors.event_samples(type=event), many=True).data)


class EventTypesView(APIView):
    """The public event catalogue: every type a webhook can subscribe to, with its JSON Schema."""

    @extend_schema(responses=s.EventCatalogueSerializer)
    def get(self, request: Request) -> Response:
        catalogue = {
            "version": CATALOGUE_VERSION,
            "envelope": ENVELOPE,
            "event_types": [
                {"type": t.type, "version": t.version, "description": t.description, "schema": t.schema}
                for t in PUBLIC_TYPES.values()
            ],
        }
        return Response(s.EventCatalogueSerializer(catalogue).data)
