"""Micro-batching: concurrent requests to one loaded model share encoder runs, on every core.

`MicroBatcher` wraps the ML core's encoder runtime (ONNX Runtime or torch) and is itself an encoder
runtime, so a `Predictor` built on it works unchanged. Each call queues its texts and waits. A runner
thread takes the first queued call and gathers the calls queued behind it, up to `max_batch` texts, runs
the encoder once on all of them (one batched tokenisation, length-sorted batches inside the runtime) and
hands each call its rows back. The heads and decisions then run on the caller's thread, with the
caller's thresholds.

Several runners (one per core for ONNX Runtime) run batches side by side, and a call too large for one
core's fair share is cut into shares that different runners take: a lone caller's 64 texts use both
cores. While requests come one at a time, a call runs as soon as it arrives; once the last batch held
several calls (concurrent clients), a runner also waits up to `wait_s` for more before running.

A batch that runs alone (no other runner busy, nothing queued) runs on `lone`, where given: the same model
on a session with a thread per core. One text takes about 10 ms on one core of a 2-core box and about 6 ms
on both, so a lone client's latency falls by a third while concurrent traffic keeps one core per batch.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from arbiter.ml.predict import EncoderRuntime

log = logging.getLogger(__name__)

# A call is shared out among several runners only when each gets at least this many texts: below it,
# the hand-offs cost more than the second core saves.
MIN_SHARE = 16
# A share of a large call holds at most this many texts (or `max_batch`, if larger): enough for the runtime to
# sort them into batches of equal length, few enough that other callers' texts run between the shares.
MAX_SHARE = 32


@dataclass
class _Call:
    texts: Sequence[str]
    # The request this call is (a share of): shares of one request never go in the same batch.
    request: int
    done: threading.Event = field(default_factory=threading.Event)
    result: dict[str, np.ndarray] | None = None
    error: BaseException | None = None


class MicroBatcher:
    """An `EncoderRuntime` that batches concurrent calls into runs of the runtime it wraps."""

    def __init__(
        self,
        runtime: EncoderRuntime,
        *,
        max_batch: int,
        wait_s: float,
        label: str,
        runners: int = 1,
        lone: EncoderRuntime | None = None,
    ) -> None:
        self.runtime = runtime
        self.lone = lone
        self._busy = 0
        self.name = runtime.name
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._calls: deque[_Call] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._requests = itertools.count(1)
        # How well requests are being batched (for logs and the benchmark).
        self.batches = 0
        self.calls = 0
        self._last_batch_calls = 0
        self._runners = [
            threading.Thread(target=self._run, name=f"batcher:{label}:{n}", daemon=True)
            for n in range(runners)
        ]
        for runner in self._runners:
            runner.start()

    def _shares(self, texts: Sequence[str]) -> list[Sequence[str]]:
        runners = len(self._runners)
        if runners == 1 or len(texts) < runners * MIN_SHARE:
            return [texts]
        parts = max(runners, -(-len(texts) // max(self.max_batch, MAX_SHARE)))
        size = -(-len(texts) // parts)
        return [texts[start : start + size] for start in range(0, len(texts), size)]

    def encoder_logits(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        request = next(self._requests)
        calls = [_Call(texts=share, request=request) for share in self._shares(texts)]
        with self._ready:
            closed = self._closed
            if not closed:
                self._calls.extend(calls)
                self._ready.notify(len(calls))
        if closed:
            # The model was unloaded while this request held it: serve it here rather than drop it.
            return self.runtime.encoder_logits(texts)
        for call in calls:
            call.done.wait()
            if call.error is not None:
                raise call.error
        results = [call.result for call in calls if call.result is not None]
        if len(results) == 1:
            return results[0]
        return {head: np.concatenate([result[head] for result in results]) for head in results[0]}

    def close(self) -> None:
        """Finish the queued calls, then stop the runners; later calls run on their caller's thread."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def _next_batch(self) -> tuple[list[_Call], bool] | None:
        """The calls a runner runs next, and whether they run alone (no other runner busy, nothing queued);
        None once the batcher is closed and nothing is left."""
        with self._ready:
            while not self._calls:
                if self._closed:
                    return None
                self._ready.wait()
            first = self._calls.popleft()
            batch, size, requests = [first], len(first.texts), {first.request}
            deadline = time.monotonic() + (self.wait_s if self._last_batch_calls > 1 else 0.0)
            while size < self.max_batch:
                if not self._calls:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        break
                    self._ready.wait(remaining)
                    continue
                if self._calls[0].request in requests:
                    break  # another share of a request in this batch: it is for another runner
                call = self._calls.popleft()
                batch.append(call)
                size += len(call.texts)
                requests.add(call.request)
            self._busy += 1
            return batch, self._busy == 1 and not self._calls

    def _run(self) -> None:
        while (taken := self._next_batch()) is not None:
            batch, alone = taken
            try:
                self._run_calls(batch, self.lone if alone and self.lone is not None else self.runtime)
            finally:
                with self._ready:
                    self._busy -= 1
        log.debug("batcher runner stopped", extra={"batches": self.batches, "calls": self.calls})

    def _run_calls(self, calls: list[_Call], runtime: EncoderRuntime) -> None:
        texts = [text for call in calls for text in call.texts]
        try:
            logits = runtime.encoder_logits(texts)
        except Exception as error:
            # The error is the caller's to report; the batcher keeps serving.
            for call in calls:
                call.error = error
                call.done.set()
            return
        with self._ready:
            self.batches += 1
            self.calls += len(calls)
            self._last_batch_calls = len(calls)
        start = 0
        for call in calls:
            end = start + len(call.texts)
            call.result = {head: values[start:end] for head, values in logits.items()}
            start = end
            call.done.set()
