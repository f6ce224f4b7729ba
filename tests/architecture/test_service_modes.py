"""A process started with ARBITER_SERVICES=dataset answers dataset URLs and 404s the others."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.core.management.base import CommandError

from arbiter.config.management.commands.serve import bind_arguments
from arbiter.config.services import ServiceConfigError, parse_services


def test_parse_services() -> None:
    assert parse_services("all")[0] == "gateway"
    assert parse_services(" inference , training") == ("training", "inference")
    with pytest.raises(ServiceConfigError, match="unknown services"):
        parse_services("dataset,search")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, key: str | None = None) -> tuple[int, dict]:
    headers = {"Accept": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.mark.slow
def test_dataset_only_process_serves_dataset_urls_and_404s_the_rest(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "ARBITER_DB_NAME"))}
    env.update(ARBITER_HOME=str(tmp_path), ARBITER_SERVICES="all")  # SQLite files under a private home
    arbiter = [sys.executable, "-m", "arbiter.cli"]
    subprocess.run([*arbiter, "migrate"], env=env, check=True, capture_output=True)
    boot = json.loads(
        subprocess.run(
            [*arbiter, "bootstrap", "--org", "modes", "--email", "m@example.com"],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    port = _free_port()
    env["ARBITER_SERVICES"] = "dataset"
    server = subprocess.Popen(
        [*arbiter, "serve", "--services", "dataset", "--bind", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                status, health = _get(f"{base}/healthz")
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the dataset-only server did not start")
        assert status == 200 and health["services"] == ["dataset"]
        key = boot["api_key"]
        status, body = _get(f"{base}/api/v1/orgs/modes/datasets", key)
        assert status == 200, body
        for other in [
            "/api/v1/me",
            "/api/v1/orgs/modes/members",
            "/api/v1/orgs/modes/models",
            "/api/v1/orgs/modes/deployments",
            "/console/",
        ]:
            status, body = _get(base + other, key)
            assert status == 404, (other, status, body)
        status, ready = _get(f"{base}/readyz")
        assert status == 200 and set(ready["checks"]) >= {"database:dataset", "database:default"}
    finally:
        server.terminate()
        server.wait(timeout=15)


@pytest.mark.parametrize(
    ("bind", "arguments"),
    [
        ("127.0.0.1:8000", ["--host", "127.0.0.1", "--port", "8000"]),
        ("0.0.0.0:8000", ["--host", "0.0.0.0", "--port", "8000"]),  # noqa: S104 - the chart's bind
        ("[::1]:9000", ["--host", "::1", "--port", "9000"]),
        ("unix:/run/arbiter.sock", ["--uds", "/run/arbiter.sock"]),
    ],
)
def test_serve_passes_a_bind_to_the_web_server(bind: str, arguments: list[str]) -> None:
    assert bind_arguments(bind) == arguments


def test_serve_refuses_a_bind_without_a_port() -> None:
    with pytest.raises(CommandError, match="--bind must be HOST:PORT"):
        bind_arguments("localhost")


def test_serve_becomes_granian_serving_wsgi_with_the_threads_asked_and_marks_its_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from django.core.management import call_command

    from arbiter.config.management.commands.serve import WEB_SERVER_VARIABLE

    became: list[list[str]] = []

    class Replaced(Exception):
        pass

    def execv(path: str, argv: list[str]) -> None:  # the process would become the web server here
        became.append(argv)
        raise Replaced

    monkeypatch.setattr(os, "execv", execv)
    monkeypatch.setenv(WEB_SERVER_VARIABLE, "")
    monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    monkeypatch.setenv("ARBITER_SERVICES", os.environ.get("ARBITER_SERVICES", "all"))
    with pytest.raises(Replaced):
        call_command("serve", "--bind", "127.0.0.1:8123", "--threads", "5", "--workers", "2")
    argv = became[0]
    assert argv[1:6] == ["-m", "granian", "--interface", "wsgi", "arbiter.config.wsgi:application"]
    assert argv[argv.index("--port") + 1] == "8123" and argv[argv.index("--blocking-threads") + 1] == "5"
    assert argv[argv.index("--workers") + 1] == "2" and "--respawn-failed-workers" in argv
    # The web server inherits the mark that makes inference preload live deployments there.
    assert os.environ[WEB_SERVER_VARIABLE] == "granian"
    # The micro-batcher's runners take a core each: the tokenizer's own thread pool would only contend with them.
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
