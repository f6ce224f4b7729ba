"""A job whose process died (left `running`, its heartbeat stale) is resumed by the sweep from the rows it had
not reached, or failed with the reason when that keeps happening or its model labeler never answered."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from arbiter.tenancy.scoping import org_scope
from services.annotation.logic import annotation_jobs_recover, job_run
from services.annotation.models import AnnotationJob, Suggestion
from tests.annotation.conftest import AnnotationApi, comments_csv, rows_to_annotation

pytestmark = pytest.mark.django_db(databases="__all__")


def resume_here(job: AnnotationJob) -> None:
    with org_scope(job.org_id):
        job_run(job=AnnotationJob.objects.get(pk=job.pk))


def died(job_id: int, *, minutes: int = 10, **fields: Any) -> None:
    """Leave a job as a dead process would: running, its heartbeat some minutes old."""
    AnnotationJob.objects.unscoped().filter(pk=job_id).update(
        state=AnnotationJob.RUNNING,
        finished_at=None,
        heartbeat_at=timezone.now() - timedelta(minutes=minutes),
        **fields,
    )


def test_a_job_whose_process_died_is_resumed_where_it_stopped(api: AnnotationApi) -> None:
    dataset = api.dataset(comments_csv(12))
    api.schema(dataset["id"])
    job = api.job(dataset["id"], rows="all")
    # Its process died after 5 of 12 rows.
    kept = list(Suggestion.objects.unscoped().filter(job_id=job["id"]).order_by("row_number")[:5])
    first = {s.row_number: s.pk for s in kept}
    Suggestion.objects.unscoped().filter(job_id=job["id"]).exclude(pk__in=first.values()).delete()
    died(job["id"], done=5)
    fresh = api.job(dataset["id"], rows="all")
    died(fresh["id"], minutes=1)  # slow, not dead: left alone

    assert annotation_jobs_recover(resume=resume_here) == {"resumed": 1, "failed": 0}
    resumed = api.get(f"/annotation-jobs/{job['id']}").json()
    assert resumed["state"] == "completed" and resumed["progress"]["done"] == 12
    rows = Suggestion.objects.unscoped().filter(job_id=job["id"])
    assert rows.count() == 12
    assert {s.row_number: s.pk for s in rows if s.row_number in first} == first  # the first five were kept
    assert api.get(f"/annotation-jobs/{fresh['id']}").json()["state"] == "running"


def test_a_job_that_keeps_dying_fails_with_the_reason(api: AnnotationApi) -> None:
    dataset = api.dataset(comments_csv(4))
    api.schema(dataset["id"])
    job = api.job(dataset["id"], rows="all")
    died(job["id"], rows_spec={"rows": "all", "recoveries": 3})
    assert annotation_jobs_recover(resume=resume_here) == {"resumed": 0, "failed": 1}
    failed = api.get(f"/annotation-jobs/{job['id']}").json()
    assert failed["state"] == "failed" and failed["error"]["code"] == "process_died"
    assert "stopped 3 times" in failed["error"]["message"]


def test_a_model_job_the_inference_service_never_answers_fails_saying_so(
    api: AnnotationApi, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_WAIT_FOR_EVENTS_SECONDS="60")
    dataset = api.dataset(comments_csv(4))
    api.schema(dataset["id"])
    job = api.job(dataset["id"], rows="all")
    died(job["id"], provider_kind=AnnotationJob.MODEL, deployment_id=1)
    assert annotation_jobs_recover(resume=resume_here) == {"resumed": 0, "failed": 1}
    failed = api.get(f"/annotation-jobs/{job['id']}").json()
    assert failed["state"] == "failed" and failed["error"]["code"] == "no_answer"


def test_a_job_created_before_the_rows_arrived_labels_them_though_they_arrive_before_it_runs(
    api: AnnotationApi,
) -> None:
    file = io.BytesIO(comments_csv(12))
    file.name = "comments.csv"
    uploaded = api.client.post(api.url("/datasets"), {"file": file}, format="multipart")
    assert uploaded.status_code == 201, uploaded.content
    dataset = uploaded.json()["id"]
    schema = api.schema(dataset)
    # What the request leaves when the rows had not reached this service: none selected, not started.
    job = AnnotationJob.objects.unscoped().create(
        org_id=api.tenant.org.pk,
        dataset_id=dataset,
        head="toxicity",
        schema_id=schema["id"],
        provider_kind=AnnotationJob.SIMILARITY,
        agent="similarity:all-MiniLM-L6-v2@v1",
        rows_spec={"rows": "unlabeled"},
        created_by="user:1",
    )
    rows_to_annotation()  # the rows arrive between the request and the job's run
    resume_here(job)
    done = api.get(f"/annotation-jobs/{job.pk}").json()
    assert done["state"] == "completed" and done["progress"]["total"] == 12
