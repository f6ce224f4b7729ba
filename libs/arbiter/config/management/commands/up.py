from __future__ import annotations

import json
import sys
from importlib import import_module
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from arbiter.config.management.commands.migrate_services import migrate_enabled_services
from arbiter.config.supervisor import Child, Supervisor
from arbiter.config.typed_settings import arbiter_settings
from arbiter.events.broker import ensure_broker

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

    def handle(self, *args: Any, **options: Any) -> None:
        Path(settings.ARBITER_HOME).mkdir(parents=True, exist_ok=True)
        migrate_enabled_services(verbosity=0)
        credentials = _demo_credentials()
        # Without KAFKA_BOOTSTRAP_SERVERS this starts the embedded broker and exports its address to the children.
        broker = ensure_broker(log_path=Path(settings.ARBITER_HOME) / "broker.log")
        arbiter = [sys.executable, "-m", "arbiter.cli"]
        children = [
            Child("web", [*arbiter, "serve", "--bind", options["bind"]]),
            Child("relay", [*arbiter, "relay"]),
            Child("consume", [*arbiter, "consume"]),
        ]
        if "training" in settings.ARBITER_SERVICES:
            children.append(Child("operator", [*arbiter, "operator"]))
        if "inference" in settings.ARBITER_SERVICES:
            children.append(Child("purge", [*arbiter, "inference_purge_request_logs", "--every", "3600"]))
        url = f"http://{options['bind']}"
        self.stdout.write(f"Arbiter is starting at {url}/console/  (API docs: {url}/api/docs/)")
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
