"""Disagreements of a policy feed the review queue: rows on which a policy disagrees with their labels (or with a
trained model) travel from the training service to the annotation service as `review.requested`, and people walk
them in the review queue with the policy's answer preselected and its reason shown; what they save goes back to the
dataset's rows. Every event is handed from its producer's outbox to its consumer's handler, as the runners would."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from arbiter.events.models import OutboxEvent
from arbiter.testing.tenants import Tenant, assert_not_found
from tests.annotation import fake_llm
from tests.annotation.conftest import AnnotationApi, comments_csv, deliver, labels_to_dataset
from tests.training.test_policies import toxicity_artifact, trained_version

__all__ = ["toxicity_artifact"]  # a fixture of the policies tests, used here too

pytestmark = pytest.mark.django_db(databases="__all__")

CATEGORIES = [
    {
        "name": "insult",
        "definition": "Name-calling or contempt aimed at a person.",
        "violates": "Calling someone an idiot, moron, loser, fool or jerk.",
        "safe": "Friendly small talk.",
    }
]


@pytest.fixture
def fake(override_arbiter_settings: Any) -> Iterator[fake_llm.FakeLlm]:
    override_arbiter_settings(ARBITER_LLM_ALLOWED_NETWORKS="127.0.0.0/8", ARBITER_LLM_MAX_ATTEMPTS="1")
    yield from fake_llm.serve()


def judge(text: str) -> fake_llm.Answer:
    """A policy model that lets "jerk" pass: it disagrees with the labels on those rows."""
    content = text.rsplit("<<<", 1)[-1]
    hit = next((w for w in ("idiot", "moron", "loser", "fool") if w in content), None)
    if hit:
        return fake_llm.decision("unsafe", "insult", f"Calls the person a {hit}.", confidence=0.9)
    return fake_llm.decision("safe", None, "No insult: friendly or neutral.", confidence=0.8)


def evaluated_policy(
    tenant: Tenant, api: AnnotationApi, fake: fake_llm.FakeLlm
) -> tuple[int, dict[str, Any]]:
    """A labeled dataset (20 rows, toxic and safe by turns), snapshotted, with a policy evaluated on it."""
    fake.script(fake_llm.by_content(judge))
    dataset = api.dataset(comments_csv(20, labeled=20))
    snapshot = api.post(f"/datasets/{dataset['id']}/snapshots", {})
    assert snapshot.status_code == 201, snapshot.content
    assert deliver(producer="dataset", consumer="training", type="snapshot.created") == 1
    models = tenant.client(["models:write", "models:read"])
    policy = models.post(
        tenant.url("/policies"),
        {
            "name": "civility",
            "provider": {"base_url": fake.base_url, "model": "judge-1", "api_key": "sk-x"},
            "categories": CATEGORIES,
        },
        format="json",
    ).json()
    evaluation = models.post(
        tenant.url(f"/policies/{policy['id']}/evaluations"),
        {"snapshot": snapshot.json()["id"]},
        format="json",
    )
    assert evaluation.status_code == 201 and evaluation.json()["state"] == "succeeded", evaluation.content
    return dataset["id"], {"policy": policy["id"], "evaluation": evaluation.json()["id"]}


def test_a_policys_disagreements_with_the_labels_are_reviewed_and_corrections_reach_the_dataset(
    tenant: Tenant, api: AnnotationApi, fake: fake_llm.FakeLlm
) -> None:
    dataset, ids = evaluated_policy(tenant, api, fake)
    models = tenant.client(["models:write", "models:read"])
    review_url = tenant.url(f"/policies/{ids['policy']}/evaluations/{ids['evaluation']}/review")
    sent = models.post(review_url, {}, format="json")
    assert sent.status_code == 202 and sent.json() == {"sent_for_review": 2}, sent.content
    assert deliver(producer="training", consumer="annotation", type="review.requested") == 1
    # Asked twice (or the event redelivered): the queue gets the rows once.
    models.post(review_url, {}, format="json")
    OutboxEvent.objects.using("training").filter(type="review.requested").update(sent_at=None)
    deliver(producer="training", consumer="annotation", type="review.requested")

    (job,) = [
        j
        for j in api.get("/annotation-jobs", dataset=dataset).json()["results"]
        if j["provider"]["kind"] == "review"
    ]
    assert job["agent"] == "policy:civility@v1" and job["progress"]["total"] == 2
    assert job["title"] == "policy 'civility' v1 disagrees with the labels"
    # The "jerk" rows (9 and 19: labeled toxic) come up, labeled, with the policy's answer and reason.
    first = api.get(f"/datasets/{dataset}/review/next", head="toxicity", job=job["id"]).json()
    assert first["row"]["number"] == 9 and "jerk" in first["row"]["text"]
    assert first["row"]["labels"]["toxicity"] == ["toxic"]
    assert first["suggestion"]["labels"] == ["safe"] and first["suggestion"]["agent"] == "policy:civility@v1"
    assert first["suggestion"]["reason"] == "No insult: friendly or neutral."
    # Without the job the queue has nothing: every row is labeled.
    assert api.get(f"/datasets/{dataset}/review/next", head="toxicity").json()["row"] is None

    # The person keeps row 9's label and corrects nothing; on row 19 they agree with the policy.
    kept = api.post(f"/datasets/{dataset}/review/9", {"head": "toxicity", "labels": ["toxic"]})
    assert kept.status_code == 200, kept.content
    changed = api.post(f"/datasets/{dataset}/review/19", {"head": "toxicity", "labels": ["safe"]})
    assert changed.status_code == 200, changed.content
    done = api.get(f"/datasets/{dataset}/review/next", head="toxicity", job=job["id"]).json()
    assert done["row"] is None
    labels_to_dataset()
    rows = {row["number"]: row for row in api.dataset_rows(dataset)}
    assert rows[19]["labels"]["toxicity"] == ["safe"] and rows[9]["labels"]["toxicity"] == ["toxic"]

    # A job of another dataset's head is a 400 naming it; the console's review page walks the same rows.
    bad = api.get(f"/datasets/{dataset}/review/next", head="topic", job=job["id"])
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("job:")


def test_comparing_with_review_sends_the_rows_a_policy_and_a_model_disagree_on(
    tenant: Tenant, api: AnnotationApi, fake: fake_llm.FakeLlm, toxicity_artifact: bytes
) -> None:
    dataset, ids = evaluated_policy(tenant, api, fake)
    trained = trained_version(tenant, toxicity_artifact)
    compared = tenant.client(["models:write", "models:read"]).post(
        tenant.url(f"/policies/{ids['policy']}/compare"),
        {"evaluation": ids["evaluation"], "model": {"model": trained.model_id, "version": 1}, "review": True},
        format="json",
    )
    assert compared.status_code == 200, compared.content
    body = compared.json()
    assert body["sent_for_review"] == len(body["disagreements"]) > 0
    deliver(producer="training", consumer="annotation", type="review.requested")
    (job,) = [
        j
        for j in api.get("/annotation-jobs", dataset=dataset).json()["results"]
        if j["agent"].startswith("policy:")
    ]
    assert job["progress"]["total"] == body["sent_for_review"]
    first = api.get(f"/datasets/{dataset}/review/next", head="toxicity", job=job["id"]).json()
    # The comparison names rows `<snapshot>:<row>`; the queue has the dataset's row.
    assert f":{first['row']['number']}" == ":" + body["disagreements"][0]["row"].split(":")[-1]
    assert first["suggestion"]["labels"] == body["disagreements"][0]["policy"]["labels"]


@pytest.mark.cross_tenant("policy-evaluation-review")
def test_another_orgs_evaluation_cannot_be_sent_for_review(
    tenant: Tenant, victim: Tenant, fake: fake_llm.FakeLlm
) -> None:
    _, ids = evaluated_policy(victim, AnnotationApi(victim), fake)
    mine = tenant.client(["models:write", "models:read"])
    assert_not_found(
        mine.post(
            tenant.url(f"/policies/{ids['policy']}/evaluations/{ids['evaluation']}/review"), {}, format="json"
        )
    )


def test_the_console_sends_disagreements_to_review_and_the_review_page_walks_them(
    tenant: Tenant, api: AnnotationApi, fake: fake_llm.FakeLlm
) -> None:
    dataset, ids = evaluated_policy(tenant, api, fake)
    client = Client()
    client.force_login(tenant.owner)
    page = f"/console/{tenant.slug}/policies/{ids['policy']}/evaluations/{ids['evaluation']}"
    assert "Send the disagreements to the review queue" in client.get(page).content.decode()
    sent = client.post(page, follow=True)
    assert f"2 rows sent to the review queue: they appear under Labeling as a job of dataset {dataset}" in (
        sent.content.decode()
    )
    deliver(producer="training", consumer="annotation", type="review.requested")

    labeling = client.get(f"/console/{tenant.slug}/labeling/{dataset}", {"head": "toxicity"})
    body = labeling.content.decode()
    assert "policy &#x27;civility&#x27; v1 disagrees with the labels" in body and "Review these rows" in body
    (job,) = [j for j in api.get("/annotation-jobs", dataset=dataset).json()["results"]]
    review = client.get(
        f"/console/{tenant.slug}/labeling/{dataset}/review", {"head": "toxicity", "job": job["id"]}
    ).content.decode()
    assert "get lost, jerk" in review and "Why: No insult: friendly or neutral." in review
    assert "The row is labeled <strong>toxic</strong>" in review
    saved = client.post(
        f"/console/{tenant.slug}/labeling/{dataset}/review?job={job['id']}&head=toxicity",
        {"head": "toxicity", "row": "9", "labels": ["safe"], "job": str(job["id"])},
    )
    assert saved.status_code == 302 and f"job={job['id']}" in saved["Location"]
    following = client.get(saved["Location"]).content.decode()
    assert "Row 19" in following
