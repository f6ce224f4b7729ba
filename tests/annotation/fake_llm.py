"""A fake OpenAI-compatible chat endpoint: a real HTTP server on loopback, in a thread.

Each request takes the next scripted answer (then repeats the last): `good(label)`, `prose()`, `status(429,
retry_after=...)`, `status(500)`, `slow(seconds, label)`, or `refuse_response_format()`; as a policy model
would: `decision(flag, category, reason)` (with token log-probabilities when the request asks for them and
`p_unsafe` is given), `refusal(...)`, `refuse_logprobs(...)`, and `by_content(...)` to answer by what the
request contains. Every request is recorded (path, headers, body), so tests can read the prompts, the images
and the `response_format` they were sent.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = Callable[[dict[str, Any]], tuple[int, dict[str, str], bytes]]


def _completion(
    content: str | None,
    prompt_tokens: int = 30,
    completion_tokens: int = 5,
    *,
    logprobs: list[dict[str, Any]] | None = None,
    refusal: str | None = None,
) -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if refusal is not None:
        message["refusal"] = refusal
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": "stop"}
    if logprobs is not None:
        choice["logprobs"] = {"content": logprobs}
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "fake",
            "choices": [choice],
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


def _tokens(text: str, alternatives: dict[str, list[tuple[str, float]]]) -> list[dict[str, Any]]:
    """`text` cut into word and punctuation tokens; a token listed in `alternatives` gets those top log-probs
    (the first time it occurs), every other token is certain."""
    tokens = []
    for piece in re.findall(r"\w+|\s+|[^\w\s]", text):
        top = alternatives.pop(piece, None) or [(piece, 0.0)]
        tokens.append(
            {
                "token": piece,
                "logprob": top[0][1],
                "bytes": list(piece.encode()),
                "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top],
            }
        )
    return tokens


def decision(
    flag: str,
    category: str | None = None,
    reason: str = "as the policy says",
    *,
    confidence: float | None = None,
    p_unsafe: float | None = None,
    extra: dict[str, Any] | None = None,
) -> Answer:
    """A policy model's JSON decision; with `p_unsafe`, and when the request asks for log-probabilities, the
    flag token's alternatives carry P(unsafe) and P(safe)."""

    def answer(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        data: dict[str, Any] = {"flag": flag, "category": category, "reason": reason, **(extra or {})}
        if confidence is not None:
            data["confidence"] = confidence
        text = json.dumps(data)
        logprobs = None
        if body.get("logprobs") and p_unsafe is not None:
            first = [(flag, math.log(p_unsafe if flag == "unsafe" else 1 - p_unsafe))]
            other = "safe" if flag == "unsafe" else "unsafe"
            first.append((other, math.log(1 - p_unsafe if flag == "unsafe" else p_unsafe)))
            logprobs = _tokens(text, {flag: first})
        return 200, {}, _completion(text, logprobs=logprobs)

    return answer


def llama_guard(text: str, *, p_unsafe: float | None = None) -> Answer:
    """Llama Guard's plain answer (`safe`, or `unsafe` and S-codes on a second line)."""

    def answer(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        logprobs = None
        if body.get("logprobs") and p_unsafe is not None:
            first_word = text.split()[0]
            alts = [("unsafe", math.log(p_unsafe)), ("safe", math.log(1 - p_unsafe))]
            alts.sort(key=lambda alt: alt[0] != first_word)
            logprobs = _tokens(text, {first_word: alts})
        return 200, {}, _completion(text, logprobs=logprobs)

    return answer


def refusal(message: str = "I can't help with that.") -> Answer:
    """A structured-output refusal: `content` null and the `refusal` field set."""
    return lambda body: (200, {}, _completion(None, refusal=message))


def refuse_logprobs(then: Answer) -> Answer:
    """An endpoint that does not return log-probabilities (400 when asked), like some self-hosted servers."""

    def answer(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        if body.get("logprobs"):
            return 400, {}, json.dumps({"error": {"message": "logprobs are not supported"}}).encode()
        return then(body)

    return answer


def by_content(choose: Callable[[str], Answer]) -> Answer:
    """Answer with `choose(<the text of the request's user messages>)`: one script for many inputs (a repair
    request still carries the input it repairs)."""

    def answer(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        users = [m for m in body.get("messages", []) if m.get("role") == "user"]
        return choose("\n".join(_text_of(m) for m in users))(body)

    return answer


def _text_of(message: dict[str, Any]) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content if part.get("type") == "text")


def last_user_text(body: dict[str, Any]) -> str:
    return _text_of([m for m in body.get("messages", []) if m.get("role") == "user"][-1])


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
    def prompts(self) -> list[list[dict[str, Any]]]:
        return [r["body"]["messages"] for r in self.requests]

    @staticmethod
    def last_text(request: dict[str, Any]) -> str:
        return last_user_text(request["body"])

    def images(self) -> list[str]:
        """Every image URL the requests carried, in order."""
        return [
            part["image_url"]["url"]
            for request in self.requests
            for message in request["body"]["messages"]
            if isinstance(message["content"], list)
            for part in message["content"]
            if part.get("type") == "image_url"
        ]


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
