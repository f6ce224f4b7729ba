"""Group commit: concurrent callers' small writes share one database transaction, and each caller returns only
once its own write is committed.

A caller that finds no write in progress becomes the leader: it takes every item queued so far (its own
included) and writes them in one call; callers arriving meanwhile queue up and wait, and when the leader is done
the oldest of them leads the next group (each waiter is woken by its own hand-off, once). A lone caller writes at
once (no added delay); under load a transaction carries as many items as arrived while the previous one
committed, so the per-request cost of a commit falls with concurrency. A failed write fails every caller of that
group (nothing of it was committed).

With `linger_s` (seconds, or a function giving them), a leader whose previous group held several items
(callers are concurrent) first waits that long for company, as Kafka producers' `linger.ms` and PostgreSQL's
`commit_delay` do: callers that finish together (the calls of one micro-batch) then share one commit instead of
trickling into groups of two. A lone caller still writes at once.

Kept here rather than taken from a library: databases implement this inside the server (PostgreSQL's
commit_delay), and the Python libraries that batch writes do so asynchronously, answering before the commit,
which would let a killed process lose writes its callers were told had happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from arbiter.handoff import Handoff

T = TypeVar("T")


@dataclass(eq=False)
class _Ticket(Generic[T]):
    item: T
    done: bool = False
    error: BaseException | None = field(default=None)
    # Set when the item is written (done) or when its caller is to lead the next group: once per wait (a caller
    # woken to lead waits no more, and the group it leads holds its own item).
    woken: Handoff = field(default_factory=Handoff)


class GroupCommit(Generic[T]):
    """`submit(item)` returns once `write([... item ...])` has returned; raises what that write raised."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], None],
        *,
        max_items: int = 512,
        linger_s: float | Callable[[], float] = 0.0,
    ) -> None:
        self._write = write
        self._max_items = max_items
        self._linger_s = linger_s
        self._last_group = 0
        self._lock = threading.Lock()
        self._queue: list[_Ticket[T]] = []
        self._writing = False
        # Groups written and items in them, for tests and benchmarks.
        self.groups = 0
        self.items = 0

    def submit(self, item: T) -> None:
        ticket = _Ticket(item)
        with self._lock:
            self._queue.append(ticket)
            lead = not self._writing
            self._writing = True
        # Each waiter is woken once, by its own hand-off (not all of them per group): for its answer, or to lead.
        while True:
            if not lead:
                ticket.woken.wait()
            if ticket.done:
                if ticket.error is not None:
                    raise ticket.error
                return
            self._lead()
            lead = False

    def _lead(self) -> None:
        """Write the next group (oldest items first), answer its callers, and hand the lead to the oldest caller
        still queued, if any."""
        with self._lock:
            lingers = self._last_group > 1 and len(self._queue) < self._max_items
        linger = (self._linger_s() if callable(self._linger_s) else self._linger_s) if lingers else 0.0
        if linger > 0:
            time.sleep(linger)  # callers arriving meanwhile queue behind this write (`_writing`)
        with self._lock:
            group = self._queue[: self._max_items]
            del self._queue[: self._max_items]
        error: BaseException | None = None
        try:
            self._write([t.item for t in group])
        except BaseException as exc:  # every caller of the group learns of it
            error = exc
        with self._lock:
            self.groups += 1
            self.items += len(group)
            self._last_group = len(group)
            for t in group:
                t.done = True
                t.error = error
            following = self._queue[0] if self._queue else None
            self._writing = following is not None
        for t in group:
            t.woken.set()
        if following is not None:
            following.woken.set()
