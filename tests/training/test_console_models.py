"""Console pages of the training service: the model list, the create and update forms, the version page."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.test import Client

from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant, assert_not_found
from services.training import logic
from services.training.models import Model, ModelVersion, RunState, TrainingRun
from tests.training.conftest import TOXICITY, deliver_requests, snapshot_publish, toxicity_rows

pytestmark = pytest.mark.django_db(databases="__all__")


def browser(tenant: Tenant, role: str | None = None) -> Client:
    client = Client()
    client.force_login(tenant.add_member(role)[0] if role else tenant.owner)
    return client


def create_form(snapshot: int, **fields: str) -> dict[str, Any]:
    return {
        "name": "toxicity",
        "base_model": "minilm-l6",
        "snapshots": [str(snapshot)],
        "test_kind": "split",
        "test_split_percent": "25",
        "option_strategy": "head",
        "option_max_epochs": "4",
        **fields,
    }


def evaluation() -> dict[str, Any]:
    """A small evaluation in the ML core's shape: one multi-class head, 20 test rows."""

    def label(support: int, predicted: int, tp: int, precision: float, recall: float) -> dict[str, Any]:
        return {
            "support": support,
            "predicted": predicted,
            "precision": precision,
            "recall": recall,
            "f1": round(2 * precision * recall / (precision + recall), 6),
            "balanced_accuracy": 0.85,
            "average_precision": 0.9,
            "confusion": {"tp": tp, "fp": predicted - tp, "fn": support - tp, "tn": 0},
            "pr_curve": [
                {"threshold": 0.9, "precision": 1.0, "recall": 0.5},
                {"threshold": 0.5, "precision": precision, "recall": recall},
                {"threshold": 0.1, "precision": 0.5, "recall": 1.0},
            ],
            "thresholds": {
                "default": None,
                "best_f1": {"threshold": 0.5, "precision": precision, "recall": recall, "f1": 0.85},
                "target_precision": None,
            },
        }

    head = {
        "multi_label": False,
        "labels": ["safe", "toxic"],
        "support": 20,
        "accuracy": 0.85,
        "loss": 0.31,
        "macro": {"precision": 0.8523, "recall": 0.85, "f1": 0.8496, "balanced_accuracy": 0.85},
        "per_label": {"safe": label(10, 9, 8, 0.888889, 0.8), "toxic": label(10, 11, 9, 0.818182, 0.9)},
        "confusion_matrix": {"labels": ["safe", "toxic"], "matrix": [[8, 2], [1, 9]]},
    }
    return {
        "split": "test",
        "rows": 20,
        "heads": {"toxicity": head},
        "macro": {"precision": 0.8523, "recall": 0.85, "f1": 0.8496, "balanced_accuracy": 0.85, "loss": 0.31},
    }


def train(tenant: Tenant, version: ModelVersion) -> None:
    """Move a version's run to succeeded through the trainer's own calls, with two epochs of progress."""
    with org_scope(tenant.org.pk):
        deliver_requests()
        run_id = TrainingRun.objects.get(version=version).pk
        assert logic.run_start(run_id=run_id) is not None
        for epoch, (train_loss, valid_loss) in enumerate([(0.69, 0.6), (0.4, 0.35)], start=1):
            logic.run_progress(
                run_id=run_id,
                epoch={
                    "candidate": "head",
                    "epoch": epoch,
                    "max_epochs": 4,
                    "train_loss": train_loss,
                    "valid_loss": valid_loss,
                    "selection_metric": 0.8,
                    "head_metrics": {},
                    "best": True,
                    "seconds": 0.1,
                },
            )
        assert logic.run_succeed(
            run_id=run_id,
            evaluation=evaluation(),
            thresholds={"toxicity": {"safe": 0.0, "toxic": 0.0}},
            artifact_key=f"artifacts/test/{run_id}.tar.gz",
            metrics_summary={},
        )


@pytest.fixture
def snapshot(tenant: Tenant) -> int:
    return snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(with_topic=False), heads=[TOXICITY])


def test_an_empty_org_is_pointed_at_its_datasets(tenant: Tenant) -> None:
    page = browser(tenant).get(f"/console/{tenant.slug}/models")
    assert page.status_code == 200
    assert b"No models yet" in page.content and b"Go to datasets" in page.content


def test_the_create_form_trains_version_1_with_the_chosen_options(tenant: Tenant, snapshot: int) -> None:
    client = browser(tenant)
    form = client.get(f"/console/{tenant.slug}/models/new?snapshot={snapshot}")
    assert form.status_code == 200
    for option in [
        "strategy",
        "max_epochs",
        "selection_rule",
        "selection_head",
        "early_stopping",
        "max_invalid_row_percent",
        "learning_rate",
        "batch_size",
        "max_tokens",
        "target_precision",
    ]:
        assert f'name="option_{option}"'.encode() in form.content, option
    assert f'value="{snapshot}" id="snapshot-{snapshot}" checked'.encode() in form.content

    created = client.post(f"/console/{tenant.slug}/models/new", create_form(snapshot))

    with org_scope(tenant.org.pk):
        version = ModelVersion.objects.select_related("model", "run").get()
    assert created.status_code == 302
    assert created["Location"] == f"/console/{tenant.slug}/models/{version.model_id}/versions/1"
    assert (version.model.name, version.options["strategy"], version.options["max_epochs"]) == (
        "toxicity",
        "head",
        4,
    )
    assert version.test == {"split_percent": 25.0} and version.snapshot_ids == [snapshot]
    page = client.get(created["Location"])
    assert b"queued" in page.content and b"Cancel training" in page.content
    listing = client.get(f"/console/{tenant.slug}/models")
    assert b"toxicity" in listing.content and b"v1" in listing.content


def test_the_create_form_says_what_is_wrong_and_keeps_the_input(tenant: Tenant, snapshot: int) -> None:
    client = browser(tenant)
    bad_epochs = client.post(
        f"/console/{tenant.slug}/models/new", create_form(snapshot, option_max_epochs="0")
    )
    assert bad_epochs.status_code == 400
    assert b"options.max_epochs" in bad_epochs.content
    assert b'name="option_max_epochs" type="number" step="1" value="0"' in bad_epochs.content
    assert client.post(f"/console/{tenant.slug}/models/new", create_form(snapshot)).status_code == 302
    taken = client.post(f"/console/{tenant.slug}/models/new", create_form(snapshot))
    assert taken.status_code == 400 and b"already exists" in taken.content
    nothing = client.post(f"/console/{tenant.slug}/models/new", create_form(snapshot, snapshots=[]))
    assert nothing.status_code == 400 and b"snapshots" in nothing.content
    with org_scope(tenant.org.pk):
        assert Model.objects.count() == 1


def test_a_snapshot_still_on_its_way_is_awaited_not_an_error(tenant: Tenant) -> None:
    page = browser(tenant).get(f"/console/{tenant.slug}/models/new?snapshot=987654")
    assert page.status_code == 200
    assert b"on its way" in page.content and b'http-equiv="refresh"' in page.content


def test_the_version_page_shows_metrics_curves_and_the_confusion_matrix(
    tenant: Tenant, snapshot: int
) -> None:
    client = browser(tenant)
    client.post(f"/console/{tenant.slug}/models/new", create_form(snapshot, name="<b>tox</b>"))
    with org_scope(tenant.org.pk):
        version = ModelVersion.objects.get()
    train(tenant, version)

    page = client.get(f"/console/{tenant.slug}/models/{version.model_id}/versions/1")

    html = page.content.decode()
    assert page.status_code == 200
    assert "&lt;b&gt;tox&lt;/b&gt;" in html and "<b>tox</b>" not in html
    assert "0.850" in html  # macro F1 and balanced accuracy
    matrix = re.search(r'<table class="cm confusion-matrix">(.*?)</table>', html, re.S).group(1)
    assert [int(n) for n in re.findall(r'data-count="(\d+)"', matrix)] == [8, 2, 1, 9]
    data = json.loads(
        re.search(r'<script id="version-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    )
    assert [e["train_loss"] for e in data["epochs"]] == [0.69, 0.4]
    assert data["evaluation"]["heads"]["toxicity"]["per_label"]["toxic"]["pr_curve"][0]["recall"] == 0.5
    assert 'id="per-class"' in html and 'id="playground-form"' in html
    assert f"/models/{version.model_id}/versions/1/playground" in html


def test_training_progress_is_followed_live_until_the_run_ends(tenant: Tenant, snapshot: int) -> None:
    client = browser(tenant)
    client.post(f"/console/{tenant.slug}/models/new", create_form(snapshot))
    with org_scope(tenant.org.pk):
        version = ModelVersion.objects.get()
    page_url = f"/console/{tenant.slug}/models/{version.model_id}/versions/1"
    progress = f"{page_url}/progress"
    page = client.get(page_url).content.decode()
    assert f'hx-get="{progress}"' in page and 'hx-trigger="every 2s"' in page

    queued = client.get(progress, headers={"HX-Request": "true"}).content.decode()
    assert "waiting for the operator" in queued and 'id="run-status" hx-swap-oob="true"' in queued
    assert ">queued<" in queued

    with org_scope(tenant.org.pk):
        deliver_requests()
        run_id = TrainingRun.objects.get(version=version).pk
        logic.run_start(run_id=run_id)
        logic.run_progress(
            run_id=run_id,
            epoch={"candidate": "head", "epoch": 1, "max_epochs": 4, "train_loss": 0.69, "valid_loss": 0.6},
        )
    running = client.get(progress, headers={"HX-Request": "true"})
    html = running.content.decode()
    assert running.status_code == 200 and "HX-Refresh" not in running
    assert "epoch 1 of 4" in html and "width: 25%" in html and ">training<" in html
    epochs = json.loads(
        re.search(r'<script id="progress-epochs" type="application/json">(.*?)</script>', html, re.S).group(1)
    )
    assert [(e["epoch"], e["train_loss"], e["valid_loss"]) for e in epochs] == [(1, 0.69, 0.6)]

    client.post(f"{page_url}/cancel")
    ended = client.get(progress, headers={"HX-Request": "true"})
    assert ended.status_code == 200 and ended["HX-Refresh"] == "true"  # htmx reloads the page
    assert progress not in client.get(page_url).content.decode()


def test_update_model_trains_the_next_version_from_the_chosen_parent(tenant: Tenant, snapshot: int) -> None:
    client = browser(tenant)
    client.post(f"/console/{tenant.slug}/models/new", create_form(snapshot))
    with org_scope(tenant.org.pk):
        first = ModelVersion.objects.get()
    train(tenant, first)
    newer = snapshot_publish(org_id=tenant.org.pk, rows=toxicity_rows(60, with_topic=False), heads=[TOXICITY])
    form = client.get(f"/console/{tenant.slug}/models/{first.model_id}/versions/new")
    assert form.status_code == 200 and b'value="4"' in form.content  # the parent's max_epochs is inherited

    update = client.post(
        f"/console/{tenant.slug}/models/{first.model_id}/versions/new",
        {
            "parent": "1",
            "snapshots": [str(newer)],
            "test_kind": "split",
            "test_split_percent": "20",
            "option_strategy": "head",
            "option_max_epochs": "6",
        },
    )

    assert update.status_code == 302
    assert update["Location"].endswith(f"/models/{first.model_id}/versions/2")
    with org_scope(tenant.org.pk):
        second = ModelVersion.objects.get(number=2)
    assert (second.parent_id, second.snapshot_ids, second.options["max_epochs"]) == (first.pk, [newer], 6)


def test_cancel_stops_a_queued_run(tenant: Tenant, snapshot: int) -> None:
    client = browser(tenant)
    client.post(f"/console/{tenant.slug}/models/new", create_form(snapshot))
    with org_scope(tenant.org.pk):
        version = ModelVersion.objects.get()
    response = client.post(f"/console/{tenant.slug}/models/{version.model_id}/versions/1/cancel")
    assert response.status_code == 302
    with org_scope(tenant.org.pk):
        assert TrainingRun.objects.get(version=version).state == RunState.CANCELLED
    page = client.get(response["Location"])
    assert b"Training was cancelled" in page.content


def test_a_viewer_reads_models_but_cannot_train(tenant: Tenant, snapshot: int) -> None:
    owner = browser(tenant)
    owner.post(f"/console/{tenant.slug}/models/new", create_form(snapshot))
    viewer = browser(tenant, "viewer")
    page = viewer.get(f"/console/{tenant.slug}/models")
    assert page.status_code == 200 and b"New model" not in page.content
    assert viewer.get(f"/console/{tenant.slug}/models/new").status_code == 403
    assert (
        viewer.post(f"/console/{tenant.slug}/models/new", create_form(snapshot, name="other")).status_code
        == 403
    )


@pytest.mark.cross_tenant(
    "console-models",
    "console-model-create",
    "console-model",
    "console-model-version-create",
    "console-model-version",
    "console-model-version-cancel",
    "console-model-version-progress",
)
def test_model_pages_of_another_org_are_404(tenant: Tenant, victim: Tenant) -> None:
    victim_snapshot = snapshot_publish(
        org_id=victim.org.pk, rows=toxicity_rows(with_topic=False), heads=[TOXICITY]
    )
    browser(victim).post(f"/console/{victim.slug}/models/new", create_form(victim_snapshot))
    with org_scope(victim.org.pk):
        version = ModelVersion.objects.get()
    attacker = browser(tenant)
    model = f"models/{version.model_id}"
    for path in [
        "models",
        "models/new",
        model,
        f"{model}/versions/new",
        f"{model}/versions/1",
        f"{model}/versions/1/progress",
    ]:
        assert_not_found(attacker.get(f"/console/{victim.slug}/{path}"))
        if path != "models" and path != "models/new":
            # The victim's ids under the attacker's own org are just as missing.
            assert_not_found(attacker.get(f"/console/{tenant.slug}/{path}"))
    assert_not_found(attacker.post(f"/console/{victim.slug}/{model}/versions/1/cancel"))
    assert_not_found(attacker.post(f"/console/{tenant.slug}/{model}/versions/1/cancel"))
    assert_not_found(
        attacker.post(f"/console/{tenant.slug}/{model}/versions/new", {"snapshots": [str(victim_snapshot)]})
    )
    with org_scope(victim.org.pk):
        assert TrainingRun.objects.get(version=version).state == RunState.QUEUED
        assert ModelVersion.objects.count() == 1


def test_an_image_models_playground_takes_an_uploaded_pasted_or_linked_image(
    tenant: Tenant, snapshot: int
) -> None:
    client = browser(tenant)
    client.post(f"/console/{tenant.slug}/models/new", create_form(snapshot))
    with org_scope(tenant.org.pk):
        version = ModelVersion.objects.get()
        Model.objects.filter(pk=version.model_id).update(type="image_classification")
    train(tenant, version)

    html = client.get(f"/console/{tenant.slug}/models/{version.model_id}/versions/1").content.decode()

    assert 'data-kind="image"' in html
    assert 'type="file" id="playground-image"' in html and 'id="playground-url"' in html
    assert 'id="playground-input"' not in html  # no text box for an image model
