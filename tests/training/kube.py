"""A Kubernetes API on loopback for the executor tests: the kmock emulator, served from a background thread.

The emulator stores what the client sends and serves it back; it runs no controllers. Tests play the Job
controller and the kubelet by writing Job status and pods through the same real client.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kmock
import yaml
from kubernetes import client


class SelectingEmulator(kmock.KubernetesEmulator):
    """kmock lists every object of a resource; a real API server honours `labelSelector` (equality form)."""

    async def _serve_list(self, request: kmock.Request) -> Any:
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector", "")
        if not selector:
            return listing
        wanted = dict(term.replace("==", "=").split("=", 1) for term in selector.split(","))
        listing["items"] = [
            item
            for item in listing["items"]
            if all((item.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]
        return listing


class KubeOnLoopback:
    def __init__(self, url: str, emulator: SelectingEmulator) -> None:
        self.url = url
        self.emulator = emulator
        configuration = client.Configuration()
        configuration.host = url
        self.api_client = client.ApiClient(configuration)
        self.batch = client.BatchV1Api(self.api_client)
        self.core = client.CoreV1Api(self.api_client)

    def kubeconfig(self, directory: Path) -> Path:
        """A kubeconfig file pointing at this emulator, for processes that load their own client."""
        path = directory / "kubeconfig"
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "test"}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "tester"}}],
                    "current-context": "kmock",
                }
            )
        )
        return path

    def job_status_set(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """What the Job controller would write."""
        self.batch.patch_namespaced_job_status(name=name, namespace=namespace, body={"status": dict(status)})

    def job_pod_add(self, namespace: str, job_name: str, status: Mapping[str, Any]) -> None:
        """A pod of the Job in the given state, as the Job controller and the kubelet would leave it."""
        existing = self.core.list_namespaced_pod(
            namespace, label_selector=f"batch.kubernetes.io/job-name={job_name}"
        )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{job_name}-{len(existing.items)}",
                "namespace": namespace,
                "labels": {"batch.kubernetes.io/job-name": job_name},
            },
            "spec": {"containers": [{"name": "trainer", "image": "unused"}]},
            "status": dict(status),
        }
        self.core.create_namespaced_pod(namespace=namespace, body=pod)


@contextmanager
def kube_on_loopback() -> Iterator[KubeOnLoopback]:
    ready = threading.Event()
    started: dict[str, Any] = {}

    async def serve() -> None:
        async with SelectingEmulator() as emulator, kmock.Server(emulator) as server:
            emulator.resources.load_bundled()
            started["stop"] = asyncio.Event()
            started["loop"] = asyncio.get_running_loop()
            started["kube"] = KubeOnLoopback(str(server.url).rstrip("/"), emulator)
            ready.set()
            await started["stop"].wait()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
    thread.start()
    if not ready.wait(timeout=30):
        raise RuntimeError("the kmock Kubernetes emulator did not start")
    try:
        yield started["kube"]
    finally:
        started["kube"].api_client.close()
        started["loop"].call_soon_threadsafe(started["stop"].set)
        thread.join(timeout=10)
