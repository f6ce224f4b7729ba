"""Killing the reporting worker (SIGKILL) after Stripe accepted a meter event but before the worker marked it sent
bills nothing twice: the restarted worker sends the report again with the same identifier, Stripe counts it
once, and Stripe's totals equal the ledger's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connections
from django.db.models import Sum

from arbiter.events.testing import wait_for
from arbiter.testing.tenants import Tenant
from services.billing.models import Account, LedgerEntry, MeterReport
from tests.billing.conftest import deliver, usage_event
from tests.billing.fake_stripe import running_fake_stripe

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, databases="__all__")]


def _url(alias: str) -> str:
    db = connections[alias].settings_dict
    host = f"{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{host}/{db['NAME']}"


def _environment(stripe_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "ARBITER_DB_NAME"))}
    env.update(
        DATABASE_URL=_url("default"),
        DATABASE_URL_BILLING=_url("billing"),
        ARBITER_SERVICES="billing",
        STRIPE_API_KEY="sk_test_arbiter",
        ARBITER_STRIPE_API_BASE=stripe_url,
        ARBITER_BILLING_REPORT_BATCH="2",
        ARBITER_LOG_LEVEL="ERROR",
    )
    return env


def test_a_worker_killed_mid_batch_is_resumed_and_stripe_counts_each_unit_once(tenant: Tenant) -> None:
    org = tenant.org.pk
    yesterday = datetime.now(UTC) - timedelta(days=1)
    for meter, units in (("classification", 40), ("playground", 3), ("training_minute", 7)):
        deliver(usage_event(org, meter, units))
        deliver(usage_event(org, meter, units + 1, when=yesterday))
    argv = [sys.executable, "-m", "arbiter.cli", "billing", "report", "--every", "0.2"]
    in_flight = threading.Event()
    release = threading.Event()
    accepted: list[dict[str, Any]] = []

    def stall(event: dict[str, Any]) -> None:
        accepted.append(event)
        if len(accepted) == 3:  # the second batch: Stripe has it, the worker never hears back
            in_flight.set()
            release.wait(30)

    with running_fake_stripe() as fake:
        fake.after_meter_event = stall
        env = _environment(fake.url)
        worker = subprocess.Popen(argv, env=env)
        try:
            assert in_flight.wait(60), "the worker never reached its second batch"
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            lost = MeterReport.objects.unscoped().get(identifier=accepted[2]["identifier"])
            assert lost.sent_at is None  # accepted by Stripe, not known as sent here
            assert MeterReport.objects.unscoped().filter(sent_at__isnull=False).count() == 2
            fake.after_meter_event = None
            release.set()
            worker = subprocess.Popen(argv, env=env)

            def settled() -> bool:
                return (
                    MeterReport.objects.unscoped().count() == 6
                    and not MeterReport.objects.unscoped().filter(sent_at__isnull=True).exists()
                )

            wait_for(settled, timeout_s=60)
        finally:
            release.set()
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)

    customer = Account.objects.unscoped().get(org_id=org).stripe_customer_id
    ledger = {
        (customer, f"arbiter_{row['meter']}"): int(row["units"])
        for row in LedgerEntry.objects.unscoped().values("meter").annotate(units=Sum("units"))
    }
    assert ledger == {
        (customer, "arbiter_classification"): 81,
        (customer, "arbiter_playground"): 7,
        (customer, "arbiter_training_minute"): 15,
    }
    assert fake.totals() == ledger
    assert len(fake.meter_events) == 6 == MeterReport.objects.unscoped().count()
    # The lost report was sent again and Stripe answered that it had it.
    assert fake.requests.count(("POST", "/v1/billing/meter_events")) == 7
    assert not LedgerEntry.objects.unscoped().filter(report__isnull=True).exists()
    assert len(fake.of("customer")) == 1
