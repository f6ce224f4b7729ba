"""The workers' retry policy: exponential backoff with a cap, a bounded number of attempts, and waits that a
stop request ends at once."""

from __future__ import annotations

import threading

import pytest

from arbiter.events.retrying import RetryError, Stopped, retrying


class Flaky:
    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return "done"


def test_waits_double_from_the_first_up_to_the_cap() -> None:
    waits: list[float] = []
    step = retrying(
        stop=threading.Event(),
        first_s=0.01,
        max_s=0.04,
        on_retry=lambda state: waits.append(state.upcoming_sleep),
    )
    assert step(Flaky(5)) == "done"
    assert waits == pytest.approx([0.01, 0.02, 0.04, 0.04, 0.04])


def test_after_the_last_attempt_the_last_error_comes_back() -> None:
    flaky = Flaky(10)
    with pytest.raises(RetryError) as exhausted:
        retrying(stop=threading.Event(), first_s=0.001, max_s=0.001, attempts=3)(flaky)
    assert flaky.calls == 3
    assert exhausted.value.last_attempt.attempt_number == 3
    assert str(exhausted.value.last_attempt.exception()) == "failure 3"


def test_errors_it_is_not_told_to_retry_propagate_at_once() -> None:
    flaky = Flaky(1, error=KeyError)
    with pytest.raises(KeyError):
        retrying(stop=threading.Event(), first_s=0.001, max_s=0.001, retry_on=ConnectionError)(flaky)
    refused = Flaky(1)
    with pytest.raises(ConnectionError):
        retrying(stop=threading.Event(), first_s=0.001, max_s=0.001, keep_going=lambda error: False)(refused)
    assert flaky.calls == refused.calls == 1


def test_a_stop_request_ends_a_long_wait() -> None:
    stop = threading.Event()
    threading.Timer(0.1, stop.set).start()
    flaky = Flaky(1)
    with pytest.raises(Stopped):  # rather than sleeping half a minute and then succeeding
        retrying(stop=stop, first_s=30, max_s=30)(flaky)
    assert flaky.calls == 1
