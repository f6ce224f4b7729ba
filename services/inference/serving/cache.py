"""Loaded models of this process, kept within a memory budget (least recently used ones are unloaded).

A model is loaded once per artifact, whatever the number of deployments serving it: deployments of one
version share its runtime and micro-batcher and differ only in thresholds, which apply after the encoder.
A model not in memory (first request after a restart, or unloaded to make room) is loaded on demand; two
requests for the same missing model wait for one load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from arbiter.llm.policy import is_policy_artifact
from arbiter.ml.artifacts import TFIDF_FOLDER, WEIGHTS_FILE, Artifact
from arbiter.ml.model import HeadModel
from arbiter.ml.predict import OnnxRuntime, Predictor, TorchRuntime
from services.inference.conf import inference_settings
from services.inference.serving.artifacts import artifact_fetch
from services.inference.serving.batcher import MicroBatcher
from services.inference.serving.policy import policy_model_load

log = logging.getLogger(__name__)

Thresholds = Mapping[str, Mapping[str, float]]

# Runtimes hold more than their weight files (activation arenas, tokenizer, Python objects): loading MiniLM
# in ONNX Runtime and running 64-text batches grew resident memory by 1.3 to 2.1 times the model file.
MEMORY_PER_FILE_BYTE = 2.0

# Texts per micro-batch when ARBITER_INFERENCE_MAX_BATCH is unset. An ONNX Runtime runner runs on one core, where
# a text costs the same in a batch of 8 as of 32; with 32, one runner could take the whole queue while the other
# went idle (32 single-text clients: p99 73 ms against 59 with 8, benchmarks/bench_inference.py). Torch spreads
# one run over every core (or a GPU), which wants larger batches.
ONNX_MAX_BATCH = 8
TORCH_MAX_BATCH = 32


def _files_size(paths: Sequence[Path]) -> int:
    total = 0
    for path in paths:
        if path.is_dir():
            total += sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
        elif path.is_file():
            total += path.stat().st_size
    return total


def _runtime_label(predictor: Predictor, artifact: Artifact) -> str:
    runtime = predictor.runtime
    # Text (OnnxRuntime) and image (ImageRuntime) graphs both say which file they run.
    path = getattr(runtime, "path", None) if runtime is not None and runtime.name == "onnx" else None
    if path is not None:
        onnx = artifact.config.get("onnx") or {}
        for precision in ("int8", "fp32"):
            if onnx.get(precision) and artifact.path / onnx[precision] == path:
                return f"onnx-{precision}"
        return "onnx"
    if isinstance(runtime, TorchRuntime):
        return f"torch-{runtime.encoder.device.type}"
    return predictor.runtime_name


def _memory_estimate(predictor: Predictor, artifact: Artifact) -> int:
    files = [artifact.path / WEIGHTS_FILE, artifact.path / TFIDF_FOLDER]
    runtime = predictor.runtime
    if isinstance(runtime, OnnxRuntime):
        files.append(runtime.path)
    elif artifact.encoder_path is not None and runtime is not None:
        files.append(artifact.encoder_path)
    return int(_files_size(files) * MEMORY_PER_FILE_BYTE)


def predictor_load(artifact: Artifact, *, runtime: str, threads: int) -> Predictor:
    """The ML core's predictor for an artifact; when ONNX Runtime cannot load it, eager torch serves."""
    if runtime != "auto":
        predictor = Predictor.load(artifact, runtime=runtime, threads=threads)  # type: ignore[arg-type]
    else:
        try:
            predictor = Predictor.load(artifact, runtime="auto", threads=threads)
        except Exception:
            if artifact.encoder_path is None:
                raise
            log.warning(
                "ONNX Runtime could not load the artifact; serving it with eager torch", exc_info=True
            )
            predictor = Predictor.load(artifact, runtime="torch", threads=threads)
    return predictor


class LoadedModel:
    """One artifact in memory: its runtime behind a micro-batcher, and a predictor per set of thresholds."""

    def __init__(self, *, key: str, artifact: Artifact, predictor: Predictor) -> None:
        settings = inference_settings()
        self.key = key
        self.artifact = artifact
        self.runtime = _runtime_label(predictor, artifact)
        self.size_bytes = _memory_estimate(predictor, artifact)
        runtime = predictor.runtime
        # ONNX Runtime sessions take concurrent runs: one runner per core, each on one thread, beats one run
        # spread over the cores (small matrices parallelise poorly). Torch spreads each run over the cores.
        # A batch that runs alone gets a second session with a thread per runner (see MicroBatcher).
        onnx = isinstance(runtime, OnnxRuntime)
        lone = (
            runtime.sibling(threads=settings.runners)
            if isinstance(runtime, OnnxRuntime) and settings.runners > settings.threads
            else None
        )
        if lone is not None:
            self.size_bytes += int(_files_size([lone.path]) * MEMORY_PER_FILE_BYTE)
        self.batcher = (
            MicroBatcher(
                runtime,
                max_batch=settings.max_batch or (ONNX_MAX_BATCH if onnx else TORCH_MAX_BATCH),
                wait_s=settings.batch_wait_ms / 1000,
                runners=settings.runners if onnx else 1,
                label=key,
                lone=lone,
            )
            if runtime is not None
            else None
        )
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()

    @property
    def heads(self) -> list[HeadModel]:
        return self.artifact.model.heads

    @property
    def input_kind(self) -> str:
        """ "image" or "text": what the model classifies (a served policy answers "text")."""
        return self.predictor().input_kind

    def predictor(self, thresholds: Thresholds | None = None) -> Predictor:
        """A predictor deciding with the version's thresholds, overridden per head and label as given."""
        overrides = thresholds or {}
        cache_key = json.dumps(overrides, sort_keys=True)
        predictor = self._predictors.get(cache_key)
        if predictor is None:
            base = self.artifact.model
            heads = [
                dataclasses.replace(head, thresholds={**head.thresholds, **overrides.get(head.spec.name, {})})
                for head in base.heads
            ]
            predictor = Predictor(model=dataclasses.replace(base, heads=heads), runtime=self.batcher)
            with self._lock:
                predictor = self._predictors.setdefault(cache_key, predictor)
        return predictor

    def classify(
        self, texts: Sequence[str], thresholds: Thresholds | None = None
    ) -> list[dict[str, dict[str, Any]]]:
        return self.predictor(thresholds).predict(texts)

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()


def model_load(key: str) -> LoadedModel:
    """Fetch, load and warm the artifact stored under `key` (a policy version: its document, see
    `services.inference.serving.policy`)."""
    if is_policy_artifact(key):
        return cast(LoadedModel, policy_model_load(key))
    settings = inference_settings()
    artifact = artifact_fetch(key)
    predictor = predictor_load(artifact, runtime=settings.runtime, threads=settings.threads)
    loaded = LoadedModel(key=key, artifact=artifact, predictor=predictor)
    # The first inference initialises kernels and arenas: pay for it here, not in a user's request.
    loaded.predictor().warm_up()
    log.info("model loaded", extra={"artifact": key, "runtime": loaded.runtime, "bytes": loaded.size_bytes})
    return loaded


class ModelCache:
    def __init__(self, *, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> LoadedModel:
        """The loaded model for an artifact key, loading it (once, whoever asks meanwhile) if needed."""
        with self._lock:
            loaded = self._models.get(key)
            if loaded is not None:
                self._models.move_to_end(key)
                return loaded
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:
            with self._lock:
                loaded = self._models.get(key)
            if loaded is not None:
                return loaded
            try:
                loaded = model_load(key)
            except BaseException:
                with self._lock:
                    self._loading.pop(key, None)
                raise
            with self._lock:
                self._models[key] = loaded
                self._loading.pop(key, None)
                self._evict_beyond_budget(keep=key)
            return loaded

    def peek(self, key: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(key)

    def unload(self, key: str) -> bool:
        with self._lock:
            loaded = self._models.pop(key, None)
        if loaded is None:
            return False
        loaded.close()
        log.info("model unloaded", extra={"artifact": key})
        return True

    def keys(self) -> list[str]:
        """Loaded artifact keys, least recently used first."""
        with self._lock:
            return list(self._models)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(model.size_bytes for model in self._models.values())

    def _evict_beyond_budget(self, *, keep: str) -> None:
        # The model just loaded stays even when it alone exceeds the budget: it is the one being asked for.
        while len(self._models) > 1 and sum(m.size_bytes for m in self._models.values()) > self.budget_bytes:
            oldest = next(key for key in self._models if key != keep)
            evicted = self._models.pop(oldest)
            evicted.close()
            log.info("model unloaded to stay within the memory budget", extra={"artifact": oldest})

    def clear(self) -> None:
        with self._lock:
            models, self._models = list(self._models.values()), OrderedDict()
        for loaded in models:
            loaded.close()


_cache: ModelCache | None = None
_cache_lock = threading.Lock()


def model_cache() -> ModelCache:
    """This process's model cache, sized by `ARBITER_INFERENCE_MEMORY_MB`."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = ModelCache(budget_bytes=inference_settings().memory_mb * 1024 * 1024)
        return _cache
