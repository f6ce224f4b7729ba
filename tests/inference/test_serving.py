"""Micro-batching and the memory-bounded model cache."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from arbiter.storage import get_blob_store
from services.inference.serving.batcher import MicroBatcher
from services.inference.serving.cache import ModelCache


class GatedRuntime:
    """An encoder runtime whose first call waits for a gate, so that others queue up behind it.

    Its "logits" per text are the text's length and its position in the batch.
    """

    name = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def encoder_logits(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        first = not self.entered.is_set()
        self.entered.set()
        if first:
            self.gate.wait(timeout=30)
        self.batches.append(list(texts))
        if any(text == "boom" for text in texts):
            raise RuntimeError("the runtime failed")
        return {"head": np.array([[len(text), i] for i, text in enumerate(texts)], dtype=np.float32)}


def test_concurrent_calls_share_encoder_batches_and_each_gets_its_own_rows() -> None:
    runtime = GatedRuntime()
    batcher = MicroBatcher(runtime, max_batch=8, wait_s=0.0, label="test")
    answers: dict[int, np.ndarray] = {}

    def call(n: int) -> None:
        answers[n] = batcher.encoder_logits(["x" * n, "y" * (n + 100)] if n % 2 else ["z" * n])["head"]

    threads = [threading.Thread(target=call, args=(n,)) for n in range(1, 17)]
    threads[0].start()
    assert runtime.entered.wait(timeout=30)
    for thread in threads[1:]:
        thread.start()
    deadline = time.monotonic() + 30
    while len(batcher._calls) < 15 and time.monotonic() < deadline:
        time.sleep(0.001)
    runtime.gate.set()
    for thread in threads:
        thread.join()
    batcher.close()

    # The first call ran alone; the 15 that queued behind it ran in batches of at most 8 texts (+ one call).
    assert [len(batch) for batch in runtime.batches][0] == 2
    assert len(runtime.batches) <= 5 and sum(len(batch) for batch in runtime.batches) == 24
    for n, rows in answers.items():
        expected = [n, n + 100] if n % 2 else [n]
        assert rows[:, 0].tolist() == expected


class GatedTokenRuntime(GatedRuntime):
    """A gated runtime that takes token ids (one per word), as ONNX Runtime does: the batcher tokenises queued
    calls and batches them by length."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenised: list[tuple[str, int]] = []

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        self.tokenised.append((threading.current_thread().name, len(texts)))
        return [[len(word) for word in text.split()] for text in texts]

    def encoder_logits_ids(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        return self.encoder_logits([" ".join("x" * token for token in row) for row in ids])


def run_queued_in_order(
    runtime: GatedRuntime, batcher: MicroBatcher, threads: list[threading.Thread]
) -> None:
    """The first thread's call held at the gate, the others queued behind it one after another; then all run."""
    threads[0].start()
    assert runtime.entered.wait(timeout=30)
    for queued, thread in enumerate(threads[1:], start=1):
        thread.start()
        deadline = time.monotonic() + 30
        while len(batcher._calls) < queued and time.monotonic() < deadline:
            time.sleep(0.001)
    runtime.gate.set()
    for thread in threads:
        thread.join()
    batcher.close()


def test_queued_calls_are_batched_with_the_oldest_by_length_and_each_gets_its_own_rows() -> None:
    runtime = GatedTokenRuntime()
    batcher = MicroBatcher(runtime, max_batch=4, wait_s=0.0, label="test")
    answers: dict[int, np.ndarray] = {}

    def text(n: int) -> str:
        # Calls alternate between short texts (2 to 3 tokens) and long ones (20 to 21), each word n letters.
        return " ".join(["y" * n] * ((2 if n % 2 else 20) + n % 4 // 2))

    def call(n: int) -> None:
        answers[n] = batcher.encoder_logits([text(n)])["head"]

    threads = [threading.Thread(target=call, args=(n,), name=f"caller-{n}") for n in range(1, 18)]
    run_queued_in_order(runtime, batcher, threads)

    # The runner tokenised the 16 queued texts in one run, and each call kept its ids until its batch.
    assert runtime.tokenised == [("batcher:test:0", 16)]
    # After the first call (alone at the gate), each batch holds the oldest queued call and the queued calls
    # nearest to it in length: all short or all long, never padded to the other kind.
    lengths = [[len(text.split()) for text in batch] for batch in runtime.batches]
    assert [len(batch) for batch in lengths] == [1, 4, 4, 4, 4]
    assert all(max(batch) - min(batch) <= 1 for batch in lengths), lengths
    # The oldest call waiting leads each batch (no call waits behind later ones of another length).
    assert [len(batch[0].split()[0]) for batch in runtime.batches] == [1, 2, 3, 4, 5]
    # Every caller got its own row back: the word length is its number.
    for n, rows in answers.items():
        assert rows[:, 0].tolist() == [len(text(n))]


def test_calls_whose_tokenising_fails_still_run_and_are_answered() -> None:
    class Untokenisable(GatedTokenRuntime):
        def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
            raise ValueError("the tokenizer failed")

    runtime = Untokenisable()
    batcher = MicroBatcher(runtime, max_batch=4, wait_s=0.0, label="test")
    answers: dict[int, np.ndarray] = {}
    threads = [
        threading.Thread(target=lambda n=n: answers.update({n: batcher.encoder_logits(["x" * n])["head"]}))
        for n in range(1, 6)
    ]
    run_queued_in_order(runtime, batcher, threads)
    # Run by their texts instead, in arrival order.
    assert runtime.batches == [["x"], ["xx", "xxx", "xxxx", "xxxxx"]]
    assert {n: rows[:, 0].tolist() for n, rows in answers.items()} == {n: [n] for n in range(1, 6)}


def test_several_runners_serve_a_call_while_another_batch_is_still_running() -> None:
    runtime = GatedRuntime()
    batcher = MicroBatcher(runtime, max_batch=8, wait_s=0.0, label="test", runners=2)
    slow = threading.Thread(target=batcher.encoder_logits, args=(["first"],))
    slow.start()
    assert runtime.entered.wait(timeout=30)
    # The first batch is held at the gate; the second runner answers this call meanwhile.
    assert batcher.encoder_logits(["second"])["head"].tolist() == [[6.0, 0.0]]
    runtime.gate.set()
    slow.join()
    batcher.close()


def test_a_lone_large_call_is_shared_out_among_the_runners_and_answered_in_order() -> None:
    runtime = GatedRuntime()
    batcher = MicroBatcher(runtime, max_batch=32, wait_s=0.0, label="test", runners=2)
    texts = ["x" * n for n in range(1, 41)]
    answer: dict[str, np.ndarray] = {}
    caller = threading.Thread(target=lambda: answer.update(batcher.encoder_logits(texts)))
    caller.start()
    # One runner holds the first half at the gate while the other runs the second half.
    deadline = time.monotonic() + 30
    while not runtime.batches and time.monotonic() < deadline:
        time.sleep(0.001)
    assert runtime.batches == [texts[20:]]
    runtime.gate.set()
    caller.join()
    batcher.close()
    assert answer["head"][:, 0].tolist() == list(range(1, 41))


def test_a_large_call_is_shared_out_in_shares_of_up_to_32_texts_whatever_the_micro_batch() -> None:
    runtime = GatedRuntime()
    runtime.gate.set()
    batcher = MicroBatcher(runtime, max_batch=8, wait_s=0.0, label="test", runners=2)
    texts = ["x" * n for n in range(1, 65)]
    answer = batcher.encoder_logits(texts)
    batcher.close()
    # Two shares of 32 (the runtime sorts each into equal lengths), not eight padded runs of 8.
    assert sorted(len(batch) for batch in runtime.batches) == [32, 32]
    assert answer["head"][:, 0].tolist() == list(range(1, 65))


def test_a_batch_that_runs_alone_takes_the_all_core_session_and_one_with_company_keeps_its_core() -> None:
    per_core, all_cores = GatedRuntime(), GatedRuntime()
    all_cores.gate.set()
    batcher = MicroBatcher(per_core, max_batch=8, wait_s=0.0, label="test", runners=2, lone=all_cores)
    # Nothing else running: a lone client's call runs on every core.
    assert batcher.encoder_logits(["alone"])["head"].tolist() == [[5.0, 0.0]]
    assert (all_cores.batches, per_core.batches) == ([["alone"]], [])
    # While that session holds a batch (held at its gate), the next call takes the per-core session.
    all_cores.entered.clear()
    all_cores.gate.clear()
    slow = threading.Thread(target=batcher.encoder_logits, args=(["first"],))
    slow.start()
    assert all_cores.entered.wait(timeout=30)
    per_core.gate.set()
    assert batcher.encoder_logits(["second"])["head"].tolist() == [[6.0, 0.0]]
    assert per_core.batches == [["second"]]
    all_cores.gate.set()
    slow.join()
    batcher.close()
    assert all_cores.batches == [["alone"], ["first"]]


def test_a_failing_batch_fails_its_callers_and_the_batcher_keeps_serving() -> None:
    runtime = GatedRuntime()
    runtime.gate.set()
    batcher = MicroBatcher(runtime, max_batch=8, wait_s=0.0, label="test")
    with pytest.raises(RuntimeError, match="the runtime failed"):
        batcher.encoder_logits(["boom"])
    assert batcher.encoder_logits(["fine"])["head"].tolist() == [[4.0, 0.0]]
    batcher.close()
    # A call that arrives after the batcher closed (its model was unloaded) is still answered.
    assert batcher.encoder_logits(["late"])["head"].tolist() == [[4.0, 0.0]]


def test_the_cache_unloads_the_least_recently_used_model_beyond_its_budget_and_reloads_on_demand(
    artifact_blob: bytes, artifact_key: str
) -> None:
    other_key = "artifacts/tests/toxicity-topic-copy.tar.gz"
    get_blob_store().put_bytes(other_key, artifact_blob)
    cache = ModelCache(budget_bytes=1)  # room for one model at a time, whatever its size
    try:
        first = cache.get(artifact_key)
        assert first.classify(["you are an idiot"])[0]["toxicity"]["label"] == "toxic"
        assert cache.get(artifact_key) is first
        second = cache.get(other_key)
        assert cache.keys() == [other_key]
        # The evicted model still answers a request that held it, then a new request loads it again.
        assert first.classify(["have a nice day"])[0]["toxicity"]["label"] == "safe"
        again = cache.get(artifact_key)
        assert again is not first and cache.keys() == [artifact_key]
        assert second.size_bytes > 0 and cache.used_bytes() == again.size_bytes
    finally:
        cache.clear()


def test_onnx_models_batch_8_texts_at_a_time_unless_the_setting_says_otherwise(
    artifact_key: str, override_arbiter_settings: Any
) -> None:
    cache = ModelCache(budget_bytes=10**10)
    try:
        loaded = cache.get(artifact_key)
        assert loaded.runtime.startswith("onnx") and loaded.batcher is not None
        assert loaded.batcher.max_batch == 8
    finally:
        cache.clear()
    override_arbiter_settings(ARBITER_INFERENCE_MAX_BATCH="24")
    cache = ModelCache(budget_bytes=10**10)
    try:
        batcher = cache.get(artifact_key).batcher
        assert batcher is not None and batcher.max_batch == 24
    finally:
        cache.clear()
