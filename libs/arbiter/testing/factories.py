"""factory-boy factories for test data: people, orgs, memberships, API keys, datasets, import jobs and rows.

    owner = UserFactory(password="a long password")
    key = ApiKeyFactory(org=org, scopes=["inference"], expires_at=yesterday)   # key.secret: the bearer token
    job = DatasetJobFactory(dataset=DatasetFactory(org_id=org.pk), state="running")

Each factory writes the way the product stores the thing (API keys as sha256 with prefix and last four,
org-scoped rows inside their org's scope), so a test can build a state without walking the API to it.
Service models are named by app label, so the kernel imports no service.
"""

from __future__ import annotations

import secrets
from typing import Any

import factory
from django.contrib.auth.models import User
from django.utils import timezone
from factory.django import DjangoModelFactory

from arbiter.tenancy.models import ApiKey, Membership, Org, generate_key_secret, hash_key_secret
from arbiter.tenancy.scopes import Role
from arbiter.tenancy.scoping import org_scope


class UserFactory(DjangoModelFactory[User]):
    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"person-{n}@example.com")
    username = factory.SelfAttribute("email")
    password = "a long test password"

    @classmethod
    def _create(cls, model_class: type[User], *args: Any, **kwargs: Any) -> User:
        # create_user hashes the password, as sign-up does.
        return model_class.objects.create_user(*args, **kwargs)


class OrgFactory(DjangoModelFactory[Org]):
    class Meta:
        model = Org

    slug = factory.Sequence(lambda n: f"org-{n}-{secrets.token_hex(3)}")
    name = factory.LazyAttribute(lambda org: org.slug.replace("-", " ").title())


class MembershipFactory(DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    org = factory.SubFactory(OrgFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.MEMBER


class ApiKeyFactory(DjangoModelFactory[ApiKey]):
    """An API key; the returned object carries its `secret`, the bearer token, which is never stored."""

    class Meta:
        model = ApiKey

    secret = factory.LazyFunction(generate_key_secret)
    org = factory.SubFactory(OrgFactory)
    name = "test key"
    hashed_secret = factory.LazyAttribute(lambda key: hash_key_secret(key.secret))
    prefix = factory.LazyAttribute(lambda key: key.secret[:12])
    last_four = factory.LazyAttribute(lambda key: key.secret[-4:])
    scopes = factory.LazyFunction(lambda: ["admin"])

    @classmethod
    def _build(cls, model_class: type[ApiKey], *args: Any, **kwargs: Any) -> ApiKey:
        secret = kwargs.pop("secret")
        key = super()._build(model_class, *args, **kwargs)
        key.secret = secret  # type: ignore[attr-defined]
        return key

    @classmethod
    def _create(cls, model_class: type[ApiKey], *args: Any, **kwargs: Any) -> ApiKey:
        secret = kwargs.pop("secret")
        key = super()._create(model_class, *args, **kwargs)
        key.secret = secret  # type: ignore[attr-defined]
        return key


class OrgScopedFactory(DjangoModelFactory[Any]):
    """Creates a service's org-scoped row inside its org's scope, as the service itself would."""

    class Meta:
        abstract = True

    @classmethod
    def _create(cls, model_class: Any, *args: Any, **kwargs: Any) -> Any:
        with org_scope(kwargs["org_id"]):
            return model_class.objects.create(*args, **kwargs)


class DatasetFactory(OrgScopedFactory):
    class Meta:
        model = "dataset.Dataset"

    org_id = factory.LazyFunction(lambda: OrgFactory.create().pk)
    name = factory.Sequence(lambda n: f"dataset {n}")
    columns = factory.LazyFunction(lambda: ["text", "label"])
    created_by = "test"


class DatasetJobFactory(OrgScopedFactory):
    class Meta:
        model = "dataset.DatasetJob"

    dataset = factory.SubFactory(DatasetFactory)
    org_id = factory.SelfAttribute("dataset.org_id")
    state = "running"
    source = factory.LazyFunction(lambda: {"file_name": "upload.csv"})
    created_by = "test"
    heartbeat_at = factory.LazyFunction(timezone.now)


class RowFactory(OrgScopedFactory):
    class Meta:
        model = "dataset.Row"

    dataset = factory.SubFactory(DatasetFactory)
    org_id = factory.SelfAttribute("dataset.org_id")
    number = factory.Sequence(lambda n: n + 1)
    cells = factory.LazyFunction(lambda: ["a comment", "ok"])
