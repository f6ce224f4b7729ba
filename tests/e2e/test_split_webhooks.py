"""Done means, for webhooks, against `arbiter up --split`: a Zapier-style client subscribes with `POST /hooks`,
a model finishes training, and its receiver gets a `training.completed` delivery that the `standardwebhooks`
library verifies; the delivery API and the console show it with its attempts."""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.e2e.conftest import RunningArbiter
from tests.e2e.test_split_api import comments_csv, poll
from tests.gateway.receiver import running_receiver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_rest_hook_receives_a_verified_training_completed_delivery(split_arbiter: RunningArbiter) -> None:
    bootstrap = json.loads(
        split_arbiter.cli("bootstrap", "--org", "hooked", "--email", "zap@example.com", services="gateway")
    )
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {bootstrap['api_key']}"
    org = f"{split_arbiter.base}/api/v1/orgs/{bootstrap['org']}"
    assert api.get(f"{split_arbiter.base}/api/v1/me").status_code == 200  # Zapier's auth test

    with running_receiver() as receiver:
        subscribed = api.post(
            f"{org}/hooks", json={"target_url": receiver.url(), "event": "training.completed"}
        )
        assert subscribed.status_code == 201, subscribed.text
        hook = subscribed.json()
        receiver.secret = hook["secret"]

        uploaded = api.post(f"{org}/datasets", files={"file": ("comments.csv", comments_csv(), "text/csv")})
        assert uploaded.status_code == 201, uploaded.text
        snapshot = api.post(f"{org}/datasets/{uploaded.json()['id']}/snapshots", json={"test_percent": 20})
        assert snapshot.status_code == 201, snapshot.text
        created = api.post(
            f"{org}/models",
            json={"name": "hooked", "snapshots": [snapshot.json()["id"]], "options": {"strategy": "head"}},
        )
        assert created.status_code == 201, created.text
        model_id = created.json()["model"]["id"]
        version = poll(
            "training",
            lambda: api.get(f"{org}/models/{model_id}/versions/1").json(),
            lambda v: v["run"]["state"] in ("succeeded", "failed", "cancelled"),
            300,
        )
        assert version["run"]["state"] == "succeeded", version["run"]["conditions"]

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
        data={"email": "zap@example.com", "password": bootstrap["password"], "csrfmiddlewaretoken": token},
        headers={"Referer": f"{split_arbiter.base}/signin"},
    )
    assert signed_in.status_code == 200, signed_in.text[:500]
    page = browser.get(
        f"{split_arbiter.base}/console/{bootstrap['org']}/webhooks/{hook['id']}/deliveries/{delivery['id']}"
    )
    assert page.status_code == 200 and delivery["webhook_id"] in page.text
    assert "succeeded" in page.text and ">200<" in page.text
