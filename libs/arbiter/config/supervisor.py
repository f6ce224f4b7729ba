"""A small process supervisor for `arbiter up`: start children, restart crashed ones, stop all cleanly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

logger = logging.getLogger("arbiter.up")


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    # Where it serves HTTP, for web processes.
    address: str = ""
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        env = {**os.environ, **self.env}
        self.process = subprocess.Popen(self.argv, env=env)
        logger.info("started", extra={"child": self.name, "pid": self.process.pid})


class Supervisor:
    MAX_RESTARTS_PER_MINUTE = 5

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self._stopping = False

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for child in self.children:
            child.start()
        return_code = 0
        try:
            while not self._stopping:
                time.sleep(0.5)
                for child in self.children:
                    assert child.process is not None
                    code = child.process.poll()
                    if code is None or self._stopping:
                        continue
                    if self._restarted_too_often(child):
                        print(
                            f"arbiter: {child.name} keeps exiting (last code {code}); stopping.",
                            file=sys.stderr,
                        )
                        return_code = 1
                        self._stopping = True
                        break
                    logger.warning("child exited; restarting", extra={"child": child.name, "code": code})
                    child.start()
        finally:
            self.stop()
        return return_code

    def _restarted_too_often(self, child: Child) -> bool:
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < 60] + [now]
        return len(child.restarts) > self.MAX_RESTARTS_PER_MINUTE

    def stop(self, timeout: float = 10.0) -> None:
        for child in reversed(self.children):
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
