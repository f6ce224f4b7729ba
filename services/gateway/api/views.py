from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from arbiter.api.parsers import API_PARSERS
from arbiter.api.schema import error_responses
from arbiter.tenancy import logic, selectors
from arbiter.tenancy.access import key_org
from arbiter.tenancy.authentication import ApiKeyPrincipal
from arbiter.tenancy.models import ApiKey, Org
from arbiter.tenancy.scopes import ROLE_SCOPES, Role, expand
from arbiter.tenancy.viewsets import OrgScopedViewSet
from services.gateway.api import serializers as s


def _person(request: Request) -> User:
    """The signed-in person (IsAuthenticated already refused anonymous callers; keys are handled before)."""
    assert isinstance(request.user, User)
    return request.user


class MeView(APIView):
    """Who is calling: the user and their orgs, or the API key with its org and scopes (Zapier's auth test)."""

    @extend_schema(responses=s.MeSerializer)
    def get(self, request: Request) -> Response:
        principal = request.user
        if isinstance(principal, ApiKeyPrincipal):
            key = request.auth
            assert isinstance(key, ApiKey)
            return Response(
                {
                    "kind": "api_key",
                    "user": None,
                    "api_key": {"id": key.pk, "name": key.name, "display": key.display, "scopes": key.scopes},
                    "orgs": [
                        {
                            "slug": key.org.slug,
                            "name": key.org.name,
                            "role": None,
                            "scopes": sorted(expand(key.scopes)),
                        }
                    ],
                }
            )
        person = _person(request)
        memberships = selectors.orgs_for_user(user_id=person.pk)
        return Response(
            {
                "kind": "user",
                "user": {"id": person.pk, "email": person.email},
                "api_key": None,
                "orgs": [
                    {
                        "slug": m.org.slug,
                        "name": m.org.name,
                        "role": m.role,
                        "scopes": sorted(ROLE_SCOPES[Role(m.role)]),
                    }
                    for m in memberships
                ],
            }
        )


class OrgListView(APIView):
    parser_classes = API_PARSERS

    @extend_schema(responses=s.OrgSerializer(many=True))
    def get(self, request: Request) -> Response:
        org_of_key = key_org(request)
        if org_of_key is None:
            return Response(
                s.OrgSerializer(
                    [m.org for m in selectors.orgs_for_user(user_id=_person(request).pk)], many=True
                ).data
            )
        return Response(s.OrgSerializer([org_of_key], many=True).data)

    @extend_schema(request=s.OrgCreateSerializer, responses={201: s.OrgSerializer, **error_responses(409)})
    def post(self, request: Request) -> Response:
        if isinstance(request.user, ApiKeyPrincipal):
            raise PermissionDenied("API keys belong to one org and cannot create orgs; sign in as a person.")
        payload = s.OrgCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        org = logic.org_create(owner=_person(request), **payload.validated_data)
        return Response(s.OrgSerializer(org).data, status=status.HTTP_201_CREATED)


class OrgViewSet(OrgScopedViewSet):
    read_scope = None
    write_scope = "admin"

    @extend_schema(responses=s.OrgSerializer)
    def retrieve(self, request: Request, org: str) -> Response:
        return Response(s.OrgSerializer(Org.objects.get(pk=self.org_id)).data)

    @extend_schema(request=s.OrgUpdateSerializer, responses=s.OrgSerializer)
    def partial_update(self, request: Request, org: str) -> Response:
        payload = s.OrgUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        instance = Org.objects.get(pk=self.org_id)
        instance.name = payload.validated_data["name"]
        instance.save(update_fields=["name"])
        return Response(s.OrgSerializer(instance).data)


class MemberViewSet(OrgScopedViewSet, mixins.ListModelMixin):
    read_scope = None
    write_scope = "admin"
    serializer_class = s.MembershipSerializer
    pagination_class = None

    def safely_get_queryset(self) -> Any:
        return selectors.org_members(org_id=self.org_id)

    @extend_schema(
        request=s.MemberCreateSerializer, responses={201: s.MembershipSerializer, **error_responses(409)}
    )
    def create(self, request: Request, org: str) -> Response:
        payload = s.MemberCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        membership = logic.member_add(
            org_id=self.org_id, acting_role=self.access.role, **payload.validated_data
        )
        return Response(s.MembershipSerializer(membership).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        request=s.MemberUpdateSerializer, responses={200: s.MembershipSerializer, **error_responses(409)}
    )
    def partial_update(self, request: Request, org: str, pk: str) -> Response:
        payload = s.MemberUpdateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        membership = logic.member_set_role(
            membership=self.get_object(), acting_role=self.access.role, role=payload.validated_data["role"]
        )
        return Response(s.MembershipSerializer(membership).data)

    @extend_schema(responses={204: None, **error_responses(409)})
    def destroy(self, request: Request, org: str, pk: str) -> Response:
        logic.member_remove(membership=self.get_object(), acting_role=self.access.role)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ApiKeyViewSet(OrgScopedViewSet, mixins.ListModelMixin, mixins.RetrieveModelMixin):
    read_scope = "admin"
    write_scope = "admin"
    idempotency_redact = ("secret",)
    serializer_class = s.ApiKeySerializer
    pagination_class = None

    def safely_get_queryset(self) -> Any:
        return selectors.org_api_keys(org_id=self.org_id)

    @extend_schema(request=s.ApiKeyCreateSerializer, responses={201: s.ApiKeyCreatedSerializer})
    def create(self, request: Request, org: str) -> Response:
        payload = s.ApiKeyCreateSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        created = logic.api_key_create(
            org_id=self.org_id,
            granted=self.access.scopes,
            created_by_id=self.access.user_id,
            **payload.validated_data,
        )
        body = s.ApiKeyCreatedSerializer(created.key, context={"secret": created.secret}).data
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, org: str, pk: str) -> Response:
        logic.api_key_revoke(key=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
