"""The `arbiter` command: `up`, `serve`, `migrate`, `bootstrap`, and every Django management command."""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "arbiter.config.settings")
    if len(argv) > 1 and argv[1] == "serve":
        # `serve --services a,b` must pick the services before Django reads its settings.
        for i, arg in enumerate(argv):
            if arg == "--services" and i + 1 < len(argv):
                os.environ["ARBITER_SERVICES"] = argv[i + 1]
            elif arg.startswith("--services="):
                os.environ["ARBITER_SERVICES"] = arg.split("=", 1)[1]
    if len(argv) > 1 and argv[1] == "migrate":
        argv[1] = "migrate_services"
    from django.core.management import execute_from_command_line

    execute_from_command_line(argv)


if __name__ == "__main__":
    main()
