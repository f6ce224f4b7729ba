"""Render the Helm charts offline (the Helm v4 SDK through `helm_python`) and look into what comes out."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "arbiter"
DEV_CHART = REPO_ROOT / "charts" / "arbiter-dev"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
DEV_VALUES = CHART / "ci" / "dev-values.yaml"
SERVICES = ("gateway", "dataset", "annotation", "training", "inference", "billing")

Manifest = dict[str, Any]


def helm() -> Any:
    """The helm_python module, or a skip when its native library cannot load here."""
    try:
        import helm_python

        helm_python.helm_c_version()
    # ImportError, OSError from ctypes, or the binding's HelmLibraryError: any of them means no Helm here.
    except Exception as exc:
        pytest.skip(f"the Helm library (helm-python-sdk) cannot load on this machine: {exc!r}")
    return helm_python


def load_values(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


# libyaml when present: the pure-Python loader takes a noticeable part of a second per rendering.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=32)
def _render_cached(chart: str, values_json: str, release: str, namespace: str) -> tuple[Manifest, ...]:
    with helm().Chart.load(chart) as loaded:
        rendered = loaded.render(json.loads(values_json), name=release, namespace=namespace, is_install=True)
    texts = [text for name, text in sorted(rendered.items()) if name.endswith((".yaml", ".yml"))]
    return tuple(doc for text in texts for doc in yaml.load_all(text, Loader=_Loader) if doc)


def render(
    values: dict[str, Any] | None = None,
    *,
    chart: Path = CHART,
    release: str = "arbiter",
    namespace: str = "moderation",
) -> list[Manifest]:
    """Every object the chart renders for these values (hooks included), as fresh dicts."""
    rendered = _render_cached(str(chart), json.dumps(values or {}, sort_keys=True), release, namespace)
    return copy.deepcopy(list(rendered))


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    matches = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: Manifest) -> dict[str, Any]:
    return dict(workload["spec"]["template"]["spec"])


def containers(workload: Manifest) -> list[dict[str, Any]]:
    return list(pod_spec(workload)["containers"])


def only_container(workload: Manifest) -> dict[str, Any]:
    found = containers(workload)
    assert len(found) == 1, f"{workload['metadata']['name']} has {len(found)} containers"
    return found[0]


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def secret_env(container: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """{variable: (secret name, key)} for every variable read from a Secret."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def workloads(manifests: list[Manifest]) -> Iterator[Manifest]:
    for manifest in manifests:
        if manifest["kind"] in ("Deployment", "Job"):
            yield manifest


def deployments_of(manifests: list[Manifest], process: str) -> dict[str, Manifest]:
    """{service: Deployment} for one kind of process (web, relay, consumer, operator)."""
    return {
        d["metadata"]["labels"]["arbiter.io/service"]: d
        for d in of_kind(manifests, "Deployment")
        if d["metadata"]["labels"].get("arbiter.io/process") == process
    }


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())
