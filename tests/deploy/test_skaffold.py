"""skaffold.yaml and the development chart: `skaffold dev` builds one image and gets a working install."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.deploy.charts import (
    REPO_ROOT,
    SERVICES,
    Manifest,
    containers,
    deployments_of,
    literal_env,
    load_values,
    named,
    of_kind,
    only_container,
    render,
    secret_env,
    selects,
    workloads,
)

SKAFFOLD = REPO_ROOT / "skaffold.yaml"
BUILT_REPO = "registry.local/arbiter"
BUILT_TAG = "4f2c9e1d"


@pytest.fixture(scope="module")
def skaffold() -> dict[str, Any]:
    return dict(yaml.safe_load(SKAFFOLD.read_text()))


def releases(skaffold: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {release["name"]: release for release in skaffold["deploy"]["helm"]["releases"]}


def release_values(release: dict[str, Any], artifact: str) -> dict[str, Any]:
    """The values Helm receives from skaffold once the image is built: values files, then the --set pairs."""
    values: dict[str, Any] = {}
    for path in release.get("valuesFiles", []):
        values.update(load_values(REPO_ROOT / path))
    built = {f"{{{{.IMAGE_REPO_{artifact}}}}}": BUILT_REPO, f"{{{{.IMAGE_TAG_{artifact}}}}}": BUILT_TAG}
    for dotted, template in release.get("setValueTemplates", {}).items():
        *parents, leaf = dotted.split(".")
        node = values
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = built.get(template, template)
    return values


def rendered_release(skaffold: dict[str, Any], name: str) -> list[Manifest]:
    release = releases(skaffold)[name]
    artifact = re.sub(r"[/-]", "_", skaffold["build"]["artifacts"][0]["image"])
    return render(
        release_values(release, artifact),
        chart=REPO_ROOT / release["chartPath"],
        release=release["name"],
        namespace=release["namespace"],
    )


def test_skaffold_uses_a_current_schema_and_builds_the_dockerfile(skaffold: dict[str, Any]) -> None:
    assert skaffold["apiVersion"] == "skaffold/v4beta14"
    assert skaffold["kind"] == "Config"
    [artifact] = skaffold["build"]["artifacts"]
    assert (REPO_ROOT / artifact.get("context", ".") / artifact["docker"]["dockerfile"]).is_file()


def test_every_release_gets_the_image_skaffold_built(skaffold: dict[str, Any]) -> None:
    artifact = skaffold["build"]["artifacts"][0]["image"]
    for name, release in releases(skaffold).items():
        assert (REPO_ROOT / release["chartPath"] / "Chart.yaml").is_file(), name
        assert release["setValueTemplates"] == {
            "image.repository": f"{{{{.IMAGE_REPO_{artifact}}}}}",
            "image.tag": f"{{{{.IMAGE_TAG_{artifact}}}}}",
        }, name
        images = {c["image"] for w in workloads(rendered_release(skaffold, name)) for c in containers(w)}
        # Besides Arbiter's own image, only the third-party servers the chart names (PostgreSQL, Kafka).
        chart_values = load_values(REPO_ROOT / release["chartPath"] / "values.yaml").values()
        third_party = {
            v["image"] for v in chart_values if isinstance(v, dict) and isinstance(v.get("image"), str)
        }
        assert images - third_party == {f"{BUILT_REPO}:{BUILT_TAG}"}, name


def test_arbiter_waits_for_its_backing_services(skaffold: dict[str, Any]) -> None:
    # The migration hook connects to PostgreSQL before any Arbiter pod exists.
    by_name = releases(skaffold)
    assert by_name["arbiter"]["dependsOn"] == ["arbiter-dev"]
    assert by_name["arbiter-dev"]["wait"] is True
    assert by_name["arbiter"]["namespace"] == by_name["arbiter-dev"]["namespace"]


def test_dev_chart_objects_are_valid_for_kubernetes(
    skaffold: dict[str, Any], validate_kubernetes: Callable[..., str]
) -> None:
    for manifest in rendered_release(skaffold, "arbiter-dev"):
        validate_kubernetes(manifest, "1.30", strict=True)


def test_every_secret_arbiter_reads_in_dev_exists_with_its_key(skaffold: dict[str, Any]) -> None:
    backing = rendered_release(skaffold, "arbiter-dev")
    secrets = {s["metadata"]["name"]: s["stringData"] for s in of_kind(backing, "Secret")}
    arbiter = rendered_release(skaffold, "arbiter")
    references = {ref for w in workloads(arbiter) for ref in secret_env(only_container(w)).values()}
    assert references
    for secret, key in references:
        assert key in secrets.get(secret, {}), f"{secret}/{key} is read by Arbiter but the dev chart lacks it"


def test_dev_settings_point_at_the_dev_backing_services(skaffold: dict[str, Any]) -> None:
    backing = rendered_release(skaffold, "arbiter-dev")
    services = of_kind(backing, "Service")
    ports = {(s["metadata"]["name"], p["port"]) for s in services for p in s["spec"]["ports"]}
    config = named(rendered_release(skaffold, "arbiter"), "ConfigMap", "arbiter-config")["data"]
    database_url = named(backing, "Secret", "arbiter-dev-database")["stringData"]["DATABASE_URL"]
    for url in (f"kafka://{config['KAFKA_BOOTSTRAP_SERVERS']}", config["AWS_ENDPOINT_URL_S3"], database_url):
        parts = urlsplit(url)
        assert (parts.hostname, parts.port) in ports, url
    # Each service's database `<name>_<service>` is created when PostgreSQL first starts.
    init = named(backing, "ConfigMap", "arbiter-dev-postgres-init")["data"]["01-service-databases.sql"]
    prefix = urlsplit(database_url).path.lstrip("/")
    assert sorted(re.findall(r"CREATE DATABASE (\w+);", init)) == sorted(f"{prefix}_{s}" for s in SERVICES)
    bucket = urlsplit(config["ARBITER_BLOB_STORE"]).netloc
    s3 = only_container(named(backing, "Deployment", "arbiter-dev-s3"))
    assert f'Bucket="{bucket}"' in s3["lifecycle"]["postStart"]["exec"]["command"][-1]


def test_port_forward_reaches_the_gateway(skaffold: dict[str, Any]) -> None:
    [forward] = skaffold["portForward"]
    arbiter = rendered_release(skaffold, "arbiter")
    assert forward["resourceType"] == "service"
    assert forward["namespace"] == releases(skaffold)["arbiter"]["namespace"]
    service = named(arbiter, "Service", forward["resourceName"])
    assert forward["port"] in [p["port"] for p in service["spec"]["ports"]]
    gateway = deployments_of(arbiter, "web")["gateway"]
    assert selects(service["spec"]["selector"], gateway["spec"]["template"]["metadata"]["labels"])
    # The console is then at http://localhost:<localPort>, which Arbiter must accept as host and origin.
    config = named(arbiter, "ConfigMap", "arbiter-config")["data"]
    assert config["ARBITER_PUBLIC_URL"] == f"http://localhost:{forward['localPort']}"
    assert "localhost" in config["ARBITER_ALLOWED_HOSTS"].split(",")
    assert literal_env(only_container(gateway))["ARBITER_SERVICES"] == "gateway"
