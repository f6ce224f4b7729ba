"""The Helm chart, rendered offline as `helm install` would and checked the way a platform operator would."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest
from kubernetes_validate import utils as kubernetes_validate_utils

from tests.deploy.charts import (
    CHART,
    DEV_VALUES,
    PRODUCTION_VALUES,
    SERVICES,
    Manifest,
    containers,
    deployments_of,
    helm,
    literal_env,
    load_values,
    named,
    of_kind,
    only_container,
    pod_spec,
    render,
    secret_env,
    selects,
    workloads,
)

# The oldest Kubernetes the chart supports (trainer Jobs need 1.29+) that is still common, and the newest
# kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate_utils.latest_version())
Validate = Callable[..., str]
VALUE_FILES = {"defaults": None, "production": PRODUCTION_VALUES, "dev": DEV_VALUES}
# Variables whose value would be a secret. ARBITER_K8S_* only name Secrets for the trainer Jobs.
SECRET_NAME = re.compile(
    r"^(?!ARBITER_K8S_)(DATABASE_URL|.*SECRET|.*PASSWORD|.*TOKEN|AWS_ACCESS_KEY_ID$|.*HEADERS$)"
)


def values_named(name: str) -> dict[str, Any] | None:
    path = VALUE_FILES[name]
    return load_values(path) if path else None


@pytest.fixture
def production() -> list[Manifest]:
    return render(load_values(PRODUCTION_VALUES))


@pytest.fixture(params=["defaults", "production"])
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    return render(values_named(request.param))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("values", sorted(VALUE_FILES))
def test_every_rendered_object_is_valid_for_kubernetes(
    values: str, version: str, validate_kubernetes: Validate
) -> None:
    rendered = render(values_named(values))
    assert rendered, "the chart rendered nothing"
    for manifest in rendered:
        try:
            validate_kubernetes(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{manifest['kind']} {manifest['metadata']['name']}"
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc.message}")


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"services": {"search": {"replicas": 1, "resources": {}}}}, "search"),
        ({"training": {"executor": "slurm"}}, "executor"),
        ({"training": {"trainer": {"gpuCount": -1}}}, "gpuCount"),
        ({"ingress": {"routes": [{"path": "/api/v1/orgs/[^/]+/search", "service": "search"}]}}, "service"),
        ({"kafka": {"bootstrapServers": "kafka"}}, "bootstrapServers"),
        ({"blobStore": {"url": "bucket/prefix"}}, "url"),
        ({"database": {"passwrd": "x"}}, "passwrd"),
        ({"otel": {"enabled": True}}, "endpoint"),
    ],
)
def test_values_schema_rejects_mistakes_before_anything_is_applied(
    values: dict[str, Any], complaint: str
) -> None:
    helm_python = helm()
    with pytest.raises(helm_python.HelmValuesError, match=complaint):
        render(values)


def test_each_service_has_one_web_deployment_running_only_that_service(manifests: list[Manifest]) -> None:
    web = deployments_of(manifests, "web")
    assert sorted(web) == sorted(SERVICES)
    for service, deployment in web.items():
        container = only_container(deployment)
        assert container["command"] == ["arbiter", "serve", "--services", service, "--bind", "0.0.0.0:8000"]
        assert literal_env(container)["ARBITER_SERVICES"] == service
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]


def test_each_service_is_reachable_through_its_own_service_object(manifests: list[Manifest]) -> None:
    web = deployments_of(manifests, "web")
    for service in SERVICES:
        selector = named(manifests, "Service", f"arbiter-{service}")["spec"]["selector"]
        chosen = [
            d["metadata"]["name"]
            for d in of_kind(manifests, "Deployment")
            if selects(selector, d["spec"]["template"]["metadata"]["labels"])
        ]
        assert chosen == [web[service]["metadata"]["name"]], f"arbiter-{service} selects {chosen}"


def test_probes_send_a_host_that_arbiter_allows(manifests: list[Manifest]) -> None:
    # Production Django answers 400 to an unknown Host, and a probe's default Host is the pod IP.
    allowed = named(manifests, "ConfigMap", "arbiter-config")["data"]["ARBITER_ALLOWED_HOSTS"].split(",")
    for deployment in deployments_of(manifests, "web").values():
        container = only_container(deployment)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            headers = {h["name"]: h["value"] for h in container[probe]["httpGet"]["httpHeaders"]}
            assert headers["Host"] in allowed


def test_each_service_has_its_outbox_relay_and_consumer(manifests: list[Manifest]) -> None:
    for process, command in (("relay", ["arbiter", "relay"]), ("consumer", ["arbiter", "consume"])):
        deployments = deployments_of(manifests, process)
        assert sorted(deployments) == sorted(SERVICES), process
        for service, deployment in deployments.items():
            container = only_container(deployment)
            assert container["command"] == command
            assert literal_env(container)["ARBITER_SERVICES"] == service


def test_a_service_can_scale_or_drop_one_background_process() -> None:
    rendered = render(
        {"services": {"billing": {"relay": {"enabled": False}}, "annotation": {"consumer": {"replicas": 3}}}}
    )
    assert "billing" not in deployments_of(rendered, "relay")
    assert "billing" in deployments_of(rendered, "consumer")
    assert deployments_of(rendered, "consumer")["annotation"]["spec"]["replicas"] == 3
    assert deployments_of(rendered, "consumer")["dataset"]["spec"]["replicas"] == 1


def test_each_service_runs_the_same_helpers_as_arbiter_up(manifests: list[Manifest]) -> None:
    """What `arbiter up --split` runs beside each service (besides web, relay, consumer and the operator) is
    what the chart deploys, each alone with its service, one replica."""
    from arbiter.config.management.commands.up import _service_workers
    from arbiter.config.services import ALL_SERVICES

    wanted = {
        (service, tuple(child.argv[3:5]))
        for service in ALL_SERVICES
        for child in _service_workers((service,))
        if child.name != "operator"
    }
    workers = load_values(CHART / "values.yaml")["serviceWorkers"]
    deployed = set()
    for name, worker in workers.items():
        deployment = deployments_of(manifests, name)[worker["service"]]
        container = only_container(deployment)
        assert container["command"] == ["arbiter", *worker["command"]]
        assert literal_env(container)["ARBITER_SERVICES"] == worker["service"]
        assert deployment["spec"]["replicas"] == 1
        deployed.add((worker["service"], tuple(worker["command"][:2])))
    assert deployed == wanted
    assert "dataset" not in deployments_of(render({"serviceWorkers": {"jobs": {"enabled": False}}}), "jobs")


def test_operator_may_manage_jobs_and_read_pods_in_its_namespace_only(manifests: list[Manifest]) -> None:
    operator = deployments_of(manifests, "operator")["training"]
    container = only_container(operator)
    assert container["command"] == ["arbiter", "operator"]
    assert literal_env(container)["ARBITER_SERVICES"] == "training"
    config = named(manifests, "ConfigMap", "arbiter-config")["data"]
    assert config["ARBITER_TRAINING_EXECUTOR"] == "kubernetes"
    assert literal_env(container)["ARBITER_TRAINING_CONCURRENCY"] in ("0", "4")
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}

    account = pod_spec(operator)["serviceAccountName"]
    bindings = [
        b
        for b in of_kind(manifests, "RoleBinding")
        if {"kind": "ServiceAccount", "name": account, "namespace": "moderation"} in b["subjects"]
    ]
    assert len(bindings) == 1
    role = named(manifests, "Role", bindings[0]["roleRef"]["name"])
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"]) for r in role["rules"]}
    assert rules == {
        (("batch",), ("jobs",)): ["create", "delete", "get", "list", "watch"],
        (("",), ("pods",)): ["get", "list", "watch"],
        (("",), ("pods/log",)): ["get"],
    }
    assert not of_kind(manifests, "ClusterRole") and not of_kind(manifests, "ClusterRoleBinding")


def test_only_the_operator_can_talk_to_the_kubernetes_api(manifests: list[Manifest]) -> None:
    with_token = [
        w["metadata"]["name"] for w in workloads(manifests) if pod_spec(w).get("automountServiceAccountToken")
    ]
    assert with_token == ["arbiter-training-operator"]
    for account in of_kind(manifests, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_trainer_jobs_the_operator_builds_from_chart_settings_are_valid(
    production: list[Manifest], validate_kubernetes: Validate
) -> None:
    from arbiter.config.typed_settings import KubernetesSettings
    from services.training.operator.kubernetes_executor import job_manifest_build

    operator = only_container(deployments_of(production, "operator")["training"])
    config = named(production, "ConfigMap", "arbiter-config")["data"]
    environment = {**config, **literal_env(operator)}
    settings = KubernetesSettings(
        **{k: v for k, v in environment.items() if k in KubernetesSettings.variables()}
    )

    job = job_manifest_build(run_id=41, org_id=7, owner="install", settings=settings.checked())
    for version in KUBERNETES_VERSIONS:
        validate_kubernetes(job, version, strict=True)

    trainer = only_container(job)
    assert job["metadata"]["namespace"] == "moderation"
    assert trainer["image"] == "registry.example.com/arbiter/arbiter-gpu:0.1.0"
    assert trainer["resources"]["limits"] == {"nvidia.com/gpu": "2", "cpu": "8", "memory": "48Gi"}
    assert job["spec"]["backoffLimit"] == 1
    assert job["spec"]["activeDeadlineSeconds"] == 43200
    assert job["spec"]["ttlSecondsAfterFinished"] == 7200
    spec = pod_spec(job)
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    training_taint = {"key": "workload", "operator": "Equal", "value": "training", "effect": "NoSchedule"}
    assert training_taint in spec["tolerations"]
    assert spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    # The trainer runs as the chart's trainer account, with the services' settings and secrets.
    trainer_account = named(production, "ServiceAccount", spec["serviceAccountName"])["metadata"]
    assert trainer_account["annotations"]["eks.amazonaws.com/role-arn"].endswith("role/arbiter-trainer")
    config_maps = [s["configMapRef"]["name"] for s in trainer["envFrom"] if "configMapRef" in s]
    assert config_maps == ["arbiter-config"]
    web_training = only_container(deployments_of(production, "web")["training"])
    assert secret_env(trainer) == secret_env(web_training)


def test_local_executor_gets_no_kubernetes_permissions() -> None:
    rendered = render({"training": {"executor": "local"}})
    operator = deployments_of(rendered, "operator")["training"]
    assert not of_kind(rendered, "Role") and not of_kind(rendered, "RoleBinding")
    assert pod_spec(operator)["automountServiceAccountToken"] is False
    assert not [name for name in literal_env(only_container(operator)) if name.startswith("ARBITER_K8S_")]


def _nginx_backend(ingress: Manifest, path: str) -> str:
    """The Service ingress-nginx picks with use-regex: `location ~* ^<path>`, longest expression first."""
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    for candidate in sorted(paths, key=lambda p: len(p["path"]), reverse=True):
        if re.match(candidate["path"], path, re.IGNORECASE):
            return str(candidate["backend"]["service"]["name"])
    raise AssertionError(f"no Ingress path matches {path}")


def test_ingress_routes_are_the_route_table() -> None:
    from arbiter.config.routes import DEFAULT_SERVICE, ROUTES

    ingress = load_values(CHART / "values.yaml")["ingress"]
    assert ingress["defaultService"] == DEFAULT_SERVICE
    assert [(r["path"], r["service"]) for r in ingress["routes"]] == [(r.path, r.service) for r in ROUTES]


def test_ingress_sends_every_url_of_every_service_to_that_service(production: list[Manifest]) -> None:
    """Walks every URL pattern of every service (and the kernel's) through the rendered Ingress as
    ingress-nginx would match it."""
    from arbiter.config.routes import DEFAULT_SERVICE
    from arbiter.testing.routes import service_urls

    ingress = named(production, "Ingress", "arbiter")
    urls = [(path, service) for service, path, _ in service_urls()]
    urls += [
        (path, DEFAULT_SERVICE) for path in ("/healthz", "/readyz", "/api/schema/", "/static/console/x.css")
    ]
    misrouted = [
        (path, service, b)
        for path, service in urls
        if (b := _nginx_backend(ingress, path)) != f"arbiter-{service}"
    ]
    assert misrouted == []


def test_ingress_is_written_for_ingress_nginx_regex_paths(production: list[Manifest]) -> None:
    ingress = named(production, "Ingress", "arbiter")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"
    # An upload Arbiter accepts must not be cut off by nginx first.
    body_limit = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    max_upload = named(production, "ConfigMap", "arbiter-config")["data"]["ARBITER_MAX_UPLOAD_BYTES"]
    assert body_limit.endswith("k") and int(body_limit[:-1]) * 1024 > int(max_upload)
    assert ingress["spec"]["tls"] == [
        {"hosts": ["moderation.example.com"], "secretName": "moderation-example-com-tls"}
    ]
    services = {s["metadata"]["name"]: s for s in of_kind(production, "Service")}
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] == "moderation.example.com"
        for path in rule["http"]["paths"]:
            assert path["pathType"] == "ImplementationSpecific"
            backend = path["backend"]["service"]
            ports = [p["name"] for p in services[backend["name"]]["spec"]["ports"]]
            assert backend["port"]["name"] in ports


def test_migrations_run_as_a_hook_before_install_and_upgrade(manifests: list[Manifest]) -> None:
    jobs = of_kind(manifests, "Job")
    assert [j["metadata"]["name"] for j in jobs] == ["arbiter-migrate"]
    job = jobs[0]
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert sorted(hooks) == ["pre-install", "pre-upgrade"]
    container = only_container(job)
    assert container["command"] == ["arbiter", "migrate"]
    env = literal_env(container)
    assert env["ARBITER_SERVICES"] == "all"
    # Same settings as the services, given inline: the ConfigMap does not exist yet on a first install.
    config = named(manifests, "ConfigMap", "arbiter-config")["data"]
    assert {name: env[name] for name in config} == config
    assert secret_env(container) == secret_env(only_container(deployments_of(manifests, "web")["gateway"]))


def test_migration_hook_needs_nothing_the_release_creates(manifests: list[Manifest]) -> None:
    # Helm runs pre-install hooks before creating the release's objects: referencing one would hang forever.
    job = named(manifests, "Job", "arbiter-migrate")
    created = {(m["kind"], m["metadata"]["name"]) for m in manifests if m is not job}
    spec = pod_spec(job)
    assert ("ServiceAccount", spec.get("serviceAccountName", "default")) not in created
    container = only_container(job)
    for source in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                assert (kind, source[key]["name"]) not in created
    for secret, _key in secret_env(container).values():
        assert ("Secret", secret) not in created


@pytest.mark.parametrize("values", sorted(VALUE_FILES))
def test_no_secret_is_written_into_the_release(values: str) -> None:
    rendered = render(values_named(values))
    assert not of_kind(rendered, "Secret")
    config = named(rendered, "ConfigMap", "arbiter-config")["data"]
    assert not [name for name in config if SECRET_NAME.search(name)]
    for workload in workloads(rendered):
        for container in containers(workload):
            inlined = [name for name in literal_env(container) if SECRET_NAME.search(name)]
            assert not inlined, f"{workload['metadata']['name']} inlines {inlined}"
            assert not [v for v in literal_env(container).values() if re.search(r"://[^/@\s]+:[^/@\s]+@", v)]


def test_production_secrets_come_from_the_named_secrets(production: list[Manifest]) -> None:
    for workload in workloads(production):
        assert secret_env(only_container(workload)) == {
            "DATABASE_URL": ("arbiter-postgres", "url"),
            "DATABASE_URL_TRAINING": ("arbiter-postgres-training", "url"),
            "ARBITER_SECRET_KEY": ("arbiter-django", "secret-key"),
            "OTEL_EXPORTER_OTLP_HEADERS": ("arbiter-otel", "headers"),
        }, workload["metadata"]["name"]


def test_production_points_at_its_kafka_s3_and_collector(production: list[Manifest]) -> None:
    config = named(production, "ConfigMap", "arbiter-config")["data"]
    assert config["ARBITER_ENV"] == "production"
    assert config["KAFKA_BOOTSTRAP_SERVERS"].startswith("b-1.arbiter.kafka.eu-west-1.amazonaws.com:9092,")
    assert config["ARBITER_BLOB_STORE"] == "s3://acme-moderation/arbiter"
    assert config["AWS_REGION"] == "eu-west-1"
    assert config["OTEL_TRACES_EXPORTER"] == "otlp"
    assert config["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert config["ARBITER_CSRF_TRUSTED_ORIGINS"] == "https://moderation.example.com"
    names = {literal_env(only_container(w))["OTEL_SERVICE_NAME"] for w in workloads(production)}
    assert {"arbiter-inference", "arbiter-inference-consumer", "arbiter-training-operator"} <= names
    assert "arbiter-migrate" in names


def test_inference_autoscales_and_the_autoscaler_owns_its_replica_count(production: list[Manifest]) -> None:
    [autoscaler] = of_kind(production, "HorizontalPodAutoscaler")
    target = autoscaler["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "arbiter-inference"}
    assert (autoscaler["spec"]["minReplicas"], autoscaler["spec"]["maxReplicas"]) == (3, 20)
    assert "replicas" not in deployments_of(production, "web")["inference"]["spec"]
    assert deployments_of(production, "web")["gateway"]["spec"]["replicas"] == 3


def test_pods_run_as_non_root_on_a_read_only_filesystem(manifests: list[Manifest]) -> None:
    for workload in workloads(manifests):
        assert pod_spec(workload)["securityContext"]["runAsNonRoot"] is True
        for container in containers(workload):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/var/lib/arbiter"} <= mounts


def test_a_settings_change_rolls_the_pods_that_read_it() -> None:
    before = deployments_of(render(), "web")["dataset"]
    after = deployments_of(render({"kafka": {"bootstrapServers": "redpanda:9092"}}), "web")["dataset"]
    checksum = "checksum/config"
    assert (
        before["spec"]["template"]["metadata"]["annotations"][checksum]
        != (after["spec"]["template"]["metadata"]["annotations"][checksum])
    )


def test_an_image_digest_pins_every_process_and_the_trainers() -> None:
    digest = "sha256:" + "ab" * 32
    rendered = render({"image": {"repository": "registry.example.com/arbiter", "digest": digest}})
    pinned = f"registry.example.com/arbiter@{digest}"
    for workload in workloads(rendered):
        assert only_container(workload)["image"] == pinned
    operator = only_container(deployments_of(rendered, "operator")["training"])
    assert literal_env(operator)["ARBITER_K8S_IMAGE"] == pinned


@pytest.mark.parametrize("values", sorted(VALUE_FILES))
def test_helm_lint_finds_nothing_to_warn_about(values: str) -> None:
    report = helm().lint(str(CHART), values_named(values), strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert not [m for m in report["messages"] if m["severity"] >= 2], report["messages"]
