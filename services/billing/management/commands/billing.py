from __future__ import annotations

import signal
import threading
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from arbiter.api.errors import ApiError
from arbiter.tenancy.models import Org
from arbiter.tenancy.scoping import org_scope
from services.billing import logic, payments

MAX_BACKOFF_S = 300.0


class Command(BaseCommand):
    help = (
        "Billing: `plan ORG PLAN` puts an org on a plan (at once); `refresh [--every SECONDS]` announces every "
        "org's entitlements (the heartbeat `arbiter up` keeps running, every ARBITER_BILLING_REFRESH_SECONDS); "
        "`report [--every SECONDS]` sends the ledger's usage to Stripe when STRIPE_API_KEY is set."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        commands = parser.add_subparsers(dest="command", required=True)
        plan = commands.add_parser("plan", help="put an org on a plan")
        plan.add_argument("org", help="the org's slug")
        plan.add_argument("plan", help="one of the configured plans")
        refresh = commands.add_parser("refresh", help="announce every org's entitlements")
        refresh.add_argument("--every", type=float, default=0, help="again every N seconds until stopped")
        report = commands.add_parser(
            "report", help="send usage to Stripe as meter events (with STRIPE_API_KEY)"
        )
        report.add_argument("--every", type=float, default=0, help="again every N seconds until stopped")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["command"] == "plan":
            self._plan(options["org"], options["plan"])
        elif options["command"] == "report":
            self._report(options["every"])
        else:
            self._refresh(options["every"])

    def _plan(self, slug: str, plan: str) -> None:
        org = Org.objects.filter(slug=slug).first()
        if org is None:
            raise CommandError(f"no org with the slug '{slug}'")
        try:
            with org_scope(org.pk):
                account = logic.plan_set(org_id=org.pk, plan=plan)
        except ApiError as error:
            raise CommandError(error.message) from None
        self.stdout.write(f"{slug} is on the {account.plan} plan.")

    def _refresh(self, every: float) -> None:
        stop = threading.Event()
        if every > 0:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        while True:
            count = logic.entitlements_refresh()
            self.stdout.write(f"Announced the entitlements of {count} orgs.")
            connections.close_all()
            if every <= 0 or stop.wait(every):
                return

    def _report(self, every: float) -> None:
        """Rounds of reporting; Stripe unreachable or throttling: the next round waits twice as long (to 5 min)."""
        stop = threading.Event()
        if every > 0:
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            signal.signal(signal.SIGINT, lambda *_: stop.set())
        delay = every
        while True:
            stripe_client = payments.client()
            if stripe_client is None:
                self.stdout.write("Stripe is not configured (STRIPE_API_KEY): nothing to report.")
            else:
                try:
                    result = payments.report_round(stripe_client=stripe_client)
                    self.stdout.write(
                        f"Sent {result.sent} usage reports to Stripe; it refused {result.refused}."
                    )
                    delay = every
                except payments.StripeUnavailable as error:
                    delay = min(max(delay, 1.0) * 2, MAX_BACKOFF_S)
                    self.stderr.write(f"Stripe is unavailable ({error}); trying again in {delay:.0f} s.")
                    if every <= 0:
                        raise CommandError(str(error)) from None
            if every <= 0:
                return
            connections.close_all()
            if stop.wait(delay if stripe_client is not None else max(every, 60)):
                return
