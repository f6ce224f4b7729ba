"""The visual-moderation journey through the services' APIs: an image CSV (images on a loopback server inside
an allowed network) is fetched, snapshotted with its image input, trained on `vision-moderation` by the
training service's trainer, deployed, and asked through the official `openai` SDK with an image URL. The
services' events travel from each outbox to the consumers' handlers as the consumer runners would (`Pump`)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from arbiter.testing.images import ImageServer, make_image, running_image_server
from arbiter.testing.tenants import Tenant

from .test_fine_tuning_compat import Pump

pytestmark = [pytest.mark.django_db(databases="__all__", transaction=True), pytest.mark.slow]


def picture(i: int, *, yes: bool) -> bytes:
    colour = (200 + i % 40, 30 + i % 32, 20) if yes else (20, 30 + i % 32, 200 + i % 40)
    return make_image("JPEG", size=(96, 64), color=colour, noise=True)


@pytest.fixture
def server(override_arbiter_settings: Any) -> Iterator[ImageServer]:
    override_arbiter_settings(ARBITER_FETCH_ALLOWED_NETWORKS="127.0.0.1/32", ARBITER_FETCH_TIMEOUT_SECONDS=5)
    with running_image_server() as running:
        yield running


@pytest.fixture
def pump() -> Pump:
    return Pump()


def wait(check: Any, what: str, timeout_s: float = 120) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_an_image_csv_becomes_a_vision_moderation_model_the_openai_sdk_asks(
    live_server: Any, tenant: Tenant, server: ImageServer, pump: Pump
) -> None:
    client = tenant.client(["admin"])
    lines = ["image,tobacco"]
    for i in range(30):
        yes = i % 2 == 0
        url = server.serve(f"/img/{i}.jpg", picture(i, yes=yes))
        lines.append(f"{url},{'yes_tobacco' if yes else 'no_tobacco'}")
    lines.append(f"{server.url('/img/gone.jpg')},yes_tobacco")
    upload = io.BytesIO(("\n".join(lines) + "\n").encode())
    upload.name = "tobacco.csv"
    dataset = client.post(tenant.url("/datasets"), {"file": upload}, format="multipart").json()
    d = f"/datasets/{dataset['id']}"
    images = wait(
        lambda: (
            (client.get(tenant.url(d)).json().get("images") or {}).get("job", {}).get("state") == "completed"
            and client.get(tenant.url(d)).json()["images"]
        ),
        "the image fetch job",
    )
    assert (images["fetched"], images["failed"]) == (30, 1)
    snapshot = client.post(tenant.url(f"{d}/snapshots"), {"type": "image_classification"}, format="json")
    assert snapshot.status_code == 201, snapshot.content
    assert snapshot.json()["rows"] == 30
    pump()

    model = client.post(
        tenant.url("/models"),
        {
            "name": "tobacco-vision",
            "type": "image_classification",
            "base_model": "vision-moderation",
            "snapshots": [snapshot.json()["id"]],
            "options": {"strategy": "head", "max_epochs": 40},
        },
        format="json",
    )
    assert model.status_code == 201, model.content
    model_id = model.json()["model"]["id"]
    pump()  # snapshot and training events; the trainer runs here
    version = client.get(tenant.url(f"/models/{model_id}/versions/1")).json()
    assert version["status"] == "succeeded", version
    # The user's head is trained; the base's nsfw head is recorded as built in (it answers beside it).
    assert {head["name"]: head["origin"] for head in version["heads"]} == {
        "tobacco": "new",
        "nsfw": "builtin",
    }

    deployment = client.post(
        tenant.url("/deployments"), {"model": model_id, "name": "tobacco-eye"}, format="json"
    )
    assert deployment.status_code == 202, deployment.content
    pump()
    assert client.get(tenant.url(f"/deployments/{deployment.json()['id']}")).json()["status"] == "live"

    red = server.serve("/ask/red.jpg", picture(77, yes=True))
    with OpenAI(base_url=f"{live_server.url}/v1", api_key=tenant.key(["inference"]), max_retries=0) as sdk:
        answer = sdk.moderations.create(
            model="tobacco-eye", input=[{"type": "image_url", "image_url": {"url": red}}]
        )
    (result,) = answer.results
    assert result.flagged is True and result.categories.to_dict()["tobacco"] is True
    # The base's built-in nsfw head answers beside the user's head.
    assert result.category_applied_input_types.to_dict() == {"tobacco": ["image"], "nsfw": ["image"]}
    assert result.categories.to_dict()["nsfw"] is False
