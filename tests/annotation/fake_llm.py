"""A fake OpenAI-compatible chat endpoint: a real HTTP server on loopback, in a thread.

Each request takes the next scripted answer (then repeats the last): `good(label)`, `prose()`, `status(429,
retry_after=...)`, `status(500)`, `slow(seconds, label)`, or `refuse_response_format()`. Every request is
recorded (path, headers, body), so tests can read the prompts and the `response_format` they were sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], tuple[int, dict[str, str], bytes]]


def _completion(content: str, prompt_tokens: int = 30, completion_tokens: int = 5) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "fake",
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    ).encode()


def good(label: str | Callable[[dict[str, Any]], str], confidence: float = 0.9) -> Answer:
    def answer(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        chosen = label(body) if callable(label) else label
        return 200, {}, _completion(json.dumps({"label": chosen, "confidence": confidence}))

    return answer


def content(text: str) -> Answer:
    return lambda body: (200, {}, _completion(text))


def prose() -> Answer:
    return content("I think this text is probably fine, honestly.")


def status(code: int, *, retry_after: str | None = None) -> Answer:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return lambda body: (code, headers, json.dumps({"error": {"message": f"fake {code}"}}).encode())


def slow(seconds: float, label: str) -> Answer:
    def answer(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        time.sleep(seconds)
        return good(label)(body)

    return answer


def refuse_response_format(then: Answer) -> Answer:
    def answer(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if "response_format" in body:
            message = {"error": {"message": "response_format is not supported by this server"}}
            return 400, {}, json.dumps(message).encode()
        return then(body)

    return answer


@dataclass
class FakeLlm:
    base_url: str = ""
    answers: list[Answer] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self.answers = list(answers)

    def next_answer(self) -> Answer:
        with self._lock:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    @property
    def prompts(self) -> list[list[dict[str, str]]]:
        return [r["body"]["messages"] for r in self.requests]


def serve() -> Iterator[FakeLlm]:
    fake = FakeLlm()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            with fake._lock:
                fake.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
            code, headers, payload = fake.next_answer()(body)
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    fake.script(good("safe"))
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
