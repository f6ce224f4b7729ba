from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from arbiter.api.errors import ApiError
from arbiter.config.periodic import every_argument, repeat
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
        every_argument(refresh)
        report = commands.add_parser(
            "report", help="send usage to Stripe as meter events (with STRIPE_API_KEY)"
        )
        every_argument(report)

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
        def refresh() -> None:
            self.stdout.write(f"Announced the entitlements of {logic.entitlements_refresh()} orgs.")

        repeat(every, refresh)

    def _report(self, every: float) -> None:
        """Rounds of reporting; Stripe unreachable or throttling: the next round waits twice as long (to 5 min)."""
        delay = every

        def report() -> float:
            nonlocal delay
            stripe_client = payments.client()
            if stripe_client is None:
                self.stdout.write("Stripe is not configured (STRIPE_API_KEY): nothing to report.")
                return max(every, 60)
            try:
                result = payments.report_round(stripe_client=stripe_client)
                self.stdout.write(f"Sent {result.sent} usage reports to Stripe; it refused {result.refused}.")
                delay = every
            except payments.StripeUnavailable as error:
                delay = min(max(delay, 1.0) * 2, MAX_BACKOFF_S)
                self.stderr.write(f"Stripe is unavailable ({error}); trying again in {delay:.0f} s.")
                if every <= 0:
                    raise CommandError(str(error)) from None
            return delay

        repeat(every, report)
