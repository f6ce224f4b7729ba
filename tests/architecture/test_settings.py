"""The typed settings: read from the environment at start, refused with the variable named, overridden in tests
through one fixture."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from arbiter.config.typed_settings import SettingsError, arbiter_settings, load_settings
from arbiter.storage import LocalBlobStore, get_blob_store
from arbiter.testing.plugin import REPO_ROOT
from services.dataset import conf as dataset_conf


def test_defaults_are_the_documented_ones(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in [n for n in os.environ if n.startswith(("ARBITER_", "KAFKA_", "DATABASE_URL", "OTEL_"))]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    typed = load_settings()
    assert typed.core.env == "development" and typed.core.django_allowed_hosts == ["*"]
    assert typed.core.home == tmp_path / ".arbiter"
    assert typed.web.bind == "127.0.0.1:8000" and (typed.web.workers, typed.web.threads) == (1, 32)
    assert typed.databases.service_database("dataset")["NAME"] == str(
        tmp_path / ".arbiter/db/dataset.sqlite3"
    )
    assert typed.storage.blob_store == str(tmp_path / ".arbiter" / "blobs")
    assert typed.events.bootstrap_servers is None and typed.events.partitions == 4
    assert typed.kafka.client_config() == {"security_protocol": "PLAINTEXT"}
    assert typed.training.trainer_slots == 1
    assert typed.dataset.max_upload_bytes == 512 * 1024 * 1024
    assert typed.inference.artifact_cache == tmp_path / ".arbiter" / "inference" / "artifacts"
    assert typed.inference.preload is None
    assert not typed.telemetry.tracing_requested


def test_every_wrong_value_is_reported_at_once_naming_its_variable() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings(
            {
                "ARBITER_WEB_WORKERS": "two",
                "ARBITER_SERVICES": "dataset,shop",
                "ARBITER_INFERENCE_RUNTIME": "gpu",
                "ARBITER_EVENTS_MAX_ATTEMPTS": "0",
            }
        )
    message = str(error.value)
    assert "ARBITER_WEB_WORKERS: input should be a valid integer" in message
    assert "ARBITER_SERVICES: names unknown services ['shop']" in message
    assert "ARBITER_INFERENCE_RUNTIME: input should be 'auto', 'onnx' or 'torch', got 'gpu'" in message
    assert "ARBITER_EVENTS_MAX_ATTEMPTS: input should be greater than or equal to 1" in message


def test_secrets_are_not_repeated_in_errors() -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({"DATABASE_URL": "mysql://admin:hunter2@db/arbiter"})
    assert "DATABASE_URL: must be a postgres://" in str(error.value)
    assert "hunter2" not in str(error.value)


def test_production_needs_a_secret_key_and_refuses_debug() -> None:
    with pytest.raises(SettingsError, match="ARBITER_SECRET_KEY is required when ARBITER_ENV=production"):
        load_settings({"ARBITER_ENV": "production", "ARBITER_SECRET_KEY": None})
    with pytest.raises(SettingsError, match="ARBITER_DEBUG must not be on when ARBITER_ENV=production"):
        load_settings({"ARBITER_ENV": "production", "ARBITER_SECRET_KEY": "s" * 50, "ARBITER_DEBUG": "true"})
    production = load_settings({"ARBITER_ENV": "production", "ARBITER_SECRET_KEY": "s" * 50})
    assert production.core.django_allowed_hosts == []


def test_an_unknown_override_is_refused() -> None:
    with pytest.raises(SettingsError, match="ARBITER_PLAYGROUND_QUERIES"):
        load_settings({"ARBITER_PLAYGROUND_QUERIES": 3})


def test_a_process_with_a_wrong_variable_does_not_start() -> None:
    env = {**os.environ, "ARBITER_INFERENCE_MAX_BATCH": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "arbiter.cli", "check"], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "ARBITER_INFERENCE_MAX_BATCH: input should be greater than or equal to 1, got '0'" in result.stderr


def test_database_urls_become_one_database_per_service() -> None:
    databases = load_settings(
        {
            "DATABASE_URL": "postgres://app:p%40ss@db.internal:6432/moderation?sslmode=require",
            "DATABASE_URL_TRAINING": "postgresql://trainer@gpu-db/training",
        }
    ).databases
    dataset = databases.service_database("dataset")
    assert (dataset["NAME"], dataset["USER"], dataset["PASSWORD"]) == ("moderation_dataset", "app", "p@ss")
    assert (dataset["HOST"], dataset["PORT"], dataset["OPTIONS"]) == (
        "db.internal",
        6432,
        {"sslmode": "require"},
    )
    assert databases.service_database("training")["HOST"] == "gpu-db"
    assert databases.service_database("training")["NAME"] == "training"
    prefixed = load_settings({"DATABASE_URL": "postgres://h/moderation", "ARBITER_DB_NAME": "run7"}).databases
    assert prefixed.service_database("billing")["NAME"] == "run7_billing"


def test_the_override_fixture_reaches_every_reader(override_arbiter_settings: Any, tmp_path: Path) -> None:
    before = arbiter_settings().billing.playground_free_queries
    typed = override_arbiter_settings(
        ARBITER_PLAYGROUND_FREE_QUERIES=before + 1, ARBITER_IMPORT_MAX_ROWS=7, ARBITER_HOME=str(tmp_path)
    )
    assert arbiter_settings() is typed
    assert arbiter_settings().billing.playground_free_queries == before + 1
    assert dataset_conf.setting("ARBITER_IMPORT_MAX_ROWS") == 7
    store = get_blob_store()
    assert isinstance(store, LocalBlobStore) and store.root == tmp_path / "blobs"
    repeated = django_settings.ARBITER_HOME  # the Django setting that repeats it follows
    assert repeated == tmp_path
    override_arbiter_settings(ARBITER_IMPORT_MAX_ROWS=8)  # calls add up
    assert arbiter_settings().billing.playground_free_queries == before + 1
    assert dataset_conf.setting("ARBITER_IMPORT_MAX_ROWS") == 8
    with pytest.raises(SettingsError, match="ARBITER_IMPORT_MAX_ROWS"):
        override_arbiter_settings(ARBITER_IMPORT_MAX_ROWS="many")


def test_the_settings_read_once_follow_a_replacement_and_its_end() -> None:
    """`arbiter_settings()` keeps the object it read (a read through Django's settings cost 8 us on the request
    path): a replacement made through Django is seen at once, and so is its end."""
    from django.test import override_settings

    original = arbiter_settings()
    assert arbiter_settings() is original  # read once, kept
    replacement = load_settings({"ARBITER_PLAYGROUND_FREE_QUERIES": 41})
    with override_settings(ARBITER=replacement):
        assert arbiter_settings() is replacement
        assert arbiter_settings().billing.playground_free_queries == 41
    assert arbiter_settings() is original
