"""Label schemas, auto-labeling jobs, accepting suggestions and the review queue, with rows arriving from the
dataset service by events and accepted labels going back to it the same way."""

from __future__ import annotations

import json
from typing import Any

import pytest

from arbiter.events.models import OutboxEvent
from arbiter.events.testing import wait_for
from arbiter.testing.tenants import Tenant, assert_not_found
from tests.annotation import fake_llm
from tests.annotation.conftest import (
    AnnotationApi,
    comments_csv,
    labels_to_dataset,
)
from tests.annotation.fake_llm import FakeLlm

pytestmark = pytest.mark.django_db(databases="__all__")


def test_similarity_labels_an_unlabeled_dataset_and_accepted_labels_reach_its_rows(
    api: AnnotationApi,
) -> None:
    dataset = api.dataset(comments_csv(20, labeled=0).replace(b"comment,toxicity", b"comment,note"))
    schema = api.schema(dataset["id"])
    assert schema["version"] == 1 and schema["labels"][0]["description"].startswith("insults")

    tried = api.job(dataset["id"], provider="similarity", rows={"sample": 10, "seed": 3})
    assert tried["state"] == "completed", tried
    assert tried["progress"] == {"total": 10, "done": 10, "failed": 0, "labeled": 10, "percent": 100}
    suggestions = api.get(f"/annotation-jobs/{tried['id']}/suggestions").json()["results"]
    assert len(suggestions) == 10
    by_row = {s["row"]: s for s in suggestions}
    texts = {r["number"]: r["cells"]["comment"] for r in api.dataset_rows(dataset["id"])}
    right = sum(
        (s["labels"] == ["toxic"])
        == (
            texts[n].split(" (")[0]
            in (
                "you are an idiot",
                "shut up you moron",
                "i hate you, loser",
                "you stupid fool",
                "get lost, jerk",
            )
        )
        for n, s in by_row.items()
    )
    assert right >= 8, by_row
    assert all(
        abs(sum(s["scores"].values()) - 1) < 0.01 and s["agent"] == "similarity:all-MiniLM-L6-v2@v1"
        for s in suggestions
    )

    # Nothing reaches the dataset until someone accepts.
    assert not OutboxEvent.objects.using("annotation").filter(type="labels.accepted").exists()
    accepted = api.post(f"/annotation-jobs/{tried['id']}/accept", {"min_score": 0}).json()
    assert accepted == {"accepted": 10, "kept_labels": 0}
    assert labels_to_dataset() == 1
    rows = {r["number"]: r for r in api.dataset_rows(dataset["id"])}
    labeled = {n: r["labels"]["toxicity"] for n, r in rows.items() if r["labels"].get("toxicity")}
    assert labeled == {n: s["labels"] for n, s in by_row.items()}
    history = api.get(f"/datasets/{dataset['id']}/history").json()["results"]
    assert {h["actor"] for h in history if h["action"] == "relabel"} == {"llm:similarity:all-MiniLM-L6-v2@v1"}

    # The rest: a second job takes only the unlabeled rows, and accepting again never overwrites a label.
    rest = api.job(dataset["id"], provider="similarity", rows="all")
    again = api.post(f"/annotation-jobs/{rest['id']}/accept", {"min_score": 0}).json()
    assert again == {"accepted": 10, "kept_labels": 10}


def test_agreement_with_human_labels_and_new_schema_versions(api: AnnotationApi) -> None:
    dataset = api.dataset(comments_csv(20, labeled=20))
    api.schema(dataset["id"])
    job = api.job(dataset["id"], rows="labeled")
    agreement = job["agreement"]
    assert agreement["rows"] == 20 and agreement["accuracy"] >= 0.8
    assert set(agreement["per_label"]) == {"toxic", "safe"}
    assert sum(map(sum, agreement["confusion"]["matrix"])) == 20

    # Editing the descriptions makes version 2; a useless description changes what the labeler says.
    worse = [{"name": "toxic", "description": "the weather"}, {"name": "safe", "description": "insults"}]
    v2 = api.schema(dataset["id"], labels=worse)
    assert v2["version"] == 2
    assert api.schema(dataset["id"], labels=worse)["version"] == 2  # unchanged: no new version
    job2 = api.job(dataset["id"], rows="labeled")
    assert job2["schema"]["version"] == 2 and job2["agent"].endswith("@v2")
    flips = api.get(f"/annotation-jobs/{job2['id']}/compare", **{"with": job["id"]}).json()
    assert flips and all(f["labels"] != f["other_labels"] for f in flips)
    head = api.get(f"/datasets/{dataset['id']}/agreement", head="toxicity").json()
    assert head["job"] == job2["id"] and head["agreement"]["rows"] == 20


def test_the_review_queue_suggests_saves_and_moves_on(api: AnnotationApi, tenant: Tenant) -> None:
    dataset = api.dataset(comments_csv(6, labeled=2))
    api.schema(dataset["id"])
    first = api.get(f"/datasets/{dataset['id']}/review/next", head="toxicity").json()
    assert first["row"]["number"] == 3 and first["progress"] == {"labeled": 2, "total": 6}
    assert first["suggestion"]["label"] == "toxic" and set(first["suggestion"]["scores"]) == {"toxic", "safe"}
    person = tenant.session_client()
    saved = person.post(
        tenant.url(f"/datasets/{dataset['id']}/review/3"),
        {"head": "toxicity", "labels": ["toxic"]},
        format="json",
    )
    assert saved.status_code == 200, saved.content
    assert api.get(f"/datasets/{dataset['id']}/review/next", head="toxicity").json()["row"]["number"] == 4
    labels_to_dataset()
    row = next(r for r in api.dataset_rows(dataset["id"]) if r["number"] == 3)
    assert row["labels"]["toxicity"] == ["toxic"]
    bad = api.post(f"/datasets/{dataset['id']}/review/4", {"head": "toxicity", "labels": ["spam"]})
    assert bad.status_code == 400 and "spam" in bad.json()["error"]["message"]
    assert api.get(f"/datasets/{dataset['id']}/review/next").status_code == 400


def test_bad_requests_name_the_field(api: AnnotationApi) -> None:
    dataset = api.dataset(comments_csv(4))
    no_schema = api.post("/annotation-jobs", {"dataset": dataset["id"], "head": "toxicity"})
    assert no_schema.status_code == 400 and no_schema.json()["error"]["code"] == "no_label_schema"
    api.schema(dataset["id"])
    for body, field in (
        ({"rows": {"sample": 0}}, "rows.sample"),
        ({"rows": "some"}, "rows"),
        ({"provider": "gpt"}, "provider"),
        ({"provider": {"id": 999}}, "provider.id"),
    ):
        response = api.post("/annotation-jobs", {"dataset": dataset["id"], "head": "toxicity", **body})
        assert response.status_code == 400 and response.json()["error"]["message"].startswith(field), (
            response.content
        )
    repeated = api.post(
        "/label-schemas", {"dataset": 1, "head": "h", "labels": [{"name": "a"}, {"name": "a"}]}
    )
    assert repeated.status_code == 400
    # What the API fuzzer found: ids beyond a bigint, and a provider without a key (an endpoint needing none).
    huge = api.post("/label-schemas", {"dataset": 2**80, "head": "h", "labels": [{"name": "a"}]})
    assert huge.status_code == 400 and "dataset" in huge.json()["error"]["message"]
    admin = AnnotationApi(api.tenant, ["admin"])
    keyless = admin.post("/llm-providers", {"name": "local", "base_url": "https://8.8.8.8/v1", "model": "m"})
    assert keyless.status_code == 201, keyless.content
    assert keyless.json()["has_api_key"] is False


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_an_llm_job_labels_rows_and_fails_bad_answers_with_the_reason(
    api: AnnotationApi, tenant: Tenant, fake_llm_server: FakeLlm, caplog: Any, override_arbiter_settings: Any
) -> None:
    key = "sk-live-abcdefghijklmnop1234"
    admin = AnnotationApi(tenant, ["admin"])
    created = admin.post(
        "/llm-providers",
        {"name": "gpt", "base_url": fake_llm_server.base_url, "model": "fake-4", "api_key": key},
    )
    assert created.status_code == 201, created.content
    provider = created.json()
    assert key not in json.dumps(provider) and provider["api_key_hint"] == "1234" and provider["has_api_key"]

    dataset = api.dataset(comments_csv(8, labeled=2))
    api.schema(dataset["id"])

    def answer(body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        return "toxic" if any(w in text for w in ("idiot", "moron", "hate", "stupid", "jerk")) else "safe"

    # Row 4's text gets prose twice (so it fails after one repair); row 6 a label outside the schema.
    def script(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        text = body["messages"][-1]["content"]
        if "(3)" in text or text.startswith("That answer") and "(3)" in body["messages"][-3]["content"]:
            return fake_llm.prose()(body)
        if "(5)" in text or text.startswith("That answer") and "(5)" in body["messages"][-3]["content"]:
            return fake_llm.content('{"label": "spam", "confidence": 0.4}')(body)
        return fake_llm.good(answer)(body)

    fake_llm_server.script(script)
    job = api.job(dataset["id"], provider={"id": provider["id"]}, rows="unlabeled", few_shot=2)
    done = wait_for(
        lambda: (
            (j := api.get(f"/annotation-jobs/{job['id']}").json())["state"] != "queued"
            and j["state"] != "running"
            and j
        ),
        timeout_s=60,
    )
    assert done["state"] == "completed", done
    assert done["progress"]["total"] == 6 and done["progress"]["failed"] == 2
    assert done["tokens"]["prompt"] > 0 and "insults" in done["prompt"]
    failed = {
        s["row"]: s
        for s in api.get(f"/annotation-jobs/{job['id']}/suggestions", state="failed").json()["results"]
    }
    assert set(failed) == {4, 6}
    assert failed[4]["reason"] == "malformed_answer" and "honestly" in failed[4]["raw"]
    assert '"spam" is not one of' in failed[6]["message"]
    # Few-shot examples come from the rows people labeled; the key is sent only as the Authorization header.
    first = fake_llm_server.prompts[0]
    assert first[1]["content"].startswith("you are an idiot (0)") and len(first) == 6
    assert key not in caplog.text
    assert all(key not in json.dumps(row.body) for row in OutboxEvent.objects.using("annotation").all())
    completed = [
        r.body["data"] for r in OutboxEvent.objects.using("annotation").filter(type="annotation.completed")
    ]
    assert completed[-1]["job_id"] == job["id"] and completed[-1]["failed"] == 2

    # An endpoint that answers 500 to everything: the job stops early and says why.
    fake_llm_server.script(fake_llm.status(500))
    override_arbiter_settings(ARBITER_ANNOTATION_FAIL_FAST_ROWS="3")
    broken = api.job(dataset["id"], provider={"id": provider["id"]}, rows="all")
    stopped = wait_for(
        lambda: (
            (j := api.get(f"/annotation-jobs/{broken['id']}").json())["state"] not in ("queued", "running")
            and j
        ),
        timeout_s=60,
    )
    assert stopped["state"] == "failed" and stopped["error"]["code"] == "all_rows_failed"
    assert "HTTP 500" in stopped["error"]["message"]
    assert stopped["progress"]["done"] < stopped["progress"]["total"] == 8


@pytest.mark.cross_tenant(
    "llm-provider-list",
    "llm-provider-detail",
    "label-schema-list",
    "label-schema-detail",
    "annotation-job-list",
    "annotation-job-detail",
    "annotation-job-cancel",
    "annotation-job-suggestions",
    "annotation-job-accept",
    "annotation-job-compare",
    "dataset-review-next",
    "dataset-review-save",
    "dataset-agreement",
)
def test_a_victims_annotation_is_404_everywhere(tenant: Tenant, victim: Tenant) -> None:
    owner = AnnotationApi(victim, ["admin"])
    dataset = owner.dataset(comments_csv(4, labeled=2))
    schema = owner.schema(dataset["id"])
    job = owner.job(dataset["id"], rows="all")
    provider = owner.post(
        "/llm-providers",
        {"name": "p", "base_url": "https://llm.example.com/v1", "model": "m", "api_key": "sk-x"},
    ).json()
    attacker = AnnotationApi(tenant, ["admin"])
    d, j = f"/datasets/{dataset['id']}", f"/annotation-jobs/{job['id']}"
    for org in (victim, tenant):
        c = attacker.client
        assert_not_found(c.get(org.url(f"/llm-providers/{provider['id']}")))
        assert_not_found(c.patch(org.url(f"/llm-providers/{provider['id']}"), {"model": "x"}, format="json"))
        assert_not_found(c.get(org.url(f"/label-schemas/{schema['id']}")))
        assert_not_found(c.get(org.url(j)))
        assert_not_found(c.post(org.url(f"{j}/cancel")))
        assert_not_found(c.get(org.url(f"{j}/suggestions")))
        assert_not_found(c.post(org.url(f"{j}/accept"), {"min_score": 0}, format="json"))
        assert_not_found(c.get(org.url(f"{j}/compare"), {"with": job["id"]}))
        assert_not_found(c.get(org.url(f"{d}/review/next"), {"head": "toxicity"}))
        assert_not_found(
            c.post(org.url(f"{d}/review/3"), {"head": "toxicity", "labels": ["toxic"]}, format="json")
        )
        assert_not_found(c.get(org.url(f"{d}/agreement"), {"head": "toxicity"}))
    for path in ("/llm-providers", "/label-schemas", "/annotation-jobs"):
        assert_not_found(attacker.client.get(victim.url(path)))
        listed = attacker.get(path).json()
        assert (listed if isinstance(listed, list) else listed["results"]) == []
    mine = attacker.post("/annotation-jobs", {"dataset": dataset["id"], "head": "toxicity"})
    assert mine.status_code == 400  # the victim's schema is not the attacker's


def test_a_reviewer_edits_the_text_and_the_dataset_row_and_history_follow(
    api: AnnotationApi, tenant: Tenant
) -> None:
    dataset = api.dataset(comments_csv(4))
    api.schema(dataset["id"])
    person = tenant.session_client()
    saved = person.post(
        tenant.url(f"/datasets/{dataset['id']}/review/2"),
        {"head": "toxicity", "labels": ["safe"], "text": "have a really nice day"},
        format="json",
    )
    assert saved.status_code == 200, saved.content
    assert labels_to_dataset() == 1
    row = next(r for r in api.dataset_rows(dataset["id"]) if r["number"] == 2)
    assert row["cells"]["comment"] == "have a really nice day" and row["labels"]["toxicity"] == ["safe"]
    history = api.get(f"/datasets/{dataset['id']}/history").json()["results"]
    assert any(h["action"] == "edit" and h["actor"] == f"human:user:{tenant.owner.pk}" for h in history), (
        history
    )
    # The annotation service's copy follows the dataset's echo: the next job labels the edited text.
    assert (
        api.get(f"/datasets/{dataset['id']}/review/next", head="toxicity", after=1).json()["row"]["number"]
        == 3
    )
    job = api.job(dataset["id"], rows="labeled")
    assert job["progress"]["total"] == 1


def test_the_rows_grid_filters_by_where_each_heads_labels_came_from(
    api: AnnotationApi, tenant: Tenant
) -> None:
    dataset = api.dataset(comments_csv(8, labeled=2))
    api.schema(dataset["id"])
    job = api.job(dataset["id"], rows={"sample": 3, "seed": 1})
    api.post(f"/annotation-jobs/{job['id']}/accept", {"min_score": 0})
    unlabeled = api.get(f"/datasets/{dataset['id']}/review/next", head="toxicity").json()["row"]["number"]
    tenant.session_client().post(
        tenant.url(f"/datasets/{dataset['id']}/review/{unlabeled}"),
        {"head": "toxicity", "labels": ["toxic"]},
        format="json",
    )
    labels_to_dataset()

    def numbers(source: str) -> list[int]:
        response = api.get(f"/datasets/{dataset['id']}/rows", head="toxicity", source=source)
        assert response.status_code == 200, response.content
        return [row["number"] for row in response.json()["results"]]

    accepted = sorted(
        s["row"] for s in api.get(f"/annotation-jobs/{job['id']}/suggestions").json()["results"]
    )
    assert numbers("import") == [1, 2]
    assert numbers("llm") == accepted == numbers("llm:similarity")
    assert numbers("human") == [unlabeled] == numbers(f"human:user:{tenant.owner.pk}")
    assert numbers("model") == []
    row = next(r for r in api.dataset_rows(dataset["id"]) if r["number"] == accepted[0])
    assert row["label_sources"] == {"toxicity": "llm:similarity:all-MiniLM-L6-v2@v1"}
    missing_head = api.get(f"/datasets/{dataset['id']}/rows", source="llm")
    assert missing_head.status_code == 400 and "head" in missing_head.json()["error"]["message"]
