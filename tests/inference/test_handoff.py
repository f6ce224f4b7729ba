"""`Handoff`, the one-shot wake-up of the request path (micro-batches, usage commits)."""

from __future__ import annotations

import threading
import time

import pytest

from arbiter.handoff import Handoff


def test_a_wait_returns_once_set_whether_the_set_came_first_or_later() -> None:
    early = Handoff()
    early.set()
    early.wait()  # returns at once

    late = Handoff()
    woke: list[float] = []
    waiter = threading.Thread(target=lambda: (late.wait(), woke.append(time.monotonic())))
    waiter.start()
    time.sleep(0.05)
    assert woke == []  # still waiting
    set_at = time.monotonic()
    late.set()
    waiter.join(timeout=5)
    assert len(woke) == 1 and woke[0] >= set_at


def test_a_second_set_before_the_wait_is_refused() -> None:
    handoff = Handoff()
    handoff.set()
    with pytest.raises(RuntimeError):
        handoff.set()
