"""The test-data factories store things the way the product does."""

from __future__ import annotations

import pytest
from django.contrib.auth import authenticate

from arbiter.tenancy.models import ApiKey, hash_key_secret
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.factories import (
    ApiKeyFactory,
    DatasetFactory,
    DatasetJobFactory,
    MembershipFactory,
    RowFactory,
    UserFactory,
)
from services.dataset.models import Dataset, Row

pytestmark = pytest.mark.django_db(databases="__all__")


def test_people_sign_in_with_their_password_and_keys_are_kept_hashed() -> None:
    membership = MembershipFactory(user=UserFactory(email="ana@example.com", password="correct horse"))
    assert authenticate(username="ana@example.com", password="correct horse") == membership.user
    key = ApiKeyFactory(org=membership.org, scopes=["inference"])
    stored = ApiKey.objects.get(pk=key.pk)
    assert stored.hashed_secret == hash_key_secret(key.secret) and key.secret not in stored.hashed_secret
    assert stored.display == f"{key.secret[:12]}…{key.secret[-4:]}"


def test_org_scoped_rows_belong_to_their_dataset_s_org_only() -> None:
    job = DatasetJobFactory()
    row = RowFactory(dataset=job.dataset, job=job)
    other = DatasetFactory()
    assert row.org_id == job.org_id == job.dataset.org_id != other.org_id
    with org_scope(job.org_id):
        assert list(Dataset.objects.values_list("pk", flat=True)) == [job.dataset.pk]
        assert Row.objects.get().cells == ["a comment", "ok"]
