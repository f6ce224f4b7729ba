"""The `openai` client's HTTP transport, through Arbiter's egress guard (`arbiter.egress`).

The official client speaks httpx2; this transport hands each request to `egress_request()`, so every LLM call
is checked like a webhook delivery: public addresses only unless `ARBITER_LLM_ALLOWED_NETWORKS` allows a
private one, the resolved address checked on every connection, no redirects followed.
"""

from __future__ import annotations

import httpx2

from arbiter.config.typed_settings import arbiter_settings
from arbiter.egress import EgressFailed, EgressPolicy, EgressRefused, egress_request

# An answer larger than this is cut off (a chat completion for one row is a few kilobytes).
MAX_ANSWER_BYTES = 4 * 1024 * 1024


def llm_policy() -> EgressPolicy:
    settings = arbiter_settings()
    return EgressPolicy.build(
        use="LLM",
        allowed_networks=settings.llm.allowed_networks,
        production=settings.core.env == "production",
    )


class EgressTransport(httpx2.BaseTransport):
    def __init__(self, *, policy: EgressPolicy, timeout_s: float) -> None:
        self.policy = policy
        self.timeout_s = timeout_s

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        headers = {key: value for key, value in request.headers.items() if key.lower() != "host"}
        try:
            answer = egress_request(
                request.method,
                str(request.url),
                policy=self.policy,
                body=request.read() or None,
                headers=headers,
                timeout_s=self.timeout_s,
                max_body_bytes=MAX_ANSWER_BYTES,
            )
        except EgressRefused:
            raise  # not retried: the client reports it as a connection error caused by the refusal
        except EgressFailed as exc:
            if exc.reason in ("timeout", "connect_timeout"):
                raise httpx2.ReadTimeout(str(exc), request=request) from None
            raise httpx2.ConnectError(str(exc), request=request) from None
        # The body is already decoded; the length and encoding headers described the wire form.
        kept = {k: v for k, v in answer.headers.items() if k not in ("content-encoding", "content-length")}
        return httpx2.Response(answer.status, headers=kept, content=answer.body, request=request)
