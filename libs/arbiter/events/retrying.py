"""The one retry policy of the event workers (relay and consumers), built on tenacity.

Waits grow exponentially from `first_s` (first, 2x, 4x, ...) up to `max_s`; a wait ends early when the
worker's stop event is set, and then `Stopped` is raised so the worker can leave at once. Without
`attempts` it retries until it succeeds or is stopped; with `attempts` tenacity's `RetryError` carries the
last attempt once they are spent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import tenacity
from tenacity import RetryCallState, RetryError

__all__ = ["RetryCallState", "RetryError", "Stopped", "retrying"]


class Stopped(Exception):
    """The worker was asked to stop while it waited to try again."""


def retrying(
    *,
    stop: threading.Event,
    first_s: float,
    max_s: float,
    attempts: int | None = None,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    keep_going: Callable[[BaseException], bool] | None = None,
    on_retry: Callable[[RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """A `tenacity.Retrying` for one worker: call it with the step to run, `retrying(...)(step, *args)`.

    Exceptions of `retry_on` (for which `keep_going`, when given, also says yes) are retried; others
    propagate at once. `on_retry` runs before each wait (log there).
    """

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise Stopped()

    def retryable(error: BaseException) -> bool:
        return isinstance(error, retry_on) and (keep_going is None or keep_going(error))

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(attempts) if attempts is not None else tenacity.stop_never,
        wait=tenacity.wait_exponential(multiplier=first_s, max=max_s),
        retry=tenacity.retry_if_exception(retryable),
        sleep=sleep,
        before_sleep=on_retry,
    )
