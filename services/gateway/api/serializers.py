from __future__ import annotations

from typing import Any

from rest_framework import serializers

from arbiter.tenancy.models import ApiKey, Membership, Org
from arbiter.tenancy.scopes import SCOPES, Role


class OrgSerializer(serializers.ModelSerializer):
    class Meta:
        model = Org
        fields = ["id", "slug", "name", "created_at"]
        read_only_fields = ["id", "created_at"]


class OrgCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    slug = serializers.CharField(max_length=50, required=False, allow_blank=False)


class OrgUpdateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)


class MembershipSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email", read_only=True)

    class Meta:
        model = Membership
        fields = ["id", "email", "role", "created_at"]
        read_only_fields = fields


class MemberCreateSerializer(serializers.Serializer):
    email = serializers.EmailField()
    role = serializers.ChoiceField(choices=[r.value for r in Role], default=Role.MEMBER.value)


class MemberUpdateSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=[r.value for r in Role])


class ApiKeySerializer(serializers.ModelSerializer):
    display = serializers.CharField(read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = ApiKey
        fields = [
            "id",
            "name",
            "prefix",
            "last_four",
            "display",
            "scopes",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "active",
        ]
        read_only_fields = fields


class ApiKeyCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=200)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=list(SCOPES)), allow_empty=False)
    expires_at = serializers.DateTimeField(required=False, allow_null=True)


class ApiKeyCreatedSerializer(ApiKeySerializer):
    secret = serializers.SerializerMethodField(help_text="The key itself. Shown once: store it now.")

    class Meta(ApiKeySerializer.Meta):
        fields = [*ApiKeySerializer.Meta.fields, "secret"]
        read_only_fields = fields

    def get_secret(self, obj: Any) -> str:
        return str(self.context["secret"])


class MeUserSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    email = serializers.EmailField()


class MeApiKeySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    display = serializers.CharField(help_text="prefix and last four characters")
    scopes = serializers.ListField(child=serializers.CharField())


class MeOrgSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    role = serializers.CharField(allow_null=True, help_text="the person's role (null for an API key)")
    scopes = serializers.ListField(
        child=serializers.CharField(), help_text="every scope the caller holds here"
    )


class MeSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["user", "api_key"])
    user = MeUserSerializer(allow_null=True)
    api_key = MeApiKeySerializer(allow_null=True)
    orgs = MeOrgSerializer(many=True)
