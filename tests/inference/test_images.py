"""Image models at inference: the native classify API takes `{"image_url": ...}` and `{"image_base64": ...}`,
`/v1/moderations` takes OpenAI's multi-modal input (the official SDK), the playground takes an image; a bad
image is a 400 naming the input and why. Images come from a loopback server inside an allowed network."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import OpenAI

from arbiter.images import decode_image, image_blob_key
from arbiter.ml.image_encoders import remember_image
from arbiter.storage import get_blob_store
from arbiter.testing.artifacts import cached_head_artifact
from arbiter.testing.images import ImageServer, make_image, running_image_server

from .conftest import InferenceApi

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

IMAGE_ARTIFACT_KEY = "artifacts/tests/tobacco-vision.tar.gz"
RED, BLUE = (220, 30, 20), (20, 30, 220)


def tobacco_picture(i: int, *, yes: bool, size: tuple[int, int] = (96, 64)) -> bytes:
    colour = (200 + i % 40, 30 + i % 32, 20) if yes else (20, 30 + i % 32, 200 + i % 40)
    return make_image("JPEG", size=size, color=colour, noise=True)


def image_rows() -> list[dict[str, Any]]:
    rows = []
    for i in range(32):
        image = decode_image(tobacco_picture(i, yes=i % 2 == 0))
        rows.append(
            {
                "row": i + 1,
                "input": remember_image(image.sha256, image.data),
                "labels": {"tobacco": ["yes_tobacco" if i % 2 == 0 else "no_tobacco"]},
                "split": "train",
            }
        )
    return rows


@pytest.fixture(scope="session")
def image_artifact_blob(pytestconfig: pytest.Config) -> bytes:
    return cached_head_artifact(
        cache_dir=pytestconfig.cache.mkdir("inference-artifacts"),
        prefix="vision-",
        rows=image_rows(),
        heads=[{"name": "tobacco", "labels": ["no_tobacco", "yes_tobacco"]}],
        max_epochs=60,
        base_model="vision-moderation",
    )


@pytest.fixture
def server(override_arbiter_settings: Any) -> Iterator[ImageServer]:
    override_arbiter_settings(ARBITER_FETCH_ALLOWED_NETWORKS="127.0.0.1/32", ARBITER_FETCH_TIMEOUT_SECONDS=5)
    with running_image_server() as running:
        yield running


@pytest.fixture
def vision(api: InferenceApi, image_artifact_blob: bytes) -> dict[str, Any]:
    get_blob_store().put_bytes(IMAGE_ARTIFACT_KEY, image_artifact_blob)
    trained = api.train(IMAGE_ARTIFACT_KEY, model_name="tobacco")
    deployment = api.deploy({"model": trained["model_id"], "name": "tobacco-eye"})
    assert deployment["status"] == "live", deployment
    # The backbone serves as the int8 graph training chose on its validation rows, and the deployment says so.
    assert deployment["runtime"] == "onnx-int8", deployment
    return deployment


def test_native_classify_takes_image_urls_and_base64_and_names_a_bad_input(
    api: InferenceApi, vision: dict[str, Any], server: ImageServer
) -> None:
    red = server.serve("/red.jpg", tobacco_picture(101, yes=True))
    blue = base64.b64encode(tobacco_picture(102, yes=False)).decode()
    response = api.classify(vision["id"], [{"image_url": red}, {"image_base64": blue}])
    assert response.status_code == 200, response.content
    red_result, blue_result = response.json()["results"]
    assert red_result["tobacco"]["label"] == "yes_tobacco" and red_result["tobacco"]["flagged"]
    assert blue_result["tobacco"]["label"] == "no_tobacco" and not blue_result["tobacco"]["flagged"]
    # The base's built-in head answers beside the user's.
    assert red_result["nsfw"]["label"] == "sfw" and not red_result["nsfw"]["flagged"]
    # The request log is off: the fetched image was not kept.
    sha = decode_image(tobacco_picture(101, yes=True)).sha256
    assert not get_blob_store().exists(image_blob_key(sha))

    page = server.serve("/page.jpg", b"<html>sign in</html>", content_type="text/html")
    cases = [
        ([{"image_url": red}, {"image_url": server.url("/missing.jpg")}], "inputs[1]", "HTTP 404"),
        ([{"image_url": page}], "inputs[0]", "HTML page"),
        ([{"image_url": "http://10.0.0.8/x.jpg"}], "inputs[0]", "private"),
        ([{"image_base64": "@@@"}], "inputs[0]", "base64"),
        ([{"image_url": red}, "a caption"], "inputs[1]", "classifies images"),
    ]
    for inputs, where, says in cases:
        bad = api.classify(vision["id"], inputs)
        assert bad.status_code == 400, (inputs, bad.content)
        assert (
            bad.json()["error"]["message"].startswith(f"{where}: ") and says in bad.json()["error"]["message"]
        )


def test_the_openai_sdk_moderates_an_image_url(
    live_server: Any, api: InferenceApi, vision: dict[str, Any], server: ImageServer
) -> None:
    red = server.serve("/sdk-red.jpg", tobacco_picture(103, yes=True))
    blue = server.serve("/sdk-blue.jpg", tobacco_picture(104, yes=False))
    with OpenAI(
        base_url=f"{live_server.url}/v1", api_key=api.tenant.key(["inference"]), max_retries=0
    ) as client:
        flagged = client.moderations.create(
            model="tobacco-eye",
            input=[
                {"type": "text", "text": "what is in this picture?"},
                {"type": "image_url", "image_url": {"url": red}},
            ],
        )
        (result,) = flagged.results
        assert result.flagged is True and result.categories.to_dict()["tobacco"] is True
        assert result.category_applied_input_types.to_dict() == {"tobacco": ["image"], "nsfw": ["image"]}
        clean = client.moderations.create(
            model="tobacco-eye", input=[{"type": "image_url", "image_url": {"url": blue}}]
        )
        assert clean.results[0].flagged is False
        with pytest.raises(openai.BadRequestError, match="HTTP 404"):
            client.moderations.create(
                model="tobacco-eye",
                input=[{"type": "image_url", "image_url": {"url": server.url("/nothing.jpg")}}],
            )
        with pytest.raises(openai.BadRequestError, match="classifies images"):
            client.moderations.create(model="tobacco-eye", input="just words")


def test_the_playground_takes_an_image(api: InferenceApi, vision: dict[str, Any]) -> None:
    picture = base64.b64encode(tobacco_picture(105, yes=True)).decode()
    model_id = vision["model"]
    response = api.client.post(
        api.url(f"/models/{model_id}/versions/{vision['version']}/playground"),
        {"input": [{"image_base64": f"data:image/jpeg;base64,{picture}"}]},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json()["results"][0]["tobacco"]["label"] == "yes_tobacco"
