"""A real Arbiter for the end-to-end tests, deployed as production deploys it: `arbiter up --split`.

Each service runs in its own processes (web, outbox relay, consumers; the training operator) with
`ARBITER_SERVICES` naming only that service, on PostgreSQL with one database per service, behind nginx
routing by the route table, with the embedded Kafka-compatible broker. One instance serves the whole test
session; its logs are copied beside the screenshots in `test-artifacts/e2e/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from psycopg import sql

from arbiter.config.nginx import nginx_binary
from arbiter.config.services import ALL_SERVICES

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "test-artifacts" / "e2e"
POSTGRES = "postgres://postgres@127.0.0.1:5432"


@dataclass(frozen=True)
class RunningArbiter:
    base: str
    home: Path
    env: dict[str, str]

    @property
    def demo(self) -> dict[str, str]:
        return dict(json.loads((self.home / "demo.json").read_text()))

    def cli(self, *args: str, services: str = "all") -> str:
        """Run an `arbiter` command against this installation; returns its standard output."""
        env = {**self.env, "ARBITER_SERVICES": services}
        done = subprocess.run(
            [sys.executable, "-m", "arbiter.cli", *args], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    what: str, check: Callable[[], bool], timeout_s: float, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"arbiter up --split exited ({process.returncode}) before {what}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            if check():
                return
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not happen within {timeout_s:.0f} s")


def answers(url: str, key: str) -> bool:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return False


def _drop_databases(prefix: str) -> None:
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        for service in ALL_SERVICES:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(f"{prefix}_{service}")
                )
            )


@pytest.fixture(scope="session")
def split_arbiter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningArbiter]:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed; `make test` installs it (Debian: apt-get install nginx)")
    home = tmp_path_factory.mktemp("arbiter-split")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    prefix = f"arbiter_e2e_{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "ARBITER_", "KAFKA_"))}
    env.update(
        ARBITER_HOME=str(home),
        ARBITER_PUBLIC_URL=base,
        DATABASE_URL=f"{POSTGRES}/{prefix}",
        ARBITER_OPERATOR_INTERVAL_SECONDS="1",
        # Webhook receivers of the tests listen on loopback, which the egress guard refuses by default.
        ARBITER_WEBHOOK_ALLOWED_NETWORKS="127.0.0.0/8",
        # So are the fake OpenAI-compatible endpoints of the labeling journey,
        ARBITER_LLM_ALLOWED_NETWORKS="127.0.0.0/8",
        # and the image server of the visual journey.
        ARBITER_FETCH_ALLOWED_NETWORKS="127.0.0.0/8",
        # A plan with two free playground queries per model, for the edge-enforcement journey (billing).
        ARBITER_BILLING_PLANS='{"tiny": {"label": "Tiny", "meters": {"playground": {"included": 2}}}}',
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
    )
    log = (home / "up.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "arbiter.cli", "up", "--split", "--bind", f"127.0.0.1:{port}"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for("the demo org", lambda: (home / "demo.json").exists(), 180, process)
        key = json.loads((home / "demo.json").read_text())["api_key"]
        # Every service's web process answers through nginx (each loads its own apps; torch takes a while).
        for path in ("/api/v1/me", "/datasets", "/models", "/deployments"):
            url = f"{base}{path}" if path.startswith("/api") else f"{base}/api/v1/orgs/demo{path}"
            wait_for(f"{url} to answer", lambda url=url: answers(url, key), 240, process)
        yield RunningArbiter(base=base, home=home, env=env)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        # The logs sit beside the screenshots: a failed journey says where it stopped.
        (ARTIFACTS / "up.log").write_bytes((home / "up.log").read_bytes()[-400_000:])
        for name in ("error.log", "access.log"):
            source = home / "nginx" / name
            if source.exists():
                (ARTIFACTS / f"nginx-{name}").write_bytes(source.read_bytes()[-200_000:])
        _drop_databases(prefix)


# --- what several journeys do: an org for a script, a small moderation CSV, a model trained on it -----------------

TOXIC = ["you are an idiot", "shut up you moron", "i hate you loser", "you stupid fool", "get lost jerk"]
SAFE = [
    "have a nice day",
    "thanks for the help",
    "the weather is lovely",
    "see you tomorrow",
    "great article",
]


def comments_csv() -> bytes:
    lines = ["comment,toxicity"]
    for i in range(60):
        toxic = i % 2 == 0
        lines.append(f"{(TOXIC if toxic else SAFE)[(i // 2) % 5]} ({i}),{'toxic' if toxic else 'safe'}")
    return ("\n".join(lines) + "\n").encode()


def poll(what: str, fetch: Any, done: Any, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = fetch()
        if done(last):
            return last
        time.sleep(1)
    raise AssertionError(
        f"{what} did not happen within {timeout_s:.0f} s; last seen: {json.dumps(last)[:2000]}"
    )


@dataclass
class ScriptedOrg:
    """An org bootstrapped for a script, with a requests session carrying its API key."""

    org: str
    password: str
    api_key: str
    api: requests.Session
    url: str

    def train_head_model(self, name: str, *, max_epochs: int = 3) -> tuple[int, dict[str, Any]]:
        """Upload the CSV, snapshot it, create a model at once (the snapshot may still be on its way to the
        training service) and wait for version 1 to succeed; returns the model id and the version."""
        uploaded = self.api.post(
            f"{self.url}/datasets", files={"file": ("comments.csv", comments_csv(), "text/csv")}
        )
        assert uploaded.status_code == 201, uploaded.text
        snapshot = self.api.post(
            f"{self.url}/datasets/{uploaded.json()['id']}/snapshots", json={"test_percent": 20, "seed": 1}
        )
        assert snapshot.status_code == 201, snapshot.text
        created = self.api.post(
            f"{self.url}/models",
            json={
                "name": name,
                "snapshots": [snapshot.json()["id"]],
                "options": {"strategy": "head", "max_epochs": max_epochs},
            },
        )
        assert created.status_code == 201, created.text
        model_id = int(created.json()["model"]["id"])
        version = poll(
            "training",
            lambda: self.api.get(f"{self.url}/models/{model_id}/versions/1").json(),
            lambda v: v["run"]["state"] in ("succeeded", "failed", "cancelled"),
            300,
        )
        assert version["run"]["state"] == "succeeded", version["run"]["conditions"]
        return model_id, version


def scripted_org(arbiter: RunningArbiter, slug: str, email: str) -> ScriptedOrg:
    """`arbiter bootstrap` (run as the gateway alone) gives the org, its owner and an API key."""
    made = json.loads(arbiter.cli("bootstrap", "--org", slug, "--email", email, services="gateway"))
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {made['api_key']}"
    return ScriptedOrg(
        made["org"], made["password"], made["api_key"], session, f"{arbiter.base}/api/v1/orgs/{made['org']}"
    )
