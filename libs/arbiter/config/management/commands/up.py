from __future__ import annotations

import json
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from arbiter.config import nginx
from arbiter.config.management.commands.migrate_services import migrate_enabled_services
from arbiter.config.supervisor import Child, Supervisor
from arbiter.config.typed_settings import arbiter_settings
from arbiter.events.broker import ensure_broker, free_loopback_port
from arbiter.events.handlers import handlers_for
from arbiter.events.registry import EVENT_TYPES

DEMO_ORG = "demo"
DEMO_EMAIL = "admin@example.com"


def _demo_credentials() -> dict[str, str] | None:
    """Create the demo org and admin on the first run; remember the credentials locally for later runs."""
    if "gateway" not in settings.ARBITER_SERVICES:
        return None
    path = Path(settings.ARBITER_HOME) / "demo.json"
    if path.exists():
        return dict(json.loads(path.read_text()))
    from arbiter.tenancy.logic import org_bootstrap
    from arbiter.tenancy.scoping import org_scope

    result = org_bootstrap(slug=DEMO_ORG, email=DEMO_EMAIL)
    for service in settings.ARBITER_SERVICES:
        # A service may offer demo content (e.g. the example dataset) in `services/<svc>/demo.py`.
        try:
            demo = import_module(f"services.{service}.demo")
        except ModuleNotFoundError:
            continue
        with org_scope(result.org.pk):
            demo.seed_demo(org_id=result.org.pk)
    credentials = {
        "org": result.org.slug,
        "email": result.email,
        "password": result.password,
        "api_key": result.api_key,
    }
    path.write_text(json.dumps(credentials))
    path.chmod(0o600)
    return credentials


class Command(BaseCommand):
    help = "Run Arbiter locally: migrate, then web and every background process of the enabled services."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bind", default=arbiter_settings().web.bind)
        parser.add_argument(
            "--split",
            action="store_true",
            help="each service in its own processes behind nginx (the local mirror of the Helm chart)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        Path(settings.ARBITER_HOME).mkdir(parents=True, exist_ok=True)
        if options["split"] and nginx.nginx_binary() is None:
            raise CommandError(nginx.INSTALL_HINT)
        migrate_enabled_services(verbosity=0)
        credentials = _demo_credentials()
        # Without KAFKA_BOOTSTRAP_SERVERS this starts the embedded broker and exports its address to the children.
        broker = ensure_broker(log_path=Path(settings.ARBITER_HOME) / "broker.log")
        children = (
            self._split_children(options["bind"]) if options["split"] else self._children(options["bind"])
        )
        url = f"http://{options['bind']}"
        self.stdout.write(f"Arbiter is starting at {url}/console/  (API docs: {url}/api/docs/)")
        if options["split"]:
            self.stdout.write(
                "Split mode: nginx on "
                + options["bind"]
                + " routes to "
                + ", ".join(f"{c.name} ({c.address})" for c in children if c.address)
            )
        if credentials:
            self.stdout.write(
                f"Demo sign-in: {credentials['email']} / {credentials['password']}  (org '{credentials['org']}')\n"
                f"Demo API key: {credentials['api_key']}"
            )
        self.stdout.write(
            f"Events: Kafka at {broker.bootstrap_servers if broker else arbiter_settings().events.bootstrap_servers}"
            + (f" (embedded broker, storage {broker.storage})" if broker else "")
        )
        self.stdout.write("Press Ctrl-C to stop.")
        self.stdout.flush()
        try:
            code = Supervisor(children).run()
        finally:
            if broker is not None:
                broker.stop()  # after the children: consumers finish against a live broker
        sys.exit(code)

    @staticmethod
    def _children(bind: str) -> list[Child]:
        """Every enabled service in one web process, one relay and one consumer process."""
        children = [
            Child("web", [*ARBITER, "serve", "--bind", bind]),
            Child("relay", [*ARBITER, "relay"]),
            Child("consume", [*ARBITER, "consume"]),
        ]
        return children + _service_workers(settings.ARBITER_SERVICES)

    @staticmethod
    def _split_children(bind: str) -> list[Child]:
        """As the Helm chart deploys it: per service a web process (only that service's URLs, apps and
        database), its relay and its consumers, each with ARBITER_SERVICES naming that service alone; nginx
        in front routes by the route table."""
        children: list[Child] = []
        upstreams: dict[str, str] = {}
        for service in settings.ARBITER_SERVICES:
            alone = {"ARBITER_SERVICES": service}
            address = f"127.0.0.1:{free_loopback_port()}"
            upstreams[service] = address
            children.append(
                Child(f"{service}-web", [*ARBITER, "serve", "--bind", address], alone, address=address)
            )
            if any(et.producer == service for et in EVENT_TYPES.values()):
                children.append(Child(f"{service}-relay", [*ARBITER, "relay"], alone))
            if handlers_for(service):
                children.append(Child(f"{service}-consume", [*ARBITER, "consume"], alone))
            children += _service_workers((service,), env=alone)
        command, _ = nginx.prepare(
            prefix=Path(settings.ARBITER_HOME) / "nginx",
            listen=bind,
            upstreams=upstreams,
            max_body_bytes=settings.ARBITER_MAX_UPLOAD_BYTES,
        )
        return [*children, Child("nginx", command)]


ARBITER = [sys.executable, "-m", "arbiter.cli"]


def _service_workers(services: tuple[str, ...], env: dict[str, str] | None = None) -> list[Child]:
    """The long-running helpers some services have besides web, relay and consumers."""
    children = []
    if "gateway" in services:
        # Webhook deliveries: due attempts are read from the gateway's database, so a restart resumes them.
        children.append(Child("webhooks", [*ARBITER, "webhooks", "deliver"], dict(env or {})))
    if "dataset" in services:
        # Dataset jobs run in the web process that accepted them; this settles those a stopped process left.
        children.append(Child("jobs", [*ARBITER, "dataset_jobs_recover", "--every", "60"], dict(env or {})))
    if "annotation" in services:
        # Auto-labeling jobs run in the web process that accepted them; this resumes those a stopped one left.
        children.append(
            Child("labeling", [*ARBITER, "annotation_jobs_recover", "--every", "60"], dict(env or {}))
        )
    if "training" in services:
        children.append(Child("operator", [*ARBITER, "operator"], dict(env or {})))
    if "billing" in services:
        # The heartbeat that keeps paid plans valid at the edge and starts each period afresh.
        every = str(int(arbiter_settings().billing.refresh_seconds))
        children.append(Child("billing", [*ARBITER, "billing", "refresh", "--every", every], dict(env or {})))
        # Usage to Stripe as meter events (idle without STRIPE_API_KEY); a restart resends what is unsent.
        children.append(Child("stripe", [*ARBITER, "billing", "report", "--every", "60"], dict(env or {})))
    if "inference" in services:
        children.append(
            Child("purge", [*ARBITER, "inference_purge_request_logs", "--every", "60"], dict(env or {}))
        )
        # Batches run a chunk per transaction, outside the consumers: progress shows and cancelling stops them.
        children.append(Child("batches", [*ARBITER, "inference_batches", "--every", "1"], dict(env or {})))
    return children
