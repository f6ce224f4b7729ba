"""Mistral's Classifier Factory flow against a live Arbiter: files, fine-tuning jobs, models, classify.

Files go to the dataset service, jobs to the training service, the deployment to the inference service; the
services' events are handed from each outbox to the consumers' handlers as the consumer runners would
(`Pump`), and the trainer runs in this process. The official `mistralai` SDK (the installed major has no
fine-tuning jobs client) uploads, lists and downloads files, lists models and classifies; the jobs API is
called with the JSON the Mistral SDK 1.x sends and checked against the fields its models require.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from django.db import transaction
from mistralai.client import Mistral
from mistralai.client.errors import SDKError

from arbiter.config.services import db_alias
from arbiter.events.envelope import Event
from arbiter.events.handlers import handlers_for
from arbiter.events.models import OutboxEvent
from arbiter.events.registry import get_event_type
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant
from services.training import fine_tuning
from services.training.models import FineTuningJob, RunState
from services.training.trainer import trainer_run

pytestmark = [pytest.mark.django_db(databases="__all__", transaction=True), pytest.mark.slow]

SERVICES = ("dataset", "training", "inference")
TOXIC = ["you are an idiot", "shut up you moron", "i hate you loser", "you stupid fool", "get lost jerk"]
SAFE = [
    "have a nice day",
    "thanks for the help",
    "the weather is lovely",
    "see you tomorrow",
    "great article",
]


def jsonl(count: int, offset: int = 0) -> bytes:
    lines = []
    for i in range(count):
        toxic = i % 2 == 0
        text = f"{(TOXIC if toxic else SAFE)[(i // 2) % 5]} {offset + i}"
        labels = ["toxicity", "insult"] if toxic else ["safe"]
        lines.append(json.dumps({"text": text, "labels": {"moderation": labels}}))
    return ("\n".join(lines) + "\n").encode()


class Pump:
    """Delivers every event in the services' outboxes to the handlers of its consumers, once each, and does
    what the training operator's pass would: validates fine-tuning jobs and runs the trainer of runs it would
    launch."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self) -> None:
        while self.validate() or self._deliver_once():
            pass

    def validate(self, *, waited: float = 600) -> int:
        return fine_tuning.jobs_validate(older_than=timedelta(seconds=waited))

    def _deliver_once(self) -> bool:
        delivered = False
        for producer in SERVICES:
            for row in OutboxEvent.objects.using(db_alias(producer)).order_by("id"):
                if row.event_id in self.seen:
                    continue
                self.seen.add(row.event_id)
                delivered = True
                event = Event.from_json(row.payload)
                event_type = get_event_type(event.type)
                event_type.validate(event.data)
                for consumer in event_type.consumers:
                    handler = handlers_for(consumer).get(event.type) if consumer in SERVICES else None
                    if handler is not None:
                        with transaction.atomic(using=db_alias(consumer)), org_scope(event.org_id):
                            handler(event)
                if event.type == "training.requested":
                    run_id = int(event.data["run_id"])
                    with org_scope(event.org_id):
                        trainer_run(run_id=run_id)
        return delivered


@pytest.fixture
def pump() -> Pump:
    return Pump()


@pytest.fixture
def mistral(live_server: Any, tenant: Tenant) -> Iterator[Mistral]:
    with Mistral(api_key=tenant.key(["admin"]), server_url=live_server.url) as client:
        yield client


class JobsApi(requests.Session):
    """The fine-tuning jobs API as the Mistral SDK 1.x calls it."""

    def __init__(self, base: str, key: str) -> None:
        super().__init__()
        self.base = base
        self.headers["Authorization"] = f"Bearer {key}"

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 120)
        return super().request(method, f"{self.base}{url!s}", *args, **kwargs)


@pytest.fixture
def jobs(live_server: Any, tenant: Tenant) -> Iterator[JobsApi]:
    with JobsApi(f"{live_server.url}/v1/fine_tuning", tenant.key(["admin"])) as client:
        yield client


# The fields mistralai 1.x's ClassifierJobOut / ClassifierDetailedJobOut require.
JOB_FIELDS = {
    "id",
    "auto_start",
    "model",
    "status",
    "created_at",
    "modified_at",
    "training_files",
    "hyperparameters",
    "job_type",
    "object",
}
DETAILED_FIELDS = JOB_FIELDS | {"classifier_targets", "events", "checkpoints"}


def upload(mistral: Mistral, name: str, content: bytes) -> str:
    file = mistral.files.upload(file={"file_name": name, "content": content}, purpose="fine-tune")
    assert file.filename == name and file.num_lines == content.count(b"\n") and file.object == "file"
    return str(file.id)


def test_the_classifier_factory_flow_trains_deploys_and_classifies(
    mistral: Mistral, jobs: JobsApi, pump: Pump, tenant: Tenant
) -> None:
    training = upload(mistral, "train.jsonl", jsonl(40))
    validation = upload(mistral, "valid.jsonl", jsonl(10, offset=100))
    pump()
    listed = mistral.files.list()
    assert {f.id for f in listed.data} == {training, validation}
    assert mistral.files.retrieve(file_id=training).filename == "train.jsonl"
    assert mistral.files.download(file_id=validation).read() == jsonl(10, offset=100)

    created = jobs.post(
        "/jobs",
        json={
            "model": "ministral-3b-latest",
            "job_type": "classifier",
            "training_files": [{"file_id": training, "weight": 1}],
            "validation_files": [validation],
            "hyperparameters": {"training_steps": 6, "learning_rate": 0.005},
            "auto_start": False,
        },
    )
    assert created.status_code == 200, created.text
    job = created.json()
    assert set(job) >= JOB_FIELDS and job["job_type"] == "classifier" and job["training_files"] == [training]
    assert job["status"] == "VALIDATING"  # answered at once; the operator validates it
    pump()

    detailed = jobs.get(f"/jobs/{job['id']}").json()
    assert set(detailed) >= DETAILED_FIELDS
    assert detailed["classifier_targets"] == [
        {
            "name": "moderation",
            "labels": ["toxicity", "insult", "safe"],
            "weight": 1.0,
            "loss_function": "multi_class",
        }
    ]
    assert [e["data"]["status"] for e in detailed["events"]] == ["QUEUED", "VALIDATING", "VALIDATED"]

    started = jobs.post(f"/jobs/{job['id']}/start")
    assert started.status_code == 200 and started.json()["status"] == "QUEUED"
    pump()
    done = jobs.get(f"/jobs/{job['id']}").json()
    assert done["status"] == "SUCCESS", done["events"]
    fine_tuned = done["fine_tuned_model"]
    assert fine_tuned.startswith(f"ft:classifier:ministral-3b-latest:{tenant.org.pk}:")
    # 40 rows, all fit (the validation file validates), batches of 32: 2 steps an epoch, 3 epochs for 6 steps;
    # newest first.
    steps = [c["step_number"] for c in done["checkpoints"]]
    assert steps == [6, 4, 2]
    assert all(c["metrics"]["train_loss"] > 0 and c["metrics"]["valid_loss"] > 0 for c in done["checkpoints"])

    classified = mistral.classifiers.classify(model=fine_tuned, inputs=["you stupid fool", "have a nice day"])
    insult, friendly = classified.results
    assert set(insult["moderation"].scores) == {"toxicity", "insult", "safe"}
    assert insult["moderation"].scores["toxicity"] > friendly["moderation"].scores["toxicity"]

    models = {m.id: m for m in mistral.models.list().data or []}
    assert "ministral-3b-latest" in models and fine_tuned in models
    retrieved = mistral.models.retrieve(model_id=fine_tuned)
    assert retrieved.id == fine_tuned and retrieved.model_dump().get("job") == job["id"]

    listed_jobs = jobs.get("/jobs", params={"status": "SUCCESS"}).json()
    assert listed_jobs["total"] == 1 and listed_jobs["data"][0]["id"] == job["id"]
    assert jobs.get("/jobs", params={"status": "RUNNING"}).json()["total"] == 0

    mistral.files.delete(file_id=validation)
    with pytest.raises(SDKError) as missing:
        mistral.files.retrieve(file_id=validation)
    assert missing.value.status_code == 404


def labelled(rows: list[tuple[str, str]]) -> bytes:
    return "".join(
        json.dumps({"text": text, "labels": {"moderation": label}}) + "\n" for text, label in rows
    ).encode()


AMBIGUOUS = "the morning bus again"


def test_file_weights_decide_and_every_validation_file_validates(
    mistral: Mistral, jobs: JobsApi, pump: Pump
) -> None:
    # Both training files hold the same clear rows; on one text they disagree, so which label it gets is
    # decided by the files' weights alone.
    clear = [(f"{TOXIC[i % 5]} {i}", "toxic") for i in range(5)] + [
        (f"{SAFE[i % 5]} {i}", "safe") for i in range(5)
    ]
    says_toxic = upload(
        mistral, "a.jsonl", labelled(clear + [(f"{AMBIGUOUS} {i}", "toxic") for i in range(10)])
    )
    says_safe = upload(
        mistral, "b.jsonl", labelled(clear + [(f"{AMBIGUOUS} {i}", "safe") for i in range(10)])
    )
    # Two validation files, one class each: together they are the validation rows.
    toxic_valid = upload(mistral, "vt.jsonl", labelled([(f"{TOXIC[i]} again", "toxic") for i in range(5)]))
    safe_valid = upload(mistral, "vs.jsonl", labelled([(f"{SAFE[i]} again", "safe") for i in range(4)]))
    pump()

    def train(toxic_weight: float, safe_weight: float) -> dict[str, Any]:
        created = jobs.post(
            "/jobs",
            json={
                "model": "ministral-3b-latest",
                "training_files": [
                    {"file_id": says_toxic, "weight": toxic_weight},
                    {"file_id": says_safe, "weight": safe_weight},
                ],
                "validation_files": [toxic_valid, safe_valid],
                "hyperparameters": {"training_steps": 60, "learning_rate": 0.02},
                "auto_start": True,
            },
        )
        assert created.status_code == 200, created.text
        pump()
        done = jobs.get(f"/jobs/{created.json()['id']}").json()
        assert done["status"] == "SUCCESS", done["events"]
        return done

    toxic_job, safe_job = train(8, 1), train(1, 8)
    scores = {}
    for side, job in (("toxic", toxic_job), ("safe", safe_job)):
        [result] = mistral.classifiers.classify(
            model=job["fine_tuned_model"], inputs=[f"{AMBIGUOUS} 3"]
        ).results
        scores[side] = result["moderation"].scores["toxic"]
        version = FineTuningJob.objects.unscoped().select_related("version").get(public_id=job["id"]).version
        assert version is not None and version.evaluation is not None
        # 40 training rows, all fit; the 5 + 4 rows of the two validation files validate (and are evaluated).
        assert version.evaluation["training"]["rows"] == {"train": 40, "validation": 9, "test": 0}
        assert (version.evaluation["split"], version.evaluation["rows"]) == ("validation", 9)
        assert all(c["metrics"]["valid_loss"] > 0 for c in job["checkpoints"])
    # With the weights ignored both jobs train on the same rows and score the text alike.
    assert scores["toxic"] > 0.5 > scores["safe"], scores


def test_invalid_jobs_and_files_answer_422_naming_the_problem(
    mistral: Mistral, jobs: JobsApi, pump: Pump, victim: Tenant, live_server: Any
) -> None:
    broken = b'{"text": "fine", "labels": {"moderation": ["safe"]}}\n{"text": "oops", "labels": \n'
    with pytest.raises(SDKError) as error:
        mistral.files.upload(file={"file_name": "broken.jsonl", "content": broken}, purpose="fine-tune")
    assert error.value.status_code == 422
    assert "line.2" in error.value.body and "not valid JSON" in error.value.body
    assert mistral.files.list().data == []

    training = upload(mistral, "train.jsonl", jsonl(20))
    with Mistral(api_key=victim.key(["admin"]), server_url=live_server.url) as thief:
        theirs = upload(thief, "theirs.jsonl", jsonl(20))
        with pytest.raises(SDKError) as hidden:
            thief.files.retrieve(file_id=training)
        assert hidden.value.status_code == 404
    pump()

    def create(**changes: Any) -> requests.Response:
        body = {
            "model": "ministral-3b-latest",
            "job_type": "classifier",
            "training_files": [{"file_id": training, "weight": 1}],
            "hyperparameters": {"training_steps": 4, "learning_rate": 0.0001},
            **changes,
        }
        return jobs.post("/jobs", json=body)

    cases = {
        "training_files.0.file_id": create(training_files=[{"file_id": "no-such-file"}]),
        "training_files.0.file_id: no file with id": create(training_files=[{"file_id": theirs}]),
        "hyperparameters.training_steps": create(hyperparameters={"training_steps": -3}),
        "hyperparameters.learning_rate": create(hyperparameters={"training_steps": 3, "learning_rate": "x"}),
        "model: 'gpt-4' is not a base model": create(model="gpt-4"),
        "training_files.0.weight: must be a positive number": create(
            training_files=[{"file_id": training, "weight": 0}]
        ),
        "training_files.1.weight: must be a positive number": create(
            training_files=[{"file_id": training, "weight": 1}, {"file_id": training, "weight": -2}]
        ),
        "validation_files.0: file '": create(validation_files=[training]),
    }
    for expected, response in cases.items():
        assert response.status_code == 422, response.text
        body = response.json()
        assert expected in body["error"]["message"] and body["detail"][0]["loc"][0] == "body"

    # Data that cannot train fails validation, saying why.
    single = upload(mistral, "single.jsonl", b'{"text": "a", "labels": {"toxicity": "safe"}}\n' * 5)
    pump()
    failed = create(training_files=[{"file_id": single, "weight": 1}]).json()
    pump()
    assert jobs.get(f"/jobs/{failed['id']}").json()["status"] == "FAILED_VALIDATION"
    events = jobs.get(f"/jobs/{failed['id']}").json()["events"]
    assert "single class" in events[-1]["data"]["error"]
    assert jobs.post(f"/jobs/{failed['id']}/start").status_code == 409

    # Another org's key sees none of this org's jobs.
    with JobsApi(f"{live_server.url}/v1/fine_tuning", victim.key(["admin"])) as other:
        assert other.get(f"/jobs/{failed['id']}").status_code == 404
        assert other.post(f"/jobs/{failed['id']}/cancel").status_code == 404
        assert other.get("/jobs").json()["total"] == 0


def test_a_job_created_right_after_the_upload_waits_for_its_file(
    mistral: Mistral, jobs: JobsApi, pump: Pump
) -> None:
    # Uploaded, and the job created before `file.created` reached the training service: accepted, waiting.
    training = upload(mistral, "train.jsonl", jsonl(20))
    body = {
        "model": "ministral-3b-latest",
        "training_files": [{"file_id": training, "weight": 1}],
        "hyperparameters": {"training_steps": 2},
    }
    early = jobs.post("/jobs", json=body)
    assert early.status_code == 200 and early.json()["status"] == "VALIDATING", early.text
    assert pump.validate() == 0
    assert jobs.get(f"/jobs/{early.json()['id']}").json()["status"] == "VALIDATING"
    pump()
    assert jobs.get(f"/jobs/{early.json()['id']}").json()["status"] == "VALIDATED"

    # A file id that never arrives fails validation after the wait, naming it.
    never = "6f1c2d3e-0000-4000-8000-000000000000"
    lost = jobs.post("/jobs", json={**body, "training_files": [{"file_id": never}]}).json()
    assert pump.validate() == 0
    assert pump.validate(waited=0) == 1
    failed = jobs.get(f"/jobs/{lost['id']}").json()
    assert failed["status"] == "FAILED_VALIDATION"
    assert f"no file with id '{never}' reached the training service" in failed["events"][-1]["data"]["error"]


def test_a_job_is_cancelled_before_and_after_it_starts(mistral: Mistral, jobs: JobsApi, pump: Pump) -> None:
    training = upload(mistral, "train.jsonl", jsonl(20))
    pump()
    body = {
        "model": "ministral-3b-latest",
        "training_files": [{"file_id": training, "weight": 1}],
        "hyperparameters": {"training_steps": 2},
    }
    waiting = jobs.post("/jobs", json=body).json()
    assert jobs.post(f"/jobs/{waiting['id']}/cancel").json()["status"] == "CANCELLED"
    assert jobs.post(f"/jobs/{waiting['id']}/start").status_code == 409

    queued = jobs.post("/jobs", json={**body, "auto_start": True}).json()
    assert queued["status"] == "VALIDATING"
    pump.validate()
    assert jobs.get(f"/jobs/{queued['id']}").json()["status"] == "QUEUED"
    cancelled = jobs.post(f"/jobs/{queued['id']}/cancel").json()
    assert cancelled["status"] == "CANCELLED"
    job = FineTuningJob.objects.unscoped().select_related("version__run").get(public_id=queued["id"])
    assert job.version is not None and job.version.run.state == RunState.CANCELLED
    pump()  # the trainer finds the run cancelled and trains nothing
    assert jobs.get(f"/jobs/{queued['id']}").json()["checkpoints"] == []


# mistralai 1.x, the major whose `client.fine_tuning.jobs` the cookbook uses: `make install` puts it apart from
# .venv (it cannot share one with the pinned major), and the cookbook runs in its own interpreter.
MISTRAL1 = Path(sys.prefix) / "mistralai1"
COOKBOOK = Path(__file__).with_name("mistralai1_cookbook.py")


def test_the_cookbook_runs_unmodified_with_the_mistralai_1_sdk(
    live_server: Any, tenant: Tenant, victim: Tenant, pump: Pump, tmp_path: Path
) -> None:
    assert (MISTRAL1 / "mistralai").is_dir(), (
        f"mistralai 1.x is not installed in {MISTRAL1}: run `make install`"
    )
    (tmp_path / "train.jsonl").write_bytes(jsonl(40))
    (tmp_path / "valid.jsonl").write_bytes(jsonl(10, offset=100))
    # -S: no site-packages, so only the 1.x SDK and its own dependencies are importable beside the stdlib.
    cookbook = subprocess.Popen(
        [sys.executable, "-S", str(COOKBOOK), live_server.url, tenant.key(["admin"]), victim.key(["admin"])]
        + [str(tmp_path)],
        env={**os.environ, "PYTHONPATH": str(MISTRAL1)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    while cookbook.poll() is None and time.monotonic() < deadline:
        pump()  # what the consumers and the operator would do while the cookbook polls
        time.sleep(0.2)
    out, err = cookbook.communicate(timeout=10)
    assert cookbook.returncode == 0, err.decode()[-4000:]
    seen = json.loads(out)

    assert seen["sdk"].startswith("1.")
    assert seen["upload"] == {"purpose": "fine-tune", "num_lines": 40}
    assert seen["created"]["type"] == "ClassifierJobOut" and seen["created"]["status"] in (
        "QUEUED",
        "VALIDATING",
    )
    assert seen["validated"]["status"] == "VALIDATED"
    assert seen["validated"]["type"] == "ClassifierDetailedJobOut"
    assert seen["validated"]["targets"] == [
        {
            "name": "moderation",
            "labels": ["toxicity", "insult", "safe"],
            "weight": 1.0,
            "loss_function": "multi_class",
        }
    ]
    assert seen["started"] == "QUEUED" and seen["statuses"][-1] == "SUCCESS"
    # The loss curves: a checkpoint every 2 steps (40 rows, 90% trained on, batches of 32), newest first.
    assert [point["step_number"] for point in seen["curves"]] == [6, 4, 2]
    assert all(point["train_loss"] > 0 and point["valid_loss"] > 0 for point in seen["curves"])
    fine_tuned = seen["fine_tuned_model"]
    assert fine_tuned.startswith(f"ft:classifier:ministral-3b-latest:{tenant.org.pk}:")
    insult, friendly = seen["classified"]
    assert insult["moderation"]["toxicity"] > friendly["moderation"]["toxicity"]
    assert len(seen["listed"]) == 1 and fine_tuned in seen["models"]
    assert (
        seen["unknown_file"]["status"] == 422
        and "no file with id 'no-such-file'" in seen["unknown_file"]["body"]
    )
    assert seen["bad_steps"]["status"] == 422 and "training_steps" in seen["bad_steps"]["body"]
    assert seen["other_org"]["status"] == 404
