"""Group commit: concurrent callers' small writes share one database transaction, and each caller returns only
once its own write is committed.

A caller that finds no write in progress becomes the leader: it takes every item queued so far (its own
included) and writes them in one call; callers arriving meanwhile queue up and wait, and when the leader is done
one of them leads the next group. A lone caller writes at once (no added delay); under load a transaction
carries as many items as arrived while the previous one committed, so the per-request cost of a commit falls
with concurrency. A failed write fails every caller of that group (nothing of it was committed).

Kept here rather than taken from a library: databases implement this inside the server (PostgreSQL's
commit_delay), and the Python libraries that batch writes do so asynchronously, answering before the commit,
which would let a killed process lose writes its callers were told had happened.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Ticket(Generic[T]):
    item: T
    done: bool = False
    error: BaseException | None = field(default=None)


class GroupCommit(Generic[T]):
    """`submit(item)` returns once `write([... item ...])` has returned; raises what that write raised."""

    def __init__(self, write: Callable[[Sequence[T]], None], *, max_items: int = 512) -> None:
        self._write = write
        self._max_items = max_items
        self._condition = threading.Condition()
        self._queue: list[_Ticket[T]] = []
        self._writing = False
        # Groups written and items in them, for tests and benchmarks.
        self.groups = 0
        self.items = 0

    def submit(self, item: T) -> None:
        ticket = _Ticket(item)
        with self._condition:
            self._queue.append(ticket)
        while True:
            with self._condition:
                while not ticket.done and self._writing:
                    self._condition.wait()
                if ticket.done:
                    if ticket.error is not None:
                        raise ticket.error
                    return
                # Nobody is writing and this item is still queued: lead the next group (oldest items first).
                self._writing = True
                group = self._queue[: self._max_items]
                del self._queue[: self._max_items]
            error: BaseException | None = None
            try:
                self._write([t.item for t in group])
            except BaseException as exc:  # every caller of the group learns of it
                error = exc
            with self._condition:
                self.groups += 1
                self.items += len(group)
                for t in group:
                    t.done = True
                    t.error = error
                self._writing = False
                self._condition.notify_all()
