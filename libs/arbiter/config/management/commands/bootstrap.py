from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from arbiter.tenancy.logic import org_bootstrap


class Command(BaseCommand):
    help = (
        "Create or reuse an org and its owner, and print JSON {org, email, password, api_key} for scripts. "
        "An existing user's password is reset to the printed one; a new all-scope key is issued each time."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True, help="org slug")
        parser.add_argument("--email", required=True)
        parser.add_argument("--password", default=None, help="password to set (default: a random one)")

    def handle(self, *args: Any, **options: Any) -> None:
        result = org_bootstrap(slug=options["org"], email=options["email"], password=options["password"])
        self.stdout.write(
            json.dumps(
                {
                    "org": result.org.slug,
                    "email": result.email,
                    "password": result.password,
                    "api_key": result.api_key,
                }
            )
        )
