"""Micro-batching: concurrent requests to one loaded model share encoder runs, on every core.

`MicroBatcher` wraps the ML core's encoder runtime (ONNX Runtime or torch) and is itself an encoder
runtime, so a `Predictor` built on it works unchanged. Each call queues its texts and waits. A runner
thread takes the first queued call and gathers the calls queued behind it, up to `max_batch` texts, runs
the encoder once on all of them (length-sorted batches inside the runtime) and hands each call its rows back.
The heads and decisions then run on the caller's thread, with the caller's thresholds.

Where the runtime takes token ids (`TokenRuntime`: ONNX Runtime), a runner tokenises the queued calls (one
run of the tokenizer for all of them; a call keeps its ids until its batch) and fills its batch with those
nearest in length to the oldest one: a batch pads to its longest text, and eight single texts of 26 to 34
tokens taken in arrival order waste about a tenth of the model's time on padding (batches of like length ran
6% more texts a second in-process). The oldest call always goes first, so a call waits at most until the calls
queued before it have run. Tokenising on the runner, batched, rather than on each caller's thread: one text at a
time on 32 request threads cost about ten times its in-process time (the tokenizer's tables cold in the cache
each time), which ate the padding saved.

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
from typing import cast

import numpy as np

from arbiter.handoff import Handoff
from arbiter.ml.predict import EncoderRuntime, TokenRuntime

log = logging.getLogger(__name__)

# A call is shared out among several runners only when each gets at least this many texts: below it,
# the hand-offs cost more than the second core saves.
MIN_SHARE = 16
# A runner chooses a batch among at most this many queued calls (tokenised, by one run, outside the lock).
POOL_CALLS = 32
# A share of a large call holds at most this many texts (or `max_batch`, if larger): enough for the runtime to
# sort them into batches of equal length, few enough that other callers' texts run between the shares.
MAX_SHARE = 32


@dataclass
class _Call:
    texts: Sequence[str]
    # The request this call is (a share of): shares of one request never go in the same batch.
    request: int
    # Token ids of the texts, where the runtime takes them, and the longest's length (0 without).
    ids: Sequence[Sequence[int]] | None = None
    length: int = 0
    done: Handoff = field(default_factory=Handoff)
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
        # Batches are filled by length (the runner tokenising the queued calls) only where every runtime a batch
        # may run on takes ids.
        self._tokens = (
            runtime
            if isinstance(runtime, TokenRuntime) and (lone is None or isinstance(lone, TokenRuntime))
            else None
        )
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
            deadline = time.monotonic() + (self.wait_s if self._last_batch_calls > 1 else 0.0)
            # Wait for company until the queue could fill the batch (other shares of the first's request are
            # for other runners) or the wait is over.
            while self._company(first) + len(first.texts) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._ready.wait(remaining)
            self._busy += 1
            if self._tokens is None or len(first.texts) >= self.max_batch or not self._calls:
                batch = self._fill(first, list(self._calls))
                self._take(batch)
                return batch, self._busy == 1 and not self._calls
            # Out of the queue while they are tokenised (outside the lock), the unchosen back to its head after.
            pool = [self._calls.popleft() for _ in range(min(len(self._calls), POOL_CALLS))]
        self._tokenise([first, *pool])
        batch = self._fill(first, sorted(pool, key=lambda call: abs(call.length - first.length)))
        with self._ready:
            chosen = {id(call) for call in batch}
            rest = [call for call in pool if id(call) not in chosen]
            self._calls.extendleft(reversed(rest))
            if rest:
                self._ready.notify()
            return batch, self._busy == 1 and not self._calls

    def _fill(self, first: _Call, candidates: list[_Call]) -> list[_Call]:
        """`first` and the candidates that fit, in the order given; shares of one request go to different
        runners."""
        batch, size, requests = [first], len(first.texts), {first.request}
        for call in candidates:
            if size >= self.max_batch:
                break
            if call.request not in requests:
                batch.append(call)
                size += len(call.texts)
                requests.add(call.request)
        return batch

    def _take(self, batch: list[_Call]) -> None:
        """Remove a batch's calls (other than its first, already taken) from the queue."""
        if len(batch) > 1:
            taken = {id(call) for call in batch}
            self._calls = deque(call for call in self._calls if id(call) not in taken)

    def _tokenise(self, calls: list[_Call]) -> None:
        """Token ids and length for the calls that have none yet, in one run of the tokenizer (a call left
        in the queue keeps them for its own batch)."""
        assert self._tokens is not None
        pending = [call for call in calls if call.ids is None]
        if not pending:
            return
        try:
            ids = self._tokens.token_ids([text for call in pending for text in call.texts])
        except Exception:  # noqa: BLE001 - the run reports it to these calls' callers (it tokenises again)
            log.debug("tokenising queued calls failed", exc_info=True)
            return
        start = 0
        for call in pending:
            call.ids = ids[start : start + len(call.texts)]
            call.length = max((len(row) for row in call.ids), default=0)
            start += len(call.texts)

    def _company(self, first: _Call) -> int:
        """Texts queued that could join `first`'s batch."""
        return sum(len(call.texts) for call in self._calls if call.request != first.request)

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
        try:
            if all(call.ids is not None for call in calls):
                ids = [row for call in calls for row in call.ids or ()]
                logits = cast(TokenRuntime, runtime).encoder_logits_ids(ids)
            else:
                logits = runtime.encoder_logits([text for call in calls for text in call.texts])
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
