"""A webhook receiver on loopback for tests: a real HTTP server in a thread that verifies every delivery with the
`standardwebhooks` library and answers as the test scripts it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    verified: Any  # the parsed payload, or None if the signature did not verify
    at: float


# An answer: (status, headers, body), or a callable run before answering (e.g. to stall).
Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Receiver:
    host: str
    port: int
    secret: str | None = None
    received: list[Received] = field(default_factory=list)
    # Answers in order, per path; when a path's list is empty: 200.
    script: dict[str, list[Answer | Callable[[], Answer]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def answer(self, path: str, *answers: Answer | Callable[[], Answer]) -> None:
        with self.lock:
            self.script.setdefault(path, []).extend(answers)

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.received if r.path.split("?")[0] == path]

    def wait(self, count: int, path: str = "/hook", timeout_s: float = 20.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.on(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{path} received {len(self.on(path))} requests, expected {count}")


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            verified = None
            if receiver.secret is not None:
                try:
                    verified = Webhook(receiver.secret).verify(body, headers)
                except WebhookVerificationError:
                    verified = None
            path = self.path.split("?")[0]
            with receiver.lock:
                receiver.received.append(Received(self.path, headers, body, verified, time.monotonic()))
                queue = receiver.script.get(path) or []
                scripted = queue.pop(0) if queue else None
            status, extra, content = (
                (200, {}, b"ok") if scripted is None else (scripted() if callable(scripted) else scripted)
            )
            self.send_response(status)
            for key, value in extra.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

    return Handler


@contextmanager
def running_receiver(host: str = "127.0.0.1", secret: str | None = None) -> Iterator[Receiver]:
    server = ThreadingHTTPServer((host, 0), _handler(Receiver(host, 0)))
    server.daemon_threads = True
    receiver = Receiver(host, int(server.server_address[1]), secret)
    server.RequestHandlerClass = _handler(receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
