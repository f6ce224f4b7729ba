"""The Kubernetes executor: one `batch/v1` Job per training run, through the official client.

Everything the Job needs from the cluster (image, GPUs, node selector, tolerations, service account, secrets,
limits) comes from `KubernetesSettings` (`ARBITER_K8S_*`, declared in `arbiter.config.typed_settings`). The executor keeps
no state of its own: the Job name is derived from the run id and every Job carries owner labels, so a
restarted operator finds what it created by listing, and creating twice adopts the first Job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes import client, config

from arbiter.config.typed_settings import KubernetesSettings, SecretKeyRef
from services.training.operator.conditions import TRAINER_EXIT_REPORTED_FAILURE, JobObservation, JobPhase
from services.training.operator.executor import LaunchError, OwnedJob

__all__ = ["KubernetesExecutor", "KubernetesSettings", "SecretKeyRef", "job_manifest_build"]

# Kubernetes versions whose API accepts the generated Job (checked by the tests with kubernetes-validate).
# 1.29 is the oldest with Job `status.ready` and `podFailurePolicy` on by default, which the executor uses.
SUPPORTED_KUBERNETES_VERSIONS: tuple[str, ...] = tuple(f"1.{minor}" for minor in range(29, 38))

LABEL_RUN_ID = "arbiter.io/run-id"
LABEL_ORG = "arbiter.io/org"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "arbiter-operator"
# Which installation (training database) the Job's run belongs to: two installations may share a namespace.
LABEL_OWNER = "arbiter.io/owner"
JOB_NAME_PREFIX = "arbiter-train-"
CONTAINER_NAME = "trainer"
GPU_RESOURCE = "nvidia.com/gpu"
# Answers to creating a Job that retrying will not change (409 means it exists: adopt it; 429 and 5xx pass).
REFUSALS = frozenset({400, 401, 403, 404, 422})
# How much of a crashed trainer's last words goes into the run's message (the rest is in its logs).
MESSAGE_DETAIL_CHARS = 600


def job_name_for_run(run_id: int) -> str:
    return f"{JOB_NAME_PREFIX}{run_id}"


def job_manifest_build(
    *, run_id: int, org_id: int, owner: str, settings: KubernetesSettings
) -> dict[str, Any]:
    """The `batch/v1` Job that runs `arbiter train --run <id>` for one run."""
    labels = {
        LABEL_RUN_ID: str(run_id),
        LABEL_ORG: str(org_id),
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_OWNER: owner,
        "app.kubernetes.io/name": "arbiter",
        "app.kubernetes.io/component": "trainer",
    }
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if settings.gpu_count:
        limits[GPU_RESOURCE] = str(settings.gpu_count)
    # Requests equal limits for CPU and memory: a trainer that the node may squeeze gets OOM-killed at random.
    for resource, amount in (("cpu", settings.cpu), ("memory", settings.memory)):
        if amount:
            limits[resource] = amount
            requests[resource] = amount
    env: list[dict[str, Any]] = [
        {"name": "ARBITER_SERVICES", "value": "training"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
        for name, ref in sorted(settings.secret_env.items())
    ]
    env_from = [{"secretRef": {"name": name}} for name in settings.env_from_secrets] + [
        {"configMapRef": {"name": name}} for name in settings.env_from_config_maps
    ]
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["arbiter", "train", "--run", str(run_id)],
        "env": env,
        "resources": {"limits": limits, "requests": requests},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # PyTorch data loaders share tensors through /dev/shm, which is 64 MiB in a container by default.
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],  # noqa: S108
    }
    if env_from:
        container["envFrom"] = env_from
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # The trainer talks to the database and the blob store, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        "containers": [container],
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}}],
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.node_selector:
        pod_spec["nodeSelector"] = dict(settings.node_selector)
    if settings.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in settings.tolerations]
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": name} for name in settings.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name_for_run(run_id), "namespace": settings.namespace, "labels": labels},
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "activeDeadlineSeconds": settings.active_deadline_seconds,
            "ttlSecondsAfterFinished": settings.ttl_seconds_after_finished,
            "podFailurePolicy": {
                "rules": [
                    # The trainer already wrote why the run failed: retrying would only repeat it.
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": CONTAINER_NAME,
                            "operator": "In",
                            "values": [TRAINER_EXIT_REPORTED_FAILURE],
                        },
                    },
                    # A preempted or evicted pod is the cluster's doing, not a trainer crash.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                ]
            },
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def job_observation_from(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> JobObservation:
    """Map a Job (and its pods, for the why) onto pending / running / succeeded / failed / missing."""
    name = job["metadata"]["name"]
    if job["metadata"].get("deletionTimestamp"):
        return JobObservation(JobPhase.MISSING, "JobDeleted", f"Job {name} is being deleted.")
    status = job.get("status") or {}
    true_conditions = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    if "Complete" in true_conditions or "SuccessCriteriaMet" in true_conditions:
        return JobObservation(JobPhase.SUCCEEDED, "JobSucceeded", f"Job {name} finished.")
    failed = true_conditions.get("Failed") or true_conditions.get("FailureTarget")
    if failed is not None:
        return _failure_observation(job, failed, pods)
    if status.get("ready"):
        return JobObservation(JobPhase.RUNNING, "PodRunning", f"The trainer pod of Job {name} is running.")
    return _pending_observation(name, pods)


def _failure_observation(
    job: Mapping[str, Any], failed: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]
) -> JobObservation:
    name = job["metadata"]["name"]
    spec = job.get("spec") or {}
    reason = failed.get("reason") or "JobFailed"
    if reason == "DeadlineExceeded":
        limit = spec.get("activeDeadlineSeconds")
        return JobObservation(
            JobPhase.FAILED,
            "DeadlineExceeded",
            f"Training ran longer than its time limit ({limit} seconds) and was stopped: lower max_epochs "
            "or raise ARBITER_K8S_ACTIVE_DEADLINE_SECONDS.",
        )
    terminations = [t for pod in pods for t in _terminations(pod)]
    if any(t.get("reason") == "OOMKilled" for t in terminations):
        limit = _memory_limit(spec)
        return JobObservation(
            JobPhase.FAILED,
            "OutOfMemory",
            f"The trainer ran out of memory{f' (limit {limit})' if limit else ''}: lower batch_size or "
            "max_tokens, or raise ARBITER_K8S_MEMORY.",
        )
    # With FallbackToLogsOnError the termination message is the tail of a crashed trainer's log.
    detail = next((t["message"] for t in terminations if t.get("message")), "") or failed.get("message", "")
    exit_codes = sorted({t["exitCode"] for t in terminations if "exitCode" in t})
    codes = f" (exit code {', '.join(map(str, exit_codes))})" if exit_codes else ""
    namespace = job["metadata"].get("namespace", "default")
    return JobObservation(
        JobPhase.FAILED,
        reason,
        f"Job {name} failed{codes}: {detail[-MESSAGE_DETAIL_CHARS:] or reason}. "
        f"Its logs: kubectl logs job/{name} -n {namespace}",
    )


def _pending_observation(name: str, pods: Sequence[Mapping[str, Any]]) -> JobObservation:
    for pod in pods:
        status = pod.get("status") or {}
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                return JobObservation(
                    JobPhase.PENDING,
                    condition.get("reason") or "Unschedulable",
                    f"No node can run the trainer yet: {condition.get('message', '')} Check "
                    "ARBITER_K8S_GPU_COUNT, ARBITER_K8S_NODE_SELECTOR and ARBITER_K8S_TOLERATIONS.",
                )
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting")
            if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                return JobObservation(
                    JobPhase.PENDING,
                    waiting["reason"],
                    f"The trainer container cannot start: {waiting['reason']}: {waiting.get('message', '')}",
                )
    return JobObservation(
        JobPhase.PENDING, "JobPending", f"Job {name} is waiting for its trainer pod to start."
    )


def _terminations(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = []
    for container in (pod.get("status") or {}).get("containerStatuses") or []:
        for state in (container.get("state"), container.get("lastState")):
            terminated = (state or {}).get("terminated")
            if terminated:
                found.append(terminated)
    return found


def _memory_limit(spec: Mapping[str, Any]) -> str:
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    return str(((containers[0].get("resources") or {}).get("limits") or {}).get("memory", ""))


def _api_message(exc: client.ApiException) -> str:
    """The `message` of the API server's Status answer, else the raw body."""
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.body)
    except ValueError:
        return str(exc.body)


def kubernetes_api_client() -> client.ApiClient:
    """The client as configured where the operator runs: in-cluster, else the kubeconfig (`KUBECONFIG`)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(self, *, settings: KubernetesSettings, api_client: client.ApiClient, owner: str) -> None:
        self.settings = settings
        self._owner = owner
        self._api_client = api_client
        self._batch = client.BatchV1Api(api_client)
        self._core = client.CoreV1Api(api_client)

    def launch(self, *, run_id: int, org_id: int) -> str:
        """Create the run's Job; when it already exists (a retry after a crash), adopt it."""
        manifest = job_manifest_build(run_id=run_id, org_id=org_id, owner=self._owner, settings=self.settings)
        name = manifest["metadata"]["name"]
        try:
            # The client sends a plain manifest as it is; its typing only knows the generated V1Job.
            self._batch.create_namespaced_job(namespace=self.settings.namespace, body=manifest)  # type: ignore[arg-type]
        except client.ApiException as exc:
            if exc.status in REFUSALS:
                raise LaunchError(
                    f"Kubernetes refused the trainer Job {name} in namespace {self.settings.namespace} "
                    f"({exc.status} {exc.reason}: {_api_message(exc)}). Check the ARBITER_K8S_* settings and "
                    "the operator's RBAC."
                ) from exc
            if exc.status != 409:
                raise
            existing = self._read_job(name)
            labels = (existing or {}).get("metadata", {}).get("labels") or {}
            if existing is not None and (labels.get(LABEL_RUN_ID), labels.get(LABEL_OWNER)) != (
                str(run_id),
                self._owner,
            ):
                raise RuntimeError(f"Job {name} exists but belongs to something else: {labels}") from exc
        return name

    def observe(self, handle: str, *, run_id: int) -> JobObservation:
        job = self._read_job(handle)
        if job is None:
            return JobObservation(
                JobPhase.MISSING,
                "JobDeleted",
                f"Job {handle} no longer exists in namespace {self.settings.namespace}.",
            )
        phase = job_observation_from(job, [])
        if phase.phase in (JobPhase.PENDING, JobPhase.FAILED):
            # Only a pending or failed Job needs its pods' detail (why unschedulable, OOM-killed ...).
            return job_observation_from(job, self._pods(handle))
        return phase

    def stop(self, handle: str, *, run_id: int) -> None:
        """Delete the Job and its pods; a Job already gone is what we wanted."""
        try:
            self._batch.delete_namespaced_job(
                name=handle, namespace=self.settings.namespace, propagation_policy="Background"
            )
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def owned(self) -> list[OwnedJob]:
        """Every Job this operator created in its namespace (finished ones linger until their TTL)."""
        selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_OWNER}={self._owner}"
        jobs = self._batch.list_namespaced_job(namespace=self.settings.namespace, label_selector=selector)
        owned = []
        for job in jobs.items:
            metadata = job.metadata
            # A Job someone labelled by hand without a usable run id is not ours to judge.
            run_id = ((metadata.labels if metadata else None) or {}).get(LABEL_RUN_ID, "")
            if metadata is not None and metadata.name and run_id.isdigit():
                phase = job_observation_from(self._api_client.sanitize_for_serialization(job), []).phase
                owned.append(
                    OwnedJob(
                        handle=metadata.name,
                        run_id=int(run_id),
                        live=phase in (JobPhase.PENDING, JobPhase.RUNNING),
                    )
                )
        return owned

    def _read_job(self, name: str) -> dict[str, Any] | None:
        try:
            job = self._batch.read_namespaced_job(name=name, namespace=self.settings.namespace)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._api_client.sanitize_for_serialization(job)

    def _pods(self, job_name: str) -> list[dict[str, Any]]:
        pods = self._core.list_namespaced_pod(
            namespace=self.settings.namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}"
        )
        return [self._api_client.sanitize_for_serialization(pod) for pod in pods.items]
