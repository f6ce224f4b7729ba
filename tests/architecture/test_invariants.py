"""Repository invariants: rules of the architecture, checked as tests."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
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


def _cross_tenant_markers(tree: ast.AST) -> list[ast.Call]:
    """`pytest.mark.cross_tenant(...)` calls used as decorators or in `pytestmark` (comments and strings that
    merely mention the marker do not count)."""
    calls = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "cross_tenant"
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "mark"
        ):
            calls.append(node)
    return calls


def _cross_tenant_covered() -> set[str]:
    """URL names claimed by cross-tenant markers. A claim is checked where it is made: the `cross_tenant_requests`
    fixture (arbiter.testing.cross_tenant) fails a marked test that never requests a URL its marker names."""
    covered: set[str] = set()
    for path in (REPO / "tests").rglob("test_*.py"):
        for call in _cross_tenant_markers(ast.parse(path.read_text(), filename=str(path))):
            for argument in call.args:
                assert isinstance(argument, ast.Constant) and isinstance(argument.value, str), (
                    f"{path.relative_to(REPO)}:{call.lineno}: cross_tenant takes URL names as string literals"
                )
                covered.add(argument.value)
    return covered


def test_every_org_scoped_url_has_a_cross_tenant_test(pytestconfig: pytest.Config) -> None:
    # Naming a URL in a marker counts only because marked tests must request it.
    assert pytestconfig.pluginmanager.has_plugin("arbiter.testing.cross_tenant")
    urls = _org_scoped_url_names(get_resolver().url_patterns)
    assert "member-list" in urls  # the walk itself works
    missing = {name: route for name, route in urls.items() if name not in _cross_tenant_covered()}
    assert not missing, (
        "these org-scoped URLs have no @pytest.mark.cross_tenant(...) test proving a victim org gets 404:\n"
        + "\n".join(f"  {name}: /{route}" for name, route in sorted(missing.items()))
    )


def test_a_cross_tenant_test_that_does_not_request_its_url_fails(tmp_path: Path) -> None:
    claims = tmp_path / "test_claims.py"
    claims.write_text(
        "import pytest\n\n"
        "@pytest.mark.cross_tenant('member-list')\n"
        "def test_claims_without_requesting():\n"
        "    pass\n"
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(claims),
            "-p",
            "arbiter.testing.plugin",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            "-c",
            os.devnull,
            "-q",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "arbiter.config.settings"},
        timeout=300,
    )
    assert run.returncode != 0, run.stdout
    assert "marked cross_tenant for member-list but never requests it" in run.stdout, run.stdout


@pytest.mark.parametrize("path", sorted((REPO / "services").glob("*/")))
def test_every_service_has_the_same_shape(path: Path) -> None:
    if path.name.startswith("__"):
        return
    for part in ["apps.py", "models.py", "urls.py", "events.py", "migrations/__init__.py", "api/__init__.py"]:
        assert (path / part).exists(), f"services/{path.name}/{part} is missing"
