"""README.md's "Configuration" table and the typed settings list the same environment variables."""

from __future__ import annotations

import re

from arbiter.config.services import ALL_SERVICES
from arbiter.config.typed_settings import all_variables
from arbiter.testing.plugin import REPO_ROOT

# One row stands for the six per-service database URLs.
PATTERNS = {"DATABASE_URL_<SERVICE>": tuple(f"DATABASE_URL_{service.upper()}" for service in ALL_SERVICES)}


def documented_variables() -> set[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, "README.md's Configuration section has no table rows"
    names: set[str] = set()
    for row in rows:
        first_column = row.split("|")[1]
        for name in re.findall(r"`([^`]+)`", first_column):
            names.update(PATTERNS.get(name, (name,)))
    return names


def test_every_setting_is_in_the_readme_table() -> None:
    missing = sorted(set(all_variables()) - documented_variables())
    assert not missing, f"add these variables to README.md's Configuration table: {missing}"


def test_the_readme_table_names_only_real_settings() -> None:
    unknown = sorted(documented_variables() - set(all_variables()))
    assert not unknown, f"README.md's Configuration table lists variables no setting reads: {unknown}"
