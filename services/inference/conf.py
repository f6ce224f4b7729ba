"""The inference service's settings, read from the environment (listed in this service's README.md).

Read once per process; tests that change a variable call `inference_settings.cache_clear()`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

from arbiter.config.env import SettingsError, arbiter_home, env_bool, env_int, env_str

RUNTIMES = ("auto", "onnx", "torch")


@dataclass(frozen=True)
class InferenceSettings:
    # Loaded models of one process share this budget; the least recently used ones are unloaded beyond it.
    memory_mb: int
    max_inputs: int
    max_input_chars: int
    # Micro-batching: concurrent requests to one model run together, up to `max_batch` texts, waiting at
    # most `batch_wait_ms` for company once a request arrives.
    max_batch: int
    batch_wait_ms: float
    runtime: str
    # ONNX Runtime runs one batch per runner thread at a time, each with `threads` intra-op threads.
    runners: int
    threads: int
    artifact_cache: Path
    # None: warm live deployments in web servers only (gunicorn); True/False forces it on or off.
    preload: bool | None
    playground_free_queries: int
    log_retention_days: int
    max_log_retention_days: int


def _env_float(name: str, default: float) -> float:
    value = env_str(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {value!r}") from None


def _preload() -> bool | None:
    value = env_str("ARBITER_INFERENCE_PRELOAD", "auto")
    return None if value == "auto" else env_bool("ARBITER_INFERENCE_PRELOAD")


@functools.cache
def inference_settings() -> InferenceSettings:
    runtime = env_str("ARBITER_INFERENCE_RUNTIME", "auto") or "auto"
    if runtime not in RUNTIMES:
        raise SettingsError(
            f"ARBITER_INFERENCE_RUNTIME must be one of {', '.join(RUNTIMES)}, got {runtime!r}"
        )
    settings = InferenceSettings(
        memory_mb=env_int("ARBITER_INFERENCE_MEMORY_MB", 2048),
        max_inputs=env_int("ARBITER_INFERENCE_MAX_INPUTS", 256),
        max_input_chars=env_int("ARBITER_INFERENCE_MAX_INPUT_CHARS", 20_000),
        max_batch=env_int("ARBITER_INFERENCE_MAX_BATCH", 32),
        batch_wait_ms=_env_float("ARBITER_INFERENCE_BATCH_WAIT_MS", 1.5),
        runtime=runtime,
        runners=env_int("ARBITER_INFERENCE_RUNNERS", max(1, min(4, os.cpu_count() or 1))),
        threads=env_int("ARBITER_INFERENCE_THREADS", 1),
        artifact_cache=Path(
            env_str("ARBITER_INFERENCE_ARTIFACT_CACHE") or str(arbiter_home() / "inference" / "artifacts")
        ),
        preload=_preload(),
        playground_free_queries=env_int("ARBITER_PLAYGROUND_FREE_QUERIES", 500),
        log_retention_days=env_int("ARBITER_INFERENCE_LOG_RETENTION_DAYS", 30),
        max_log_retention_days=env_int("ARBITER_INFERENCE_MAX_LOG_RETENTION_DAYS", 365),
    )
    for name, value in [
        ("ARBITER_INFERENCE_MEMORY_MB", settings.memory_mb),
        ("ARBITER_INFERENCE_MAX_INPUTS", settings.max_inputs),
        ("ARBITER_INFERENCE_MAX_INPUT_CHARS", settings.max_input_chars),
        ("ARBITER_INFERENCE_MAX_BATCH", settings.max_batch),
        ("ARBITER_INFERENCE_RUNNERS", settings.runners),
        ("ARBITER_INFERENCE_THREADS", settings.threads),
    ]:
        if value < 1:
            raise SettingsError(f"{name} must be at least 1, got {value}")
    return settings
