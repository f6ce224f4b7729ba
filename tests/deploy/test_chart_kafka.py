"""Managed Kafka through the chart: TLS and SASL values become the variables every Arbiter process reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from kubernetes_validate import utils as kubernetes_validate_utils

from arbiter.config.typed_settings import KafkaSecuritySettings, SettingsError, load_settings
from tests.deploy.charts import (
    containers,
    helm,
    literal_env,
    named,
    pod_spec,
    render,
    secret_env,
    workloads,
)

Validate = Callable[..., str]
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate_utils.latest_version())
TLS_DIR = "/etc/arbiter/kafka-tls"
MANAGED = {
    "kafka": {
        "bootstrapServers": "b-1.msk.example.com:9096,b-2.msk.example.com:9096",
        "securityProtocol": "SASL_SSL",
        "sasl": {"mechanism": "SCRAM-SHA-512", "existingSecret": "msk-credentials"},
        "tls": {"existingSecret": "msk-tls", "caKey": "ca.crt", "certKey": "tls.crt", "keyKey": "tls.key"},
    }
}


def kafka_env(manifests: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The KAFKA_* variables a container gets, from the ConfigMap, its own env, and Secrets (as `secret/key`)."""
    env: dict[str, str] = {}
    if any("configMapRef" in source for source in container.get("envFrom", [])):
        env.update(named(manifests, "ConfigMap", "arbiter-config")["data"])
    env.update(literal_env(container))
    env.update({name: f"{secret}/{key}" for name, (secret, key) in secret_env(container).items()})
    return {name: value for name, value in env.items() if name.startswith("KAFKA_")}


def test_by_default_clients_speak_plaintext_and_nothing_is_mounted() -> None:
    manifests = render()
    for workload in workloads(manifests):
        spec = pod_spec(workload)
        assert "kafka-tls" not in [v["name"] for v in spec["volumes"]]
        for container in containers(workload):
            assert kafka_env(manifests, container) == {
                "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
                "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
            }, workload["metadata"]["name"]


def test_managed_kafka_reaches_every_process_with_credentials_from_secrets() -> None:
    manifests = render(MANAGED)
    for workload in workloads(manifests):
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["kafka-tls"]["secret"]["secretName"] == "msk-tls", name
        for container in containers(workload):
            assert kafka_env(manifests, container) == {
                "KAFKA_BOOTSTRAP_SERVERS": "b-1.msk.example.com:9096,b-2.msk.example.com:9096",
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                "KAFKA_SASL_USERNAME": "msk-credentials/KAFKA_SASL_USERNAME",
                "KAFKA_SASL_PASSWORD": "msk-credentials/KAFKA_SASL_PASSWORD",
                "KAFKA_SSL_CAFILE": f"{TLS_DIR}/ca.crt",
                "KAFKA_SSL_CERTFILE": f"{TLS_DIR}/tls.crt",
                "KAFKA_SSL_KEYFILE": f"{TLS_DIR}/tls.key",
            }, name
            mounts = {m["name"]: m for m in container["volumeMounts"]}
            assert mounts["kafka-tls"] == {"name": "kafka-tls", "mountPath": TLS_DIR, "readOnly": True}, name


def test_trainer_jobs_get_the_sasl_credentials_too() -> None:
    """Trainers load the same settings: with SASL on, a trainer without the credentials would refuse to start."""
    manifests = render(MANAGED)
    operator = named(manifests, "Deployment", "arbiter-training-operator")
    [container] = containers(operator)
    secret_refs = literal_env(container)["ARBITER_K8S_SECRET_ENV"]
    assert '"KAFKA_SASL_PASSWORD":"msk-credentials/KAFKA_SASL_PASSWORD"' in secret_refs
    assert '"KAFKA_SASL_USERNAME":"msk-credentials/KAFKA_SASL_USERNAME"' in secret_refs


def test_what_the_chart_sets_is_what_the_settings_accept() -> None:
    manifests = render(MANAGED)
    [container] = containers(named(manifests, "Deployment", "arbiter-dataset-relay"))
    env = kafka_env(manifests, container)
    env.update(KAFKA_SASL_USERNAME="arbiter", KAFKA_SASL_PASSWORD="from-the-secret")
    kafka = load_settings({k: v for k, v in env.items() if k in KafkaSecuritySettings.variables()}).kafka
    assert (kafka.security_protocol, kafka.sasl_mechanism, kafka.sasl_username) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "arbiter",
    )
    assert str(kafka.ssl_cafile) == f"{TLS_DIR}/ca.crt"
    with pytest.raises(SettingsError, match=f"KAFKA_SSL_CAFILE={TLS_DIR}/ca.crt is not a readable file"):
        kafka.client_config()  # here, unlike in the pod, nothing is mounted


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_managed_kafka_objects_are_valid_for_kubernetes(version: str, validate_kubernetes: Validate) -> None:
    for manifest in render(MANAGED):
        validate_kubernetes(manifest, version, strict=True)


def test_tls_without_a_secret_uses_the_system_cas_and_mounts_nothing() -> None:
    manifests = render({"kafka": {"securityProtocol": "SSL"}})
    [container] = containers(named(manifests, "Deployment", "arbiter-gateway"))
    assert kafka_env(manifests, container) == {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        "KAFKA_SECURITY_PROTOCOL": "SSL",
    }
    assert "kafka-tls" not in [
        v["name"] for v in pod_spec(named(manifests, "Deployment", "arbiter-gateway"))["volumes"]
    ]


@pytest.mark.parametrize(
    ("kafka", "complaint"),
    [
        ({"securityProtocol": "SASL_SSL"}, "existingSecret"),
        ({"securityProtocol": "SASL_PLAINTEXT", "sasl": {"existingSecret": ""}}, "existingSecret"),
        (
            {"securityProtocol": "SASL_SSL", "sasl": {"existingSecret": "s", "mechanism": "GSSAPI"}},
            "mechanism",
        ),
        ({"securityProtocol": "TLS"}, "securityProtocol"),
        ({"securityProtocol": "SSL", "tls": {"existingSecret": "t", "certKey": "tls.crt"}}, "keyKey"),
    ],
)
def test_values_schema_refuses_incomplete_kafka_security(kafka: dict[str, Any], complaint: str) -> None:
    helm_python = helm()
    with pytest.raises(helm_python.HelmValuesError, match=complaint):
        render({"kafka": kafka})
