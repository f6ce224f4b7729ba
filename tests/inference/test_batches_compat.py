"""OpenAI's batches API with the official `openai` client against a live Arbiter.

The input file goes to the dataset service (`files.create(purpose="batch")`), the batch to the inference
service; the events between them (`file.created`, `batch.created`, `batch.output_written`) are handed from
each outbox to the consumers' handlers as the consumer runners would (`Pump`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import openai
import pytest
from django.db import transaction
from mistralai.client import Mistral
from mistralai.client.errors import SDKError
from openai import OpenAI

from arbiter.config.services import db_alias
from arbiter.events.envelope import Event
from arbiter.events.handlers import handlers_for
from arbiter.events.models import OutboxEvent
from arbiter.events.registry import get_event_type
from arbiter.tenancy.scoping import org_scope
from arbiter.testing.tenants import Tenant
from services.inference.batches import batch_process, batches_work
from services.inference.models import Batch
from tests.inference.conftest import InferenceApi, published

pytestmark = pytest.mark.django_db(databases="__all__", transaction=True)

SERVICES = ("dataset", "inference")
INSULT, FRIENDLY, SPAM = "you are an idiot", "have a nice day", "buy cheap pills now"


class Pump:
    """Delivers the events the services publish from now on to their consumers' handlers, once each, and runs
    the batch worker's passes in between."""

    def __init__(self) -> None:
        self.seen = {
            row.event_id for producer in SERVICES for row in OutboxEvent.objects.using(db_alias(producer))
        }

    def __call__(self) -> None:
        while self.deliver() + self.work():
            pass

    def work(self, *, waited: float = 600) -> int:
        return batches_work(wait=timedelta(seconds=waited))

    def deliver(self) -> int:
        delivered = 0
        while True:
            before = delivered
            for producer in SERVICES:
                for row in OutboxEvent.objects.using(db_alias(producer)).order_by("id"):
                    if row.event_id in self.seen:
                        continue
                    self.seen.add(row.event_id)
                    delivered += 1
                    event = Event.from_json(row.payload)
                    event_type = get_event_type(event.type)
                    event_type.validate(event.data)
                    for consumer in set(event_type.consumers) & set(SERVICES):
                        handler = handlers_for(consumer).get(event.type)
                        if handler is not None:
                            with transaction.atomic(using=db_alias(consumer)), org_scope(event.org_id):
                                handler(event)
            if delivered == before:
                return delivered


@pytest.fixture
def moderator(api: InferenceApi, artifact_key: str) -> dict[str, Any]:
    trained = api.train(artifact_key, model_name="toxicity")
    return api.deploy({"model": trained["model_id"], "name": "moderator"})


@pytest.fixture
def pump(moderator: dict[str, Any]) -> Pump:
    return Pump()


@pytest.fixture
def openai_client(live_server: Any) -> Iterator[Callable[[str], OpenAI]]:
    clients: list[OpenAI] = []

    def make(key: str) -> OpenAI:
        clients.append(OpenAI(base_url=f"{live_server.url}/v1", api_key=key, max_retries=0))
        return clients[-1]

    yield make
    for client in clients:
        client.close()


def line(custom_id: str, body: dict[str, Any], url: str = "/v1/moderations") -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body})


def upload(client: OpenAI, lines: list[str], pump: Pump) -> str:
    file = client.files.create(file=("requests.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    assert file.purpose == "batch"
    pump()
    return file.id


def test_a_batch_of_moderations_completes_and_its_output_matches_single_calls(
    openai_client: Callable[[str], OpenAI], api: InferenceApi, pump: Pump
) -> None:
    client = openai_client(api.tenant.key(["admin"]))
    requests = {
        "insult": {"model": "moderator", "input": INSULT},
        "two": {"model": "moderator", "input": [FRIENDLY, SPAM]},
        "default-model": {"input": INSULT},
        "nobody": {"model": "no-such-model", "input": INSULT},
        "empty": {"model": "moderator", "input": []},
    }
    file_id = upload(client, [line(custom_id, body) for custom_id, body in requests.items()], pump)

    batch = client.batches.create(
        input_file_id=file_id,
        endpoint="/v1/moderations",
        completion_window="24h",
        metadata={"run": "nightly"},
    )
    assert batch.status == "validating" and batch.request_counts and batch.request_counts.total == 5
    assert batch.output_file_id is None and batch.metadata == {"run": "nightly"}
    assert client.batches.retrieve(batch.id).status == "validating"

    pump()
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.completed_at and done.in_progress_at
    assert done.request_counts and (done.request_counts.completed, done.request_counts.failed) == (3, 2)
    assert done.output_file_id and done.error_file_id

    output = [json.loads(text) for text in client.files.content(done.output_file_id).text.splitlines()]
    assert [item["custom_id"] for item in output] == ["insult", "two", "default-model"]
    for item in output:
        assert item["error"] is None and item["response"]["status_code"] == 200
        body = item["response"]["body"]
        single = client.moderations.create(**requests[item["custom_id"]]).model_dump(exclude_none=True)
        assert body["model"] == single["model"] == "moderator"
        assert len(body["results"]) == len(single["results"])
        for got, want in zip(body["results"], single["results"], strict=True):
            assert got["flagged"] == want["flagged"] and got["categories"] == want["categories"]
            # The int8 runtime quantizes activations per call, so a text scored among others moves a little.
            assert got["category_scores"] == pytest.approx(want["category_scores"], abs=0.02)
    assert output[0]["response"]["body"]["results"][0]["flagged"] is True

    errors = {
        item["custom_id"]: item
        for item in map(json.loads, client.files.content(done.error_file_id).text.splitlines())
    }
    assert set(errors) == {"nobody", "empty"}
    assert errors["nobody"]["response"] is None and "no-such-model" in errors["nobody"]["error"]["message"]
    assert "input" in errors["empty"]["error"]["message"]

    # The output is a file of the files API, with the purpose OpenAI gives it.
    assert client.files.retrieve(done.output_file_id).purpose == "batch_output"
    # Metered like single calls: the batch's 4 texts, then the 4 of the single calls above.
    usage = published("usage.recorded", endpoint="moderations")
    assert sum(event.data["units"] for event in usage) == 8

    listed = client.batches.list(limit=10)
    assert [item.id for item in listed.data] == [batch.id]
    with pytest.raises(openai.ConflictError, match="completed"):
        client.batches.cancel(batch.id)


def test_a_cancelled_batch_is_not_run(
    openai_client: Callable[[str], OpenAI], api: InferenceApi, pump: Pump
) -> None:
    client = openai_client(api.tenant.key(["admin"]))
    file_id = upload(client, [line("a", {"model": "moderator", "input": INSULT})], pump)
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/moderations", completion_window="24h")
    assert client.batches.cancel(batch.id).status == "cancelling"
    pump()
    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.output_file_id is None
    assert published("usage.recorded", endpoint="moderations") == []


def test_batch_errors_are_sdk_errors_naming_the_problem(
    openai_client: Callable[[str], OpenAI], api: InferenceApi, pump: Pump, victim: Tenant
) -> None:
    client = openai_client(api.tenant.key(["admin"]))
    good = upload(client, [line("a", {"model": "moderator", "input": INSULT})], pump)

    with pytest.raises(openai.NotFoundError, match="no-such-file"):
        client.batches.create(
            input_file_id="no-such-file", endpoint="/v1/moderations", completion_window="24h"
        )
    broken = upload(client, [line("a", {"input": INSULT}), '{"custom_id": "b", "body": ', "[1]"], pump)
    with pytest.raises(openai.BadRequestError, match="line 2 is not valid JSON"):
        client.batches.create(input_file_id=broken, endpoint="/v1/moderations", completion_window="24h")
    wrong_url = upload(client, [line("a", {"input": INSULT}, url="/v1/chat/completions")], pump)
    with pytest.raises(openai.BadRequestError, match="line 1: url must be the batch's endpoint"):
        client.batches.create(input_file_id=wrong_url, endpoint="/v1/moderations", completion_window="24h")
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        client.batches.create(input_file_id=good, endpoint="/v1/moderations", completion_window="1h")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        client.batches.create(input_file_id=good, endpoint="/v1/embeddings", completion_window="24h")
    assert client.batches.list().data == []

    # Another org neither uses this org's file nor sees its batch.
    batch = client.batches.create(input_file_id=good, endpoint="/v1/moderations", completion_window="24h")
    thief = openai_client(victim.key(["admin"]))
    with pytest.raises(openai.NotFoundError, match=good):
        thief.batches.create(input_file_id=good, endpoint="/v1/moderations", completion_window="24h")
    with pytest.raises(openai.NotFoundError, match=batch.id):
        thief.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        thief.batches.cancel(batch.id)
    assert thief.batches.list().data == []


def test_a_mistral_batch_job_classifies_its_files_with_the_jobs_model(
    live_server: Any, api: InferenceApi, pump: Pump, victim: Tenant
) -> None:
    with Mistral(api_key=api.tenant.key(["admin"]), server_url=live_server.url) as client:
        lines = [
            json.dumps({"custom_id": "insult", "body": {"input": [INSULT]}}),
            json.dumps({"body": {"input": SPAM}}),
        ]
        file = client.files.upload(
            file={"file_name": "requests.jsonl", "content": ("\n".join(lines) + "\n").encode()},
            purpose="batch",
        )
        pump()
        job = client.batch.jobs.create(
            input_files=[file.id], endpoint="/v1/classifications", model="moderator"
        )
        assert job.status == "QUEUED" and job.total_requests == 2 and job.model == "moderator"
        pump()
        done = client.batch.jobs.get(job_id=job.id)
        assert done.status == "SUCCESS" and done.succeeded_requests == 2 and done.failed_requests == 0
        assert done.output_file and not done.error_file
        output = [
            json.loads(text) for text in client.files.download(file_id=done.output_file).read().splitlines()
        ]
        assert [item["custom_id"] for item in output] == ["insult", "1"]
        insult, spam = (item["response"]["body"]["results"][0] for item in output)
        assert insult["toxicity"]["scores"]["toxic"] > 0.5 and spam["topic"]["scores"]["spam"] > 0.5
        assert [j.id for j in client.batch.jobs.list().data or []] == [job.id]

        with pytest.raises(SDKError) as unknown:
            client.batch.jobs.create(input_files=["nope"], endpoint="/v1/classifications", model="moderator")
        assert unknown.value.status_code == 404 and "nope" in unknown.value.body

    with Mistral(api_key=victim.key(["admin"]), server_url=live_server.url) as thief:
        with pytest.raises(SDKError) as hidden:
            thief.batch.jobs.get(job_id=job.id)
        assert hidden.value.status_code == 404
        assert thief.batch.jobs.list().total == 0


def test_a_batch_created_right_after_the_upload_waits_for_its_file(
    openai_client: Callable[[str], OpenAI], api: InferenceApi, pump: Pump
) -> None:
    client = openai_client(api.tenant.key(["admin"]))
    content = (line("a", {"model": "moderator", "input": INSULT}) + "\n").encode()
    # Created before `file.created` reached the inference service: accepted, waiting for the file.
    file = client.files.create(file=("requests.jsonl", content), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint="/v1/moderations", completion_window="24h")
    assert batch.status == "validating" and batch.request_counts and batch.request_counts.total == 0
    assert pump.work() == 0  # nothing to run yet: the file has not arrived
    pump()
    done = client.batches.retrieve(batch.id)
    assert done.status == "completed" and done.request_counts and done.request_counts.completed == 1

    # A broken file that arrives late fails the batch naming the line; a file that never arrives, naming it.
    broken = client.files.create(file=("broken.jsonl", b'{"custom_id": "a", "body": \n'), purpose="batch")
    late = client.batches.create(input_file_id=broken.id, endpoint="/v1/moderations", completion_window="24h")
    never = "0b7c1d2e-0000-4000-8000-000000000000"
    lost = client.batches.create(input_file_id=never, endpoint="/v1/moderations", completion_window="24h")
    pump()
    failed = client.batches.retrieve(late.id)
    assert failed.status == "failed" and failed.errors and failed.errors.data
    assert "line 1 is not valid JSON" in (failed.errors.data[0].message or "")
    assert client.batches.retrieve(lost.id).status == "validating"
    pump.work(waited=0)
    gone = client.batches.retrieve(lost.id)
    assert gone.status == "failed" and gone.errors and gone.errors.data
    assert f"no batch file with id '{never}' reached the inference service" in (
        gone.errors.data[0].message or ""
    )


def test_a_running_batch_shows_its_progress_and_a_cancelled_one_keeps_its_answers(
    openai_client: Callable[[str], OpenAI],
    api: InferenceApi,
    pump: Pump,
    override_arbiter_settings: Any,
) -> None:
    override_arbiter_settings(ARBITER_INFERENCE_MAX_INPUTS=2)  # two texts per chunk (per transaction)
    client = openai_client(api.tenant.key(["admin"]))
    texts = [INSULT, FRIENDLY, SPAM, INSULT, FRIENDLY, SPAM]
    file_id = upload(
        client, [line(f"r{i}", {"model": "moderator", "input": t}) for i, t in enumerate(texts)], pump
    )
    batch = client.batches.create(input_file_id=file_id, endpoint="/v1/moderations", completion_window="24h")
    row = Batch.objects.unscoped().get(public_id=batch.id)

    with org_scope(row.org_id):
        batch_process(batch_id=row.pk, max_chunks=1)  # start, and the first chunk
    running = client.batches.retrieve(batch.id)
    assert running.status == "in_progress" and running.in_progress_at
    assert running.request_counts and (running.request_counts.completed, running.request_counts.total) == (
        2,
        6,
    )
    with org_scope(row.org_id):
        batch_process(batch_id=row.pk, max_chunks=1)
    assert client.batches.retrieve(batch.id).request_counts.completed == 4  # type: ignore[union-attr]

    assert client.batches.cancel(batch.id).status == "cancelling"
    pump()
    cancelled = client.batches.retrieve(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelled_at
    assert cancelled.request_counts and cancelled.request_counts.completed == 4
    # What was answered before the cancel is the output; the rest was never classified (nor metered).
    assert cancelled.output_file_id and cancelled.error_file_id is None
    output = [json.loads(text) for text in client.files.content(cancelled.output_file_id).text.splitlines()]
    assert [item["custom_id"] for item in output] == ["r0", "r1", "r2", "r3"]
    assert sum(event.data["units"] for event in published("usage.recorded", endpoint="moderations")) == 4


def test_a_mistral_batch_job_takes_inline_requests(live_server: Any, api: InferenceApi, pump: Pump) -> None:
    with Mistral(api_key=api.tenant.key(["admin"]), server_url=live_server.url) as client:
        job = client.batch.jobs.create(
            requests=[{"custom_id": "insult", "body": {"input": INSULT}}, {"body": {"input": [FRIENDLY]}}],
            endpoint="/v1/moderations",
            model="moderator",
        )
        assert job.status == "QUEUED" and job.total_requests == 2 and job.input_files == []
        pump()
        done = client.batch.jobs.get(job_id=job.id)
        assert done.status == "SUCCESS" and done.succeeded_requests == 2 and done.output_file
        output = [
            json.loads(text) for text in client.files.download(file_id=done.output_file).read().splitlines()
        ]
        assert [item["custom_id"] for item in output] == ["insult", "1"]

        for requests, complaint in (
            (
                [{"custom_id": "a", "body": {"input": INSULT}}, {"custom_id": "a", "body": {"input": SPAM}}],
                "line 2: custom_id 'a' is not unique",
            ),
            ([], "requests: give a list"),
        ):
            with pytest.raises(SDKError) as bad:
                client.batch.jobs.create(requests=requests, endpoint="/v1/moderations", model="moderator")
            assert bad.value.status_code == 400 and complaint in bad.value.body
