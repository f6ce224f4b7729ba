from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from arbiter.config.routes import DEFAULT_SERVICE, PAGES, ROUTES, routes_by_precedence


class Command(BaseCommand):
    help = "Print the route table: which service owns which paths (as the path router tries them)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--helm", action="store_true", help="as the chart's `ingress.routes` values")
        parser.add_argument("--pages", action="store_true", help="the console pages and their services")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["helm"]:
            self.stdout.write("  routes:")
            for route in ROUTES:
                self.stdout.write(f'    - {{path: "{route.path}", service: {route.service}}}')
        elif options["pages"]:
            for name, page in PAGES.items():
                self.stdout.write(f"{page.service:<10} /{page.route:<60} {name}")
        else:
            for route in routes_by_precedence():
                self.stdout.write(f"{route.service:<10} ^{route.path}")
            self.stdout.write(f"{DEFAULT_SERVICE:<10} (everything else)")
