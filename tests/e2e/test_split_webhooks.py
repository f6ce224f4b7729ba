"""Done means, for webhooks, against `arbiter up --split`: a Zapier-style client subscribes with `POST /hooks`,
a model finishes training, and its receiver gets a `training.completed` delivery that the `standardwebhooks`
library verifies; the delivery API and the console show it with its attempts."""

from __future__ import annotations

import re

import pytest
import requests

from tests.e2e.conftest import RunningArbiter, poll, scripted_org
from tests.gateway.receiver import running_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_rest_hook_receives_a_verified_training_completed_delivery(split_arbiter: RunningArbiter) -> None:
    script = scripted_org(split_arbiter, "hooked", "zap@example.com")
    api, org = script.api, script.url
    assert api.get(f"{split_arbiter.base}/api/v1/me").status_code == 200  # Zapier's auth test

    with running_receiver() as receiver:
        subscribed = api.post(
            f"{org}/hooks", json={"target_url": receiver.url(), "event": "training.completed"}
        )
        assert subscribed.status_code == 201, subscribed.text
        hook = subscribed.json()
        receiver.secret = hook["secret"]

        model_id, _ = script.train_head_model("hooked")

        [got] = receiver.wait(1, timeout_s=120)
    assert got.verified is not None, "the standardwebhooks library did not verify the delivery"
    assert got.verified["type"] == "training.completed"
    assert got.verified["data"]["model_id"] == model_id and got.verified["data"]["version"] == 1

    log = poll(
        "the delivery log",
        lambda: api.get(f"{org}/webhooks/{hook['id']}/deliveries").json(),
        lambda page: page.get("results") and page["results"][0]["status"] == "succeeded",
        30,
    )
    [delivery] = log["results"]
    assert (
        delivery["webhook_id"] == got.headers["webhook-id"] and delivery["event_type"] == "training.completed"
    )
    assert [a["status_code"] for a in delivery["attempts"]] == [200]

    # The console shows the delivery with its attempts.
    browser = requests.Session()
    form = browser.get(f"{split_arbiter.base}/signin")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    signed_in = browser.post(
        f"{split_arbiter.base}/signin",
        data={"email": "zap@example.com", "password": script.password, "csrfmiddlewaretoken": token},
        headers={"Referer": f"{split_arbiter.base}/signin"},
    )
    assert signed_in.status_code == 200, signed_in.text[:500]
    page = browser.get(
        f"{split_arbiter.base}/console/{script.org}/webhooks/{hook['id']}/deliveries/{delivery['id']}"
    )
    assert page.status_code == 200 and delivery["webhook_id"] in page.text
    assert "succeeded" in page.text and ">200<" in page.text
