"""The API journey of a script, against Arbiter deployed as production deploys it (`arbiter up --split`):
bootstrap an org, upload a CSV, snapshot it, create a model at once (before the snapshot has reached the
training service), train `head`, deploy, and classify with the official `openai` SDK, every call through
nginx to the service that owns it."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.e2e.conftest import RunningArbiter, poll, scripted_org

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_script_trains_deploys_and_classifies_through_the_path_router(
    split_arbiter: RunningArbiter,
) -> None:
    script = scripted_org(split_arbiter, "scripted", "bot@example.com")
    api, org = script.api, script.url
    # The model is created the moment the snapshot is: the training service may not have heard of it yet.
    model_id, version = script.train_head_model("toxicity", max_epochs=5)
    assert {h["name"] for h in version["heads"]} == {"toxicity"}

    # Straight away again: the inference service may not have heard of the version yet, and must not say so.
    deployed = api.post(f"{org}/deployments", json={"model": model_id, "version": 1, "name": "tox"})
    assert deployed.status_code == 202, deployed.text
    deployment = deployed.json()
    live = poll(
        "the deployment going live",
        lambda: api.get(f"{org}/deployments/{deployment['id']}").json(),
        lambda d: d["status"] in ("live", "failed"),
        120,
    )
    assert live["status"] == "live", live

    client = OpenAI(base_url=f"{split_arbiter.base}/v1", api_key=script.api_key, max_retries=0)
    moderation = client.moderations.create(model="tox", input=["you are an idiot (0)", "have a nice day (1)"])
    assert [r.flagged for r in moderation.results] == [True, False]
    assert moderation.results[0].category_scores.to_dict()["toxicity"] > 0.5

    usage = api.get(f"{org}/usage").json()
    assert usage["totals"]["classification"] == {"requests": 1, "units": 2}
