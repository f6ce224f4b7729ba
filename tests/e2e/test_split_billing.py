"""Plans enforced at the edge, across processes (`arbiter up --split`): an admin puts an org on a plan with two
free playground queries per model (configured with ARBITER_BILLING_PLANS); billing announces it, the inference
service's read model takes it from Kafka, and the third playground query answers 402 through nginx, saying why."""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import RunningArbiter, poll, scripted_org

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_plan_change_reaches_the_playground_and_its_limit_answers_402(
    split_arbiter: RunningArbiter,
) -> None:
    script = scripted_org(split_arbiter, "metered", "ops@example.com")
    api, org = script.api, script.url

    planned = api.put(f"{org}/billing/plan", json={"plan": "tiny"})
    assert planned.status_code == 200, planned.text
    assert planned.json()["plan"] == "tiny"
    playground = {m["meter"]: m for m in planned.json()["meters"]}["playground"]
    assert playground["included"] == 2 and playground["overage"] is False

    model_id, _ = script.train_head_model("metered")

    url = f"{org}/models/{model_id}/versions/1/playground"
    deadline = time.monotonic() + 60
    first = api.post(url, json={"input": "you are an idiot (0)"})
    while first.status_code == 404 and time.monotonic() < deadline:  # the version is on its way to inference
        time.sleep(1)
        first = api.post(url, json={"input": "you are an idiot (0)"})
    assert first.status_code == 200, first.text
    assert first.json()["quota"] == {"used": 1, "free": 2, "remaining": 1}
    assert api.post(url, json={"input": "have a nice day (1)"}).status_code == 200

    refused = api.post(url, json={"input": "one more"})
    assert refused.status_code == 402, refused.text
    error = refused.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert error["details"]["meter"] == "playground"
    assert (
        error["details"]["limit"] == 2
        and error["details"]["used"] == 2
        and error["details"]["plan"] == "tiny"
    )
    assert "This model's 2 free playground queries on the tiny plan are used up" in error["message"]

    # Billing counted them (from inference's usage events), as the system of record.
    poll(
        "billing's ledger",
        lambda: api.get(f"{org}/billing").json(),
        lambda body: {m["meter"]: m["used"] for m in body["meters"]}["playground"] == 2,
        60,
    )
