"""Usage is written by group commit: concurrent calls share a transaction, each returns only once committed."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence

import pytest
from django.db import connections

from arbiter.events.models import OutboxEvent
from arbiter.groupcommit import GroupCommit
from arbiter.testing.tenants import Tenant
from services.inference import logic
from services.inference.models import Meter, UsageDay


def test_callers_arriving_during_a_write_share_the_next_one_and_return_after_it():
    entered, release = threading.Event(), threading.Event()
    written: list[list[int]] = []

    def write(items: Sequence[int]) -> None:
        written.append(list(items))
        if len(written) == 1:
            entered.set()
            release.wait(5)

    group: GroupCommit[int] = GroupCommit(write)
    returned: list[int] = []
    leader = threading.Thread(target=lambda: (group.submit(0), returned.append(0)))
    leader.start()
    assert entered.wait(5)
    followers = [
        threading.Thread(target=lambda i=i: (group.submit(i), returned.append(i))) for i in range(1, 9)
    ]
    for thread in followers:
        thread.start()
    while len(group._queue) < 8:  # every follower is queued behind the leader's write
        threading.Event().wait(0.01)
    assert returned == []  # nobody is told "done" before its write happened
    release.set()
    for thread in [leader, *followers]:
        thread.join(5)
    assert written[0] == [0] and sorted(written[1]) == list(range(1, 9)) and len(written) == 2
    assert sorted(returned) == list(range(9))
    assert (group.groups, group.items) == (2, 9)


def test_under_concurrency_a_leader_lingers_for_company_and_a_lone_caller_writes_at_once():
    written: list[list[str]] = []
    entered, release = threading.Event(), threading.Event()

    def write(items: Sequence[str]) -> None:
        written.append(list(items))
        if items == ["first"]:
            entered.set()
            release.wait(5)

    group: GroupCommit[str] = GroupCommit(write, linger_s=60.0)
    # A lone caller (no group before it held several items) does not linger: it would take a minute.
    lone = threading.Thread(target=group.submit, args=("lone",))
    lone.start()
    lone.join(10)
    assert not lone.is_alive() and written == [["lone"]]
    # Two callers queued behind a write make a group of two: callers are concurrent from then on.
    first = threading.Thread(target=group.submit, args=("first",))
    first.start()
    assert entered.wait(5)
    pair = [threading.Thread(target=group.submit, args=(name,)) for name in ("a", "b")]
    for thread in pair:
        thread.start()
    while len(group._queue) < 2:
        threading.Event().wait(0.01)
    group._linger_s = 1.0  # the next leader waits a second for company
    release.set()
    for thread in [first, *pair]:
        thread.join(5)
    assert written[1:] == [["first"], ["a", "b"]]
    late = [threading.Thread(target=group.submit, args=(name,)) for name in ("c", "d", "e")]
    for thread in late:
        thread.start()
        threading.Event().wait(0.05)  # arriving one after another, well within the leader's linger
    for thread in late:
        thread.join(10)
    assert written[3:] == [["c", "d", "e"]]  # one commit for the three, not three


def test_a_failed_write_fails_every_caller_of_its_group_and_the_next_group_goes_on():
    attempts: list[list[str]] = []

    def write(items: Sequence[str]) -> None:
        attempts.append(list(items))
        if "bad" in items:
            raise RuntimeError("the database went away")

    group: GroupCommit[str] = GroupCommit(write)
    with pytest.raises(RuntimeError, match="went away"):
        group.submit("bad")
    group.submit("good")
    assert attempts == [["bad"], ["good"]]


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_concurrent_classify_usage_is_counted_once_each_in_fewer_transactions(tenant: Tenant):
    caller = logic.Caller(org_id=tenant.org.pk, api_key_id=None, user_id=7)
    before = logic._usage_group.groups

    def call(units: int) -> None:
        try:
            record(units)
        finally:
            connections.close_all()  # this thread's connections end with it

    def record(units: int) -> None:
        for _ in range(10):
            logic.usage_record(
                meter=Meter.CLASSIFICATION,
                caller=caller,
                endpoint="classify",
                units=units,
                model_id=3,
                version=1,
                deployment=None,
                logged=None,
            )

    threads = [threading.Thread(target=call, args=(units,)) for units in range(1, 17)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    day = UsageDay.objects.unscoped().get(org_id=tenant.org.pk, model_id=3)
    assert (day.requests, day.units) == (160, 10 * sum(range(1, 17)))
    events = OutboxEvent.objects.using("inference").filter(type="usage.recorded")
    data = [json.loads(event.payload)["data"] for event in events]
    assert sum(d["units"] for d in data) == day.units
    assert sum(d.get("requests", 1) for d in data) == 160
    assert len(data) < 160  # calls that overlapped were announced together...
    assert logic._usage_group.groups - before < 160  # ...and committed together


def test_the_usage_commits_linger_is_the_setting_read_when_a_group_is_led(override_arbiter_settings) -> None:
    from services.inference.logic import _usage_group

    assert callable(_usage_group._linger_s) and _usage_group._linger_s() == 0.004  # the default: 4 ms
    override_arbiter_settings(ARBITER_INFERENCE_USAGE_LINGER_MS="0")
    assert _usage_group._linger_s() == 0.0  # operators can turn it off without a restart of the code


@pytest.mark.django_db(databases="__all__")
def test_insert_rows_stores_what_the_orm_stores(tenant: Tenant) -> None:
    """The usage write's prepared INSERT: defaults, JSON, times and nulls read back as the ORM's own row does."""
    from datetime import UTC, datetime

    from arbiter.sql import insert_rows
    from services.inference.models import RequestLogEntry

    at = datetime(2026, 12, 7, 10, 30, 15, 123456, tzinfo=UTC)
    prediction = {
        "toxicity": {"labels": ["toxic"], "flagged": True},
        "topic": {"labels": [], "flagged": False},
    }
    row = {"org_id": tenant.org.pk, "deployment_id": 7, "created_at": at, "endpoint": "classify"}
    insert_rows(
        RequestLogEntry,
        [{**row, "api_key_id": None, "text": "é 🤡", "prediction": prediction}],
        using=logic.ALIAS,
    )
    RequestLogEntry.objects.unscoped().create(**row, api_key_id=3, text="orm", prediction=prediction)
    mine, orm = RequestLogEntry.objects.unscoped().filter(deployment_id=7).order_by("id")
    assert (mine.created_at, mine.prediction, mine.text, mine.api_key_id) == (at, prediction, "é 🤡", None)
    assert (mine.created_at, mine.prediction) == (orm.created_at, orm.prediction)

    before = OutboxEvent.objects.using(logic.ALIAS).count()
    insert_rows(
        OutboxEvent,
        [{"event_id": "e-1", "type": "t", "topic": "x", "key": "1", "payload": "{}"}],
        using=logic.ALIAS,
    )
    event = OutboxEvent.objects.using(logic.ALIAS).get(event_id="e-1")
    assert OutboxEvent.objects.using(logic.ALIAS).count() == before + 1
    assert (event.sent_at, event.attempts, event.last_error) == (None, 0, "")  # the model's defaults
    assert abs((event.created_at - datetime.now(UTC)).total_seconds()) < 60
