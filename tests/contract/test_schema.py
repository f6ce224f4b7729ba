"""The OpenAPI schema: generated without a warning, valid, and a contract a client can rely on."""

from __future__ import annotations

from typing import Any

import pytest
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.validation import validate_schema

ERROR_REF = "#/components/schemas/Error"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    GENERATOR_STATS.reset()
    generated: dict[str, Any] = SchemaGenerator().get_schema(request=None, public=True)
    warnings, errors = dict(GENERATOR_STATS._warn_cache), dict(GENERATOR_STATS._error_cache)
    GENERATOR_STATS.reset()
    assert not errors and not warnings, "the schema generator complained:\n" + "\n".join([*errors, *warnings])
    return generated


def operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def bare_objects(node: Any, where: str = "") -> list[str]:
    """Places where the schema says only "an object", without naming its properties or their type."""
    found = []
    if isinstance(node, dict):
        if (
            node.get("type") == "object"
            and "properties" not in node
            and node.get("additionalProperties")
            in (
                None,
                True,
                {},
            )
        ):
            found.append(where)
        for key, value in node.items():
            found += bare_objects(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += bare_objects(value, f"{where}[{index}]")
    return found


def test_the_schema_is_valid_openapi_and_covers_every_service(schema: dict[str, Any]) -> None:
    validate_schema(schema)
    paths = set(schema["paths"])
    for expected in (
        "/api/v1/me",
        "/api/v1/orgs/{org}/api-keys",
        "/api/v1/orgs/{org}/datasets/{dataset}/rows",
        "/api/v1/orgs/{org}/snapshots/{snapshot}",
        "/api/v1/orgs/{org}/models/{model}/versions",
        "/api/v1/orgs/{org}/deployments/{id}/classify",
        "/v1/moderations",
        "/v1/classifications",
    ):
        assert expected in paths


def test_callers_authenticate_with_a_bearer_api_key_or_the_console_session(schema: dict[str, Any]) -> None:
    schemes = schema["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "http", "scheme": "bearer"}
    assert schemes["session"] == {**schemes["session"], "type": "apiKey", "in": "cookie", "name": "sessionid"}
    for method, path, operation in operations(schema):
        assert {"apiKey": []} in operation["security"], f"{method} {path} does not take an API key"
        assert {} not in operation["security"], f"{method} {path} is open to anonymous callers"
    moderations = schema["paths"]["/v1/moderations"]["post"]
    assert moderations["security"] == [{"apiKey": []}]


def test_every_answer_is_typed(schema: dict[str, Any]) -> None:
    assert bare_objects(schema) == []
    for method, path, operation in operations(schema):
        if method in ("POST", "PATCH", "PUT") and "requestBody" in operation:
            for media_type, content in operation["requestBody"]["content"].items():
                assert content.get("schema"), f"{method} {path} {media_type}: no request schema"
        successes = {code: answer for code, answer in operation["responses"].items() if code.startswith("2")}
        assert successes, f"{method} {path} documents no success"
        for code, answer in successes.items():
            if code == "204":
                assert "content" not in answer
                continue
            for media_type, content in answer["content"].items():
                assert content.get("schema"), f"{method} {path} {code} {media_type}: no schema"


def test_errors_are_documented_with_the_one_error_shape(schema: dict[str, Any]) -> None:
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    detail = schema["components"]["schemas"][error["properties"]["error"]["$ref"].rsplit("/", 1)[1]]
    assert set(detail["required"]) == {"code", "message", "details"}

    for method, path, operation in operations(schema):
        responses = operation["responses"]
        errors = {code: answer for code, answer in responses.items() if code[0] in "45"}
        for code, answer in errors.items():
            assert answer["content"]["application/json"]["schema"] == {"$ref": ERROR_REF}, (
                method,
                path,
                code,
            )
            assert answer["description"], (method, path, code)
        assert {"401", "403"} <= set(errors), f"{method} {path}: 401/403 undocumented"
        if "{" in path:
            assert "404" in errors, f"{method} {path}: 404 undocumented"
        if "requestBody" in operation or any(p["in"] == "query" for p in operation.get("parameters", [])):
            assert "400" in errors, f"{method} {path}: 400 undocumented"
        if method == "POST" and path.startswith("/api/v1/orgs/{org}"):
            names = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
            assert "Idempotency-Key" in names and {"409", "422"} <= set(errors), f"{method} {path}"

    uploads = schema["paths"]["/api/v1/orgs/{org}/datasets"]["post"]
    assert "413" in uploads["responses"]
    assert set(uploads["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    playground = schema["paths"]["/api/v1/orgs/{org}/models/{model_id}/versions/{version}/playground"]["post"]
    assert "402" in playground["responses"]
