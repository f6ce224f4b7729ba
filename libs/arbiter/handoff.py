"""`Handoff`: one thread wakes another, once per wait, on the request path.

`threading.Event` is a Condition over a lock, written in Python: creating one costs about 8 us and a set and
wait about 4 us more, and a classify call made two of them (its micro-batch and its usage commit), about 3% of
the request's own CPU. A `Handoff` is one lock held from the start: `set` releases it and `wait` takes it, both
in C (under 1 us together). Kept here rather than taken from a library: it is the stdlib lock, used as a
semaphore of one.

Its contract is narrower than an Event's: one thread waits; each `set` comes once per `wait` (a second `set`
before the wait raises `RuntimeError`); there is no timeout or clear.
"""

from __future__ import annotations

import threading


class Handoff:
    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        self._lock.release()

    def wait(self) -> None:
        self._lock.acquire()
