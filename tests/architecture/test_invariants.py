"""Repository invariants: rules of the architecture, checked as tests."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from arbiter.config.services import ALL_SERVICES

REPO = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend(
                [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
            )
    return found


def test_no_service_imports_another_service() -> None:
    violations = []
    for service in ALL_SERVICES:
        for path in (REPO / "services" / service).rglob("*.py"):
            for line, module in _imported_modules(path):
                parts = module.split(".")
                if parts[0] == "services" and len(parts) > 1 and parts[1] != service:
                    violations.append(f"{path.relative_to(REPO)}:{line} imports {module}")
                if module in ("services",) and "services" in module:
                    violations.append(f"{path.relative_to(REPO)}:{line} imports the services package")
    assert not violations, "services talk through events and HTTP, never imports:\n" + "\n".join(violations)


def test_the_kernel_does_not_import_services() -> None:
    violations = [
        f"{path.relative_to(REPO)}:{line} imports {module}"
        for path in (REPO / "libs" / "arbiter").rglob("*.py")
        if "testing" not in path.parts
        for line, module in _imported_modules(path)
        if module.split(".")[0] == "services"
    ]
    assert not violations, "\n".join(violations)


def _org_scoped_url_names(patterns: list[URLPattern | URLResolver], prefix: str = "") -> dict[str, str]:
    names: dict[str, str] = {}
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            names.update(_org_scoped_url_names(entry.url_patterns, route))
        elif "<slug:org>" in route or "<org>" in route or "<str:org>" in route:
            assert entry.name, f"org-scoped URL {route!r} needs a name so a cross-tenant test can cover it"
            names[entry.name] = route
    return names


def _cross_tenant_covered() -> set[str]:
    covered: set[str] = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        for match in re.finditer(r"cross_tenant\(([^)]*)\)", path.read_text()):
            covered.update(re.findall(r"[\"']([\w:.-]+)[\"']", match.group(1)))
    return covered


def test_every_org_scoped_url_has_a_cross_tenant_test() -> None:
    urls = _org_scoped_url_names(get_resolver().url_patterns)
    assert "member-list" in urls  # the walk itself works
    missing = {name: route for name, route in urls.items() if name not in _cross_tenant_covered()}
    assert not missing, (
        "these org-scoped URLs have no @pytest.mark.cross_tenant(...) test proving a victim org gets 404:\n"
        + "\n".join(f"  {name}: /{route}" for name, route in sorted(missing.items()))
    )


@pytest.mark.parametrize("path", sorted((REPO / "services").glob("*/")))
def test_every_service_has_the_same_shape(path: Path) -> None:
    if path.name.startswith("__"):
        return
    for part in ["apps.py", "models.py", "urls.py", "events.py", "migrations/__init__.py", "api/__init__.py"]:
        assert (path / part).exists(), f"services/{path.name}/{part} is missing"
