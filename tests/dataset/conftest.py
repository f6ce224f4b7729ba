from __future__ import annotations

import io
from typing import Any

import pytest
from rest_framework.test import APIClient

from arbiter.testing.tenants import Tenant
from tests.storage.conftest import moto_endpoint, s3_env  # noqa: F401 - S3 fixtures for the imports from S3


class DatasetApi:
    """Calls the dataset API as one org's API key (scopes: datasets read and write)."""

    def __init__(self, tenant: Tenant, client: APIClient) -> None:
        self.tenant = tenant
        self.client = client

    def url(self, path: str = "") -> str:
        return self.tenant.url(path)

    def upload(self, data: bytes, name: str = "upload.csv", path: str = "/datasets", **fields: Any) -> Any:
        file = io.BytesIO(data)
        file.name = name
        return self.client.post(self.url(path), {"file": file, **fields}, format="multipart")

    def create(self, data: bytes, name: str = "upload.csv", **fields: Any) -> dict[str, Any]:
        response = self.upload(data, name, **fields)
        assert response.status_code == 201, response.content
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.client.get(self.url(path), params)

    def post(self, path: str, body: Any, **extra: Any) -> Any:
        return self.client.post(self.url(path), body, format="json", **extra)

    def patch(self, path: str, body: Any) -> Any:
        return self.client.patch(self.url(path), body, format="json")

    def rows(self, dataset_id: int, **params: Any) -> list[dict[str, Any]]:
        response = self.get(f"/datasets/{dataset_id}/rows", page_size=500, **params)
        assert response.status_code == 200, response.content
        return response.json()["results"]


@pytest.fixture
def api(tenant: Tenant) -> DatasetApi:
    return DatasetApi(tenant, tenant.client(["datasets:read", "datasets:write"]))
