"""Whoever started an auto-labeling job is told by email when it finishes (Django's mail over SMTP, to a real
SMTP server on loopback); an email that cannot be sent never fails the job."""

from __future__ import annotations

from typing import Any

import pytest

from arbiter.config.routes import page_path
from arbiter.testing.tenants import Tenant
from tests.annotation.conftest import AnnotationApi, Mailbox, comments_csv

pytestmark = pytest.mark.django_db(databases="__all__")


def test_the_person_who_started_a_job_gets_an_email_when_it_is_done(
    tenant: Tenant, api: AnnotationApi, smtp_server: Mailbox, django_capture_on_commit_callbacks: Any
) -> None:
    dataset = api.dataset(comments_csv(12, labeled=4))
    api.schema(dataset["id"])
    page = page_path("console-labeling-dataset", org=tenant.slug, dataset_id=dataset["id"])
    person = tenant.session_client()
    with django_capture_on_commit_callbacks(execute=True, using="annotation"):
        ran = person.post(
            page, {"action": "run", "head": "toxicity", "provider": "similarity", "rows": "all"}
        )
    assert ran.status_code == 302
    (message,) = smtp_server.messages
    job = api.get("/annotation-jobs").json()["results"][0]
    assert message["To"] == tenant.owner.email
    assert message["Subject"] == f"Labeling job {job['id']} completed: 12 rows labeled"
    body = message.get_payload()
    assert "Rows labeled: 12 of 12; failed: 0." in body
    assert "Agreement with people's labels on 4 rows" in body
    assert f"http://127.0.0.1:8000{page}" in body

    # Started with an API key: the person who made the key is told.
    with django_capture_on_commit_callbacks(execute=True, using="annotation"):
        api.job(dataset["id"], rows={"sample": 3, "from": "all"})
    assert [m["To"] for m in smtp_server.messages] == [tenant.owner.email] * 2


def test_a_mail_server_that_is_down_never_fails_the_job(
    api: AnnotationApi, override_arbiter_settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    override_arbiter_settings(ARBITER_EMAIL_URL="smtp://127.0.0.1:9?timeout=1")
    dataset = api.dataset(comments_csv(4))
    api.schema(dataset["id"])
    with django_capture_on_commit_callbacks(execute=True, using="annotation"):
        job = api.job(dataset["id"], rows="all")
    assert job["state"] == "completed"


def test_a_wrong_email_url_stops_start_up_naming_the_variable(override_arbiter_settings: Any) -> None:
    from arbiter.config.typed_settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="ARBITER_EMAIL_URL"):
        load_settings({"ARBITER_EMAIL_URL": "pigeon://coop"})
