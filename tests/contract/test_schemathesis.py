"""Schemathesis fuzzes every operation of the live API with real ids: no 5xx, and every answer as documented.

A live server holds one org's world, built through the API and the events a running system would deliver: a
dataset with rows, an import job and a snapshot (announced to training), a model with version 1 and its run, the
version trained (an artifact announced to inference) and deployed live, a spare API key and a spare member. Each
operation is fuzzed with valid (positive) and invalid (negative) data, its path parameters set to those ids.
Generation is derandomized and bounded, so a run is deterministic and takes a few minutes at most.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from arbiter.events.envelope import Event
from arbiter.events.models import OutboxEvent
from arbiter.tenancy.models import Membership
from arbiter.testing.tenants import Tenant
from tests.inference.conftest import artifact_blob, artifact_key, published, training_completed
from tests.inference.conftest import deliver as deliver_to_inference
from tests.training.conftest import deliver as deliver_to_training

__all__ = ["artifact_blob", "artifact_key"]

pytestmark = [pytest.mark.django_db(databases="__all__", transaction=True), pytest.mark.slow]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = {schemathesis.GenerationMode.POSITIVE: 20, schemathesis.GenerationMode.NEGATIVE: 10}
# Operations that change or destroy what others need run last, in this order: (method, collection of the item).
LAST = [
    ("PATCH", "datasets"),
    ("DELETE", "rows"),
    ("DELETE", "members"),
    ("DELETE", "api-keys"),
    ("DELETE", "deployments"),
    ("DELETE", "datasets"),
]

TOXIC = ["you are an idiot", "shut up you moron", "i hate you, loser", "you stupid fool", "get lost, jerk"]
SAFE = [
    "have a nice day",
    "thanks for the help",
    "the weather is lovely",
    "see you tomorrow",
    "great article",
]


@dataclass(frozen=True)
class World:
    base_url: str
    key: str
    ids: dict[str, Any]

    def path_parameters(self, path: str) -> dict[str, Any]:
        """Real ids for a path template's parameters (`{id}` is named by the collection before it); those this
        world has none for are left to Schemathesis."""
        values: dict[str, Any] = {}
        for match in re.finditer(r"([\w-]+)/\{(\w+)\}", path):
            collection, name = match.groups()
            known = collection if name == "id" else name
            if known in self.ids:
                values[name] = self.ids[known]
        return values


def rows() -> list[dict[str, str]]:
    return [
        {"text": f"{(TOXIC if i % 2 else SAFE)[i % 5]} ({i})", "toxicity": "toxic" if i % 2 else "safe"}
        for i in range(40)
    ]


def outbox(alias: str, type: str) -> list[Event]:
    return [
        Event.from_dict(row.body) for row in OutboxEvent.objects.using(alias).filter(type=type).order_by("id")
    ]


@pytest.fixture
def world(live_server: Any, tenant: Tenant, artifact_key: str) -> Iterator[World]:
    key = tenant.key(["admin"])
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {key}"

    def call(method: str, path: str, **kwargs: Any) -> Any:
        response = session.request(method, f"{live_server.url}{tenant.url(path)}", timeout=60, **kwargs)
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text[:500]}"
        return response.json()

    dataset = call("POST", "/datasets", json={"name": "contract", "rows": rows()})
    assert dataset["state"] == "ready" and dataset["heads"][0]["name"] == "toxicity"
    snapshot = call("POST", f"/datasets/{dataset['id']}/snapshots", json={"test_percent": 20, "seed": 7})
    for event in outbox("dataset", "snapshot.created"):
        deliver_to_training(event)
    created = call(
        "POST",
        "/models",
        json={
            "name": "contract",
            "snapshots": [snapshot["id"]],
            "options": {"strategy": "head", "max_epochs": 1},
        },
    )
    model = created["model"]["id"]
    training_completed(org_id=tenant.org.pk, artifact=artifact_key, model_id=model, model_name="contract")
    deployment = call(
        "POST", "/deployments", json={"model": str(model), "name": "contract", "log_requests": True}
    )
    (requested,) = published("deployment.requested", deployment_id=deployment["id"])
    deliver_to_inference(requested)
    assert call("GET", f"/deployments/{deployment['id']}")["status"] == "live"
    call("POST", f"/deployments/{deployment['id']}/classify", json={"inputs": ["you are an idiot"]})
    spare, _ = tenant.add_member("viewer")
    yield World(
        base_url=live_server.url,
        key=key,
        ids={
            "org": tenant.slug,
            "dataset": dataset["id"],
            "job": call("GET", f"/datasets/{dataset['id']}/jobs")["results"][0]["id"],
            "row": call("GET", f"/datasets/{dataset['id']}/rows")["results"][0]["number"],
            "snapshot": snapshot["id"],
            "models": model,
            "model": model,
            "model_id": model,
            "version": 1,
            "number": 1,
            "runs": created["version"]["run"]["id"],
            "deployments": deployment["id"],
            "api-keys": call("POST", "/api-keys", json={"name": "spare", "scopes": ["datasets:read"]})["id"],
            "members": Membership.objects.get(user=spare).pk,
        },
    )
    session.close()


def fuzz(
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    world: World,
    session: requests.Session,
) -> Callable[[], None]:
    @given(
        case=operation.as_strategy(
            generation_mode=mode, path_parameters=world.path_parameters(operation.path)
        )
    )
    @settings(
        max_examples=EXAMPLES[mode],
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        case.call_and_validate(
            base_url=world.base_url,
            session=session,
            headers={"Authorization": f"Bearer {world.key}"},
            checks=CHECKS,
        )

    return run


def order(operation: schemathesis.APIOperation) -> int:
    """0 for most operations; those in LAST after them, in LAST's order."""
    item = re.search(r"/([\w-]+)/\{\w+\}$", operation.path)
    key = (operation.method.upper(), item.group(1) if item else "")
    return LAST.index(key) + 1 if key in LAST else 0


def test_no_operation_answers_5xx_or_contradicts_the_schema(world: World) -> None:
    schema = schemathesis.openapi.from_url(f"{world.base_url}/api/schema/")
    operations = sorted((result.ok() for result in schema.get_all_operations()), key=order)
    assert len(operations) > 50
    failures: list[str] = []
    with requests.Session() as session:
        for operation in operations:
            for mode in EXAMPLES:
                try:
                    fuzz(operation, mode, world, session)()
                except (Exception, BaseExceptionGroup) as failure:  # schemathesis groups what one case broke
                    report = getattr(failure, "message", None) or repr(failure)
                    failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {report}")
    assert not failures, f"{len(failures)} operations failed:\n\n" + "\n\n".join(failures)


def fill(template: str, values: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda match: str(values.get(match.group(1), match.group(0))), template)


def test_options_answer_and_ids_out_of_range_are_not_found(world: World) -> None:
    """OPTIONS describes every resource (it answered 500 where a view had no single serializer), and an id no
    database could hold answers 404 in a path and 400 naming the field in a body."""
    schema = requests.get(f"{world.base_url}/api/schema/?format=json", timeout=60).json()
    headers = {"Authorization": f"Bearer {world.key}"}
    with requests.Session() as session:
        session.headers.update(headers)
        for template, item in schema["paths"].items():
            path = fill(template, world.path_parameters(template))
            if "{" in path:
                continue
            answer = session.options(f"{world.base_url}{path}", timeout=60)
            assert answer.status_code == 200, f"OPTIONS {path}: {answer.status_code} {answer.text[:300]}"
            assert answer.json()["name"]
            assert set(answer.headers["Allow"].replace(" ", "").split(",")) >= {m.upper() for m in item}

            ids = [name for name in re.findall(r"\{(\w+)\}", template) if name != "org"]
            required = [
                p
                for p in item.get("get", {}).get("parameters", [])
                if p["in"] == "query" and p.get("required")
            ]
            if "get" in item and ids and not required:
                huge = fill(template, {**world.path_parameters(template), ids[-1]: 2**64})
                answer = session.get(f"{world.base_url}{huge}", timeout=60)
                assert answer.status_code == 404, f"GET {huge}: {answer.status_code} {answer.text[:300]}"
                assert answer.json()["error"]["code"] == "not_found"

        models = f"{world.base_url}/api/v1/orgs/{world.ids['org']}/models"
        for body, field in (
            ({"name": "huge", "snapshots": [2**63]}, "snapshots"),
            (
                {"name": "huge", "snapshots": [world.ids["snapshot"]], "test": {"snapshot": 2**64}},
                "test.snapshot",
            ),
            (
                {
                    "name": "huge",
                    "snapshots": [world.ids["snapshot"]],
                    "base_model": {"model": 2**63, "version": 1},
                },
                "base_model",
            ),
        ):
            answer = session.post(models, json=body, timeout=60)
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["message"].startswith(f"{field}"), answer.text
