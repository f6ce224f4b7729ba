"""The official OpenAI and Mistral Python clients, pointed at a live Arbiter, get well-formed answers."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from openai import OpenAI

from arbiter.testing.tenants import Tenant
from tests.inference.conftest import InferenceApi, published

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

INSULT, FRIENDLY, SPAM = "you are an idiot", "have a nice day", "buy cheap pills now"


@pytest.fixture
def openai_client(live_server: Any) -> Iterator[Callable[[str], OpenAI]]:
    """OpenAI clients of the live server, closed afterwards: a keep-alive connection holds a server thread."""
    clients: list[OpenAI] = []

    def make(key: str) -> OpenAI:
        clients.append(OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def mistral_client(live_server: Any, api: InferenceApi) -> Iterator[Mistral]:
    with Mistral(api_key=api.tenant.key(["inference"]), server_url=live_server.url) as client:
        yield client


@pytest.fixture
def moderator(api: InferenceApi, artifact_key: str) -> dict[str, Any]:
    trained = api.train(artifact_key, model_name="toxicity")
    return api.deploy({"model": trained["model_id"], "name": "moderator"})


def test_the_openai_client_moderates_with_a_deployed_model(
    openai_client: Callable[[str], OpenAI], api: InferenceApi, moderator: dict[str, Any], victim: Tenant
) -> None:
    client = openai_client(api.tenant.key(["inference"]))
    response = client.moderations.create(model="moderator", input=[INSULT, FRIENDLY, SPAM])
    assert response.model == "moderator" and response.id.startswith("modr-")
    insult, friendly, spam = response.results
    # A binary head is one category named after it; a multi-label head is one category per label.
    assert insult.flagged is True
    assert insult.categories.to_dict() == {"toxicity": True, "topic/insult": True, "topic/spam": False}
    assert set(insult.category_scores.to_dict()) == {"toxicity", "topic/insult", "topic/spam"}
    assert insult.category_scores.to_dict()["toxicity"] > 0.5
    assert insult.category_applied_input_types.to_dict()["toxicity"] == ["text"]
    assert friendly.flagged is False and not any(friendly.categories.to_dict().values())
    assert spam.categories.to_dict() == {"toxicity": False, "topic/insult": False, "topic/spam": True}

    # One string; the model named by its model name (its newest live deployment) or not at all.
    single = client.moderations.create(model="toxicity", input=INSULT)
    assert single.model == "moderator" and len(single.results) == 1 and single.results[0].flagged
    assert client.moderations.create(input=FRIENDLY).results[0].flagged is False
    multimodal = client.moderations.create(model="moderator", input=[{"type": "text", "text": INSULT}])
    assert multimodal.results[0].flagged is True

    with pytest.raises(openai.NotFoundError):
        client.moderations.create(model="omni-moderation-latest", input=INSULT)
    with pytest.raises(openai.BadRequestError, match="classifies text"):
        client.moderations.create(model="moderator", input=[{"type": "image_url", "image_url": {"url": "x"}}])
    with pytest.raises(openai.AuthenticationError):
        openai_client("arb_wrong").moderations.create(input="x")
    reader = openai_client(api.tenant.key(["models:read"]))
    with pytest.raises(openai.PermissionDeniedError):
        reader.moderations.create(model="moderator", input="x")
    # Another org's key does not see this org's deployment under its name.
    thief = openai_client(victim.key(["inference"]))
    with pytest.raises(openai.NotFoundError):
        thief.moderations.create(model="moderator", input="x")

    usage = published("usage.recorded", endpoint="moderations")
    assert sum(event.data["units"] for event in usage) == 6 and {e.org_id for e in usage} == {
        api.tenant.org.pk
    }


def test_the_mistral_client_moderates_and_classifies_with_a_deployed_model(
    live_server: Any, mistral_client: Mistral, api: InferenceApi, moderator: dict[str, Any]
) -> None:
    client = mistral_client
    moderation = client.classifiers.moderate(model="moderator", inputs=[INSULT, FRIENDLY])
    assert moderation.model == "moderator" and len(moderation.results) == 2
    assert moderation.results[0].categories == {"toxicity": True, "topic/insult": True, "topic/spam": False}
    assert moderation.results[1].category_scores is not None
    assert moderation.results[1].category_scores["toxicity"] < 0.5

    classification = client.classifiers.classify(model="moderator", inputs=[INSULT, SPAM])
    insult, spam = classification.results
    assert set(insult) == {"toxicity", "topic"}
    assert insult["toxicity"].scores["toxic"] > insult["toxicity"].scores["safe"]
    assert spam["topic"].scores["spam"] > 0.5
    assert (
        client.classifiers.classify(model="moderator", inputs=FRIENDLY).results[0]["toxicity"].scores["safe"]
        > 0.5
    )

    with pytest.raises(SDKError) as raised:
        client.classifiers.classify(model="moderator", inputs=[])
    assert raised.value.status_code == 400

    # The body API.md documents for raw HTTP callers (`inputs`) answers exactly in Mistral's shape.
    request = urllib.request.Request(
        f"{live_server.url}/v1/moderations",
        data=json.dumps({"model": "moderator", "inputs": [INSULT]}).encode(),
        headers={
            "Authorization": f"Bearer {api.tenant.key(['inference'])}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert set(body["results"][0]) == {"categories", "category_scores"}


def test_a_bounded_load_is_served_without_errors(
    live_server: Any, api: InferenceApi, moderator: dict[str, Any]
) -> None:
    """Concurrent clients (micro-batched together) all get the answer a lone request gets."""
    key = api.tenant.key(["inference"])
    url = live_server.url + api.url(f"/deployments/{moderator['id']}/classify")
    texts = [INSULT, FRIENDLY, SPAM]

    def classify(inputs: list[str]) -> dict[str, Any]:
        request = urllib.request.Request(
            url,
            data=json.dumps({"inputs": inputs}).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return dict(json.loads(response.read()))

    expected = [result["toxicity"]["label"] for result in classify(texts)["results"]]
    failures: list[str] = []
    answers: list[list[str]] = []

    def client(n: int) -> None:
        for i in range(10):
            inputs = texts[(n + i) % 3 :] + texts[: (n + i) % 3]
            try:
                labels = [result["toxicity"]["label"] for result in classify(inputs)["results"]]
            except (urllib.error.URLError, OSError) as error:
                failures.append(repr(error))
                continue
            answers.append(labels[3 - (n + i) % 3 :] + labels[: 3 - (n + i) % 3])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(answers) == 80 and all(answer == expected for answer in answers)
    assert sum(e.data["units"] for e in published("usage.recorded", deployment_id=moderator["id"])) == 3 * 81
