"""The Kubernetes executor against the real client and the kmock API emulator on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator

import kubernetes_validate
import pytest

from arbiter.config.typed_settings import SettingsError, load_settings
from services.training.operator.conditions import TRAINER_EXIT_REPORTED_FAILURE, JobPhase
from services.training.operator.executor import OwnedJob
from services.training.operator.kubernetes_executor import (
    SUPPORTED_KUBERNETES_VERSIONS,
    KubernetesExecutor,
    KubernetesSettings,
    SecretKeyRef,
    job_manifest_build,
)
from tests.training.kube import KubeOnLoopback, kube_on_loopback

NAMESPACE = "training"
OWNER = "a1b2c3"

FULL_SETTINGS = KubernetesSettings(
    image="registry.example.com/arbiter:1.4.0",
    namespace=NAMESPACE,
    image_pull_policy="Always",
    image_pull_secrets=("registry-login",),
    gpu_count=2,
    cpu="8",
    memory="32Gi",
    node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
    tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},),
    service_account="arbiter-trainer",
    env_from_secrets=("arbiter-env",),
    env_from_config_maps=("arbiter-config",),
    secret_env={"DATABASE_URL": SecretKeyRef(secret="arbiter-db", key="url")},
    backoff_limit=1,
    active_deadline_seconds=7200,
    ttl_seconds_after_finished=600,
)


@pytest.fixture
def kube() -> Iterator[KubeOnLoopback]:
    with kube_on_loopback() as kube:
        yield kube


@pytest.fixture
def executor(kube: KubeOnLoopback) -> KubernetesExecutor:
    return KubernetesExecutor(settings=FULL_SETTINGS, api_client=kube.api_client, owner=OWNER)


@pytest.mark.parametrize("version", SUPPORTED_KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "settings", [KubernetesSettings(image="arbiter:dev"), FULL_SETTINGS], ids=["bare", "full"]
)
def test_every_generated_job_is_valid_for_each_supported_kubernetes(
    version: str, settings: KubernetesSettings
):
    manifest = job_manifest_build(run_id=42, org_id=7, owner="a1b2c3", settings=settings)
    kubernetes_validate.validate(manifest, version, strict=True)


def test_job_manifest_carries_the_settings(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=42, org_id=7)

    job = kube.batch.read_namespaced_job(name=name, namespace=NAMESPACE)
    assert job.metadata.labels["arbiter.io/run-id"] == "42"
    assert job.metadata.labels["arbiter.io/org"] == "7"
    assert job.metadata.labels["app.kubernetes.io/managed-by"] == "arbiter-operator"
    assert job.spec.backoff_limit == 1
    assert job.spec.active_deadline_seconds == 7200
    assert job.spec.ttl_seconds_after_finished == 600
    pod = job.spec.template.spec
    assert job.spec.template.metadata.labels["arbiter.io/run-id"] == "42"
    assert pod.restart_policy == "Never"
    assert pod.service_account_name == "arbiter-trainer"
    assert pod.node_selector == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod.tolerations[0].key == "nvidia.com/gpu"
    assert [s.name for s in pod.image_pull_secrets] == ["registry-login"]
    [container] = pod.containers
    assert container.image == "registry.example.com/arbiter:1.4.0"
    assert container.command == ["arbiter", "train", "--run", "42"]
    assert container.resources.limits == {"nvidia.com/gpu": "2", "cpu": "8", "memory": "32Gi"}
    secret_env = {e.name: e.value_from.secret_key_ref for e in container.env if e.value_from}
    assert (secret_env["DATABASE_URL"].name, secret_env["DATABASE_URL"].key) == ("arbiter-db", "url")
    assert [
        (e.secret_ref and e.secret_ref.name, e.config_map_ref and e.config_map_ref.name)
        for e in container.env_from
    ] == [
        ("arbiter-env", None),
        (None, "arbiter-config"),
    ]
    rules = job.spec.pod_failure_policy.rules
    assert rules[0].action == "FailJob" and rules[0].on_exit_codes.values == [TRAINER_EXIT_REPORTED_FAILURE]


def test_a_cpu_cluster_gets_no_gpu_limit():
    manifest = job_manifest_build(
        run_id=1, org_id=1, owner="a1b2c3", settings=KubernetesSettings(image="arbiter:dev", gpu_count=0)
    )
    assert manifest["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {}


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    # The real source: variables in the process environment, read when the settings load.
    monkeypatch.setenv("ARBITER_K8S_IMAGE", "arbiter:2")
    monkeypatch.setenv("ARBITER_K8S_NAMESPACE", "ml")
    monkeypatch.setenv("ARBITER_K8S_GPU_COUNT", "4")
    monkeypatch.setenv("ARBITER_K8S_NODE_SELECTOR", '{"pool": "gpu"}')
    monkeypatch.setenv("ARBITER_K8S_TOLERATIONS", '[{"key": "gpu", "operator": "Exists"}]')
    monkeypatch.setenv("ARBITER_K8S_SERVICE_ACCOUNT", "trainer")
    monkeypatch.setenv(
        "ARBITER_K8S_SECRET_ENV", json.dumps({"DATABASE_URL": "db/url", "AWS_SECRET_ACCESS_KEY": "s3/key"})
    )
    monkeypatch.setenv("ARBITER_K8S_ENV_FROM_SECRETS", "a, b")
    monkeypatch.setenv("ARBITER_K8S_ACTIVE_DEADLINE_SECONDS", "60")

    settings = load_settings().kubernetes.checked()

    assert settings.image == "arbiter:2"
    assert settings.namespace == "ml"
    assert settings.gpu_count == 4
    assert settings.node_selector == {"pool": "gpu"}
    assert settings.tolerations == ({"key": "gpu", "operator": "Exists"},)
    assert settings.service_account == "trainer"
    assert settings.secret_env["AWS_SECRET_ACCESS_KEY"] == SecretKeyRef(secret="s3", key="key")
    assert settings.env_from_secrets == ("a", "b")
    assert settings.active_deadline_seconds == 60
    assert settings.backoff_limit == 2


@pytest.mark.parametrize(
    ("variable", "value", "complaint"),
    [
        ("ARBITER_K8S_NODE_SELECTOR", '["gpu"]', "ARBITER_K8S_NODE_SELECTOR: must be a JSON object"),
        ("ARBITER_K8S_TOLERATIONS", '{"key": "gpu"}', "ARBITER_K8S_TOLERATIONS: must be a JSON list"),
        ("ARBITER_K8S_SECRET_ENV", '{"DATABASE_URL": "no-key"}', "ARBITER_K8S_SECRET_ENV: ['DATABASE_URL']"),
        ("ARBITER_K8S_GPU_COUNT", "-1", "ARBITER_K8S_GPU_COUNT: input should be greater than or equal to 0"),
        ("ARBITER_K8S_GPU_COUNT", "two", "ARBITER_K8S_GPU_COUNT: input should be a valid integer"),
        (
            "ARBITER_K8S_IMAGE_PULL_POLICY",
            "Sometimes",
            "ARBITER_K8S_IMAGE_PULL_POLICY: input should be 'Always'",
        ),
    ],
)
def test_a_wrong_setting_is_named(variable: str, value: str, complaint: str):
    with pytest.raises(SettingsError, match=complaint.replace("[", r"\[")):
        load_settings({"ARBITER_K8S_IMAGE": "arbiter:2", variable: value})


def test_the_image_is_required():
    with pytest.raises(SettingsError, match="ARBITER_K8S_IMAGE is required"):
        load_settings({"ARBITER_K8S_IMAGE": ""}).kubernetes.checked()


def test_launching_twice_adopts_the_first_job(executor: KubernetesExecutor, kube: KubeOnLoopback):
    first = executor.launch(run_id=5, org_id=1)
    second = executor.launch(run_id=5, org_id=1)

    assert first == second == "arbiter-train-5"
    assert [j.metadata.name for j in kube.batch.list_namespaced_job(NAMESPACE).items] == ["arbiter-train-5"]


def test_a_foreign_job_with_our_name_is_not_adopted(executor: KubernetesExecutor, kube: KubeOnLoopback):
    foreign = job_manifest_build(run_id=6, org_id=1, owner=OWNER, settings=FULL_SETTINGS)
    foreign["metadata"]["labels"]["arbiter.io/run-id"] = "999"
    kube.batch.create_namespaced_job(namespace=NAMESPACE, body=foreign)

    with pytest.raises(RuntimeError, match="belongs to something else"):
        executor.launch(run_id=6, org_id=1)


def test_a_new_job_is_pending(executor: KubernetesExecutor):
    name = executor.launch(run_id=1, org_id=1)
    observation = executor.observe(name, run_id=1)
    assert observation.phase == JobPhase.PENDING
    assert observation.reason == "JobPending"


def test_an_unschedulable_pod_says_why(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=1, org_id=1)
    kube.job_status_set(NAMESPACE, name, {"active": 1, "ready": 0})
    kube.job_pod_add(
        NAMESPACE,
        name,
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ],
        },
    )

    observation = executor.observe(name, run_id=1)

    assert observation.phase == JobPhase.PENDING
    assert observation.reason == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in observation.message
    assert "ARBITER_K8S_GPU_COUNT" in observation.message


def test_an_image_that_cannot_be_pulled_says_so(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=1, org_id=1)
    kube.job_status_set(NAMESPACE, name, {"active": 1, "ready": 0})
    kube.job_pod_add(
        NAMESPACE,
        name,
        {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "image": FULL_SETTINGS.image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "manifest unknown"}},
                }
            ],
        },
    )

    observation = executor.observe(name, run_id=1)

    assert (observation.phase, observation.reason) == (JobPhase.PENDING, "ImagePullBackOff")
    assert "manifest unknown" in observation.message


def test_a_ready_pod_is_running(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=1, org_id=1)
    kube.job_status_set(NAMESPACE, name, {"active": 1, "ready": 1, "startTime": "2026-01-01T00:00:00Z"})
    assert executor.observe(name, run_id=1).phase == JobPhase.RUNNING


def test_a_complete_job_succeeded(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=1, org_id=1)
    kube.job_status_set(
        NAMESPACE,
        name,
        {
            "succeeded": 1,
            "conditions": [
                {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ],
        },
    )
    assert executor.observe(name, run_id=1).phase == JobPhase.SUCCEEDED


def test_a_job_past_its_deadline_failed_with_the_limit(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=1, org_id=1)
    kube.job_status_set(
        NAMESPACE,
        name,
        {
            "failed": 1,
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                    "lastTransitionTime": "2026-01-01T02:00:00Z",
                }
            ],
        },
    )

    observation = executor.observe(name, run_id=1)

    assert (observation.phase, observation.reason) == (JobPhase.FAILED, "DeadlineExceeded")
    assert "7200 seconds" in observation.message
    assert "ARBITER_K8S_ACTIVE_DEADLINE_SECONDS" in observation.message


def _job_failed_with(kube: KubeOnLoopback, name: str, terminated: dict) -> None:
    """The Job gave up after its retries, and its pod's trainer container ended as `terminated` says."""
    failed = {
        "type": "Failed",
        "status": "True",
        "reason": "BackoffLimitExceeded",
        "message": "Job has reached the specified backoff limit",
    }
    kube.job_status_set(NAMESPACE, name, {"failed": 2, "conditions": [failed]})
    container = {
        "name": "trainer",
        "image": FULL_SETTINGS.image,
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"terminated": terminated},
    }
    kube.job_pod_add(NAMESPACE, name, {"phase": "Failed", "containerStatuses": [container]})


def test_an_oom_killed_trainer_failed_out_of_memory(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=1, org_id=1)
    _job_failed_with(kube, name, {"exitCode": 137, "reason": "OOMKilled"})

    observation = executor.observe(name, run_id=1)

    assert (observation.phase, observation.reason) == (JobPhase.FAILED, "OutOfMemory")
    assert "32Gi" in observation.message and "batch_size" in observation.message


def test_a_crashed_trainer_failed_with_its_last_words(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=1, org_id=1)
    _job_failed_with(kube, name, {"exitCode": 1, "reason": "Error", "message": "RuntimeError: disk full"})

    observation = executor.observe(name, run_id=1)

    assert (observation.phase, observation.reason) == (JobPhase.FAILED, "BackoffLimitExceeded")
    assert "exit code 1" in observation.message
    assert "RuntimeError: disk full" in observation.message
    assert f"kubectl logs job/{name} -n {NAMESPACE}" in observation.message


def test_a_deleted_job_is_missing(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=1, org_id=1)
    kube.batch.delete_namespaced_job(name=name, namespace=NAMESPACE)

    observation = executor.observe(name, run_id=1)

    assert (observation.phase, observation.reason) == (JobPhase.MISSING, "JobDeleted")


def test_stopping_deletes_the_job_and_is_idempotent(executor: KubernetesExecutor, kube: KubeOnLoopback):
    name = executor.launch(run_id=3, org_id=1)

    executor.stop(name, run_id=3)
    executor.stop(name, run_id=3)

    assert kube.batch.list_namespaced_job(NAMESPACE).items == []
    assert kube.emulator["delete"][0].params["propagationPolicy"] == "Background"


def test_owned_lists_only_jobs_with_our_labels(executor: KubernetesExecutor, kube: KubeOnLoopback):
    executor.launch(run_id=3, org_id=1)
    finished = executor.launch(run_id=4, org_id=2)
    complete = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
    kube.job_status_set(NAMESPACE, finished, {"succeeded": 1, "conditions": [complete]})
    someone_elses = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "nightly-backup", "labels": {"app": "backup"}},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "b", "image": "b"}]}}
        },
    }
    kube.batch.create_namespaced_job(namespace=NAMESPACE, body=someone_elses)

    assert sorted(executor.owned(), key=lambda j: j.run_id) == [
        OwnedJob(handle="arbiter-train-3", run_id=3, live=True),
        OwnedJob(handle="arbiter-train-4", run_id=4, live=False),
    ]
