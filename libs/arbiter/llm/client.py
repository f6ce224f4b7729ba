"""One client for any OpenAI-compatible chat endpoint (OpenAI, Mistral, vLLM, Ollama, llama.cpp's server), on the
official `openai` library.

- Structured output: the answer is asked for with `response_format` (a JSON Schema, strict) where the endpoint
  takes it; an endpoint that refuses the parameter is asked again without it (and remembered). Either way the
  answer is parsed and checked against the schema; a wrong one is repaired once (the model is shown its answer
  and the problem), else the call fails with `LlmError("malformed_answer")` keeping the raw answers.
- Retries (tenacity): timeouts, 429 (waiting what `Retry-After` asks, within `ARBITER_LLM_RETRY_MAX_SECONDS`) and
  5xx, with exponential backoff, `ARBITER_LLM_MAX_ATTEMPTS` attempts in all. The client's own retries are off.
- At most `ARBITER_LLM_CONCURRENCY` calls in flight per endpoint in this process.
- Tokens are counted per call, from the endpoint's `usage`. Token log-probabilities are asked for on request
  (`logprobs=True`); an endpoint that refuses them is asked again without (and remembered).
- A refusal (the `refusal` field of a structured answer) fails at once with `LlmError("model_refused")`.
- Every request goes through the egress guard (`arbiter.llm.transport`). The API key is held in a field that
  is never printed (`repr=False`) and never put in a message or log line.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import httpx2
import jsonschema_rs
import openai
import tenacity

from arbiter.config.typed_settings import LlmSettings, arbiter_settings
from arbiter.egress import EgressRefused, check_url, redact_url
from arbiter.llm.transport import EgressTransport, llm_policy

logger = logging.getLogger(__name__)

# A chat message: `content` is a string, or a list of parts (text and `image_url`) for a vision model.
Message = Mapping[str, Any]


@dataclass(frozen=True)
class TokenLogprob:
    """One answer token with its log-probability and the most likely alternatives at that position."""

    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class LlmEndpoint:
    base_url: str
    model: str
    api_key: str = field(default="", repr=False)

    @property
    def where(self) -> str:
        """The endpoint as logs and errors may name it (no query string or user info)."""
        return redact_url(self.base_url)


@dataclass(frozen=True)
class LlmAnswer:
    data: dict[str, Any]
    raw: str
    prompt_tokens: int
    completion_tokens: int
    calls: int
    repaired: bool = False
    # The answer's tokens when they were asked for and the endpoint returned them; else None.
    logprobs: tuple[TokenLogprob, ...] | None = None


class LlmError(Exception):
    """A call that produced no usable answer. `reason` is a stable code; the message is safe to show and log;
    `raw` keeps what the model answered (for a malformed answer)."""

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        raw: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.raw = raw
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


_limits: dict[str, threading.BoundedSemaphore] = {}
_limits_lock = threading.Lock()


def _limit(key: str, size: int) -> threading.BoundedSemaphore:
    with _limits_lock:
        semaphore = _limits.get(key)
        if semaphore is None:
            semaphore = _limits[key] = threading.BoundedSemaphore(size)
        return semaphore


def _refused(error: BaseException) -> EgressRefused | None:
    while error is not None:
        if isinstance(error, EgressRefused):
            return error
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return None


def _retryable(error: BaseException) -> bool:
    if _refused(error) is not None:
        return False
    return isinstance(
        error,
        openai.APITimeoutError
        | openai.APIConnectionError
        | openai.RateLimitError
        | openai.InternalServerError,
    )


def _retry_after(error: BaseException) -> float | None:
    if not isinstance(error, openai.APIStatusError):
        return None
    value = error.response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to backoff


TOP_LOGPROBS = 5


def _logprobs_of(choice: Any) -> tuple[TokenLogprob, ...] | None:
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if not content:
        return None
    return tuple(
        TokenLogprob(
            token=str(item.token),
            logprob=float(item.logprob),
            top=tuple((str(alt.token), float(alt.logprob)) for alt in (item.top_logprobs or ())),
        )
        for item in content
    )


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.DOTALL)


def _parsed(raw: str, schema: Mapping[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The answer as a JSON object matching `schema`, or None and what is wrong with it."""
    text = raw.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None, "the answer is not JSON"
    if not isinstance(data, dict):
        return None, "the answer is not a JSON object"
    validator = jsonschema_rs.Draft202012Validator(dict(schema))
    errors = sorted(validator.iter_errors(data), key=lambda e: [str(p) for p in e.instance_path])
    if errors:
        where = "/".join(str(p) for p in errors[0].instance_path) or "(root)"
        return None, f"the answer does not match the schema at {where}: {errors[0].message}"
    return data, ""


class LlmClient:
    """Calls one endpoint. Thread-safe; share one per endpoint within a job."""

    def __init__(self, endpoint: LlmEndpoint, *, settings: LlmSettings | None = None) -> None:
        self.endpoint = endpoint
        self.settings = settings or arbiter_settings().llm
        policy = llm_policy()
        check_url(endpoint.base_url, policy)  # a refused URL fails here, before anything is sent
        self._client = openai.OpenAI(
            base_url=endpoint.base_url,
            api_key=endpoint.api_key or "unused",
            max_retries=0,
            timeout=self.settings.timeout_s,
            http_client=httpx2.Client(
                transport=EgressTransport(policy=policy, timeout_s=self.settings.timeout_s)
            ),
        )
        self._structured = True
        self._logprobs = True
        self._limit = _limit(endpoint.base_url, self.settings.concurrency)

    def close(self) -> None:
        self._client.close()

    def _error(self, exc: BaseException) -> LlmError:
        where = self.endpoint.where
        refused = _refused(exc)
        if refused is not None:
            return LlmError("refused", str(refused))
        if isinstance(exc, openai.APITimeoutError):
            return LlmError("timeout", f"{where}: no answer within {self.settings.timeout_s:g} s")
        if isinstance(exc, openai.RateLimitError):
            return LlmError("rate_limited", f"{where}: still rate limited (429) after retries")
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return LlmError("unauthorized", f"{where}: the endpoint refused the API key ({exc.status_code})")
        if isinstance(exc, openai.APIStatusError):
            kind = "server_error" if exc.status_code >= 500 else "bad_request"
            return LlmError(kind, f"{where}: the endpoint answered HTTP {exc.status_code}")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = str(cause) if isinstance(cause, httpx2.TransportError) else "the connection failed"
            return LlmError("connection", f"{where}: {detail}")
        return LlmError("error", f"{where}: {type(exc).__name__}")

    def _wait(self, state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        asked = _retry_after(error) if error else None
        if asked is not None:
            return min(asked, self.settings.retry_max_s)
        return float(min(0.5 * 2 ** (state.attempt_number - 1), self.settings.retry_max_s))

    def _create(
        self,
        messages: Sequence[Message],
        schema: Mapping[str, Any] | None,
        name: str,
        *,
        strict: bool = True,
        logprobs: bool = False,
    ) -> Any:
        def call() -> Any:
            extra: dict[str, Any] = {}
            if self._structured and schema is not None:
                extra["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": name, "schema": dict(schema), "strict": strict},
                }
            if logprobs and self._logprobs:
                extra["logprobs"] = True
                extra["top_logprobs"] = TOP_LOGPROBS
            with self._limit:
                return self._client.chat.completions.create(
                    model=self.endpoint.model,
                    messages=cast(Any, list(messages)),
                    temperature=0,
                    **extra,
                )

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.settings.max_attempts),
            wait=self._wait,
            retry=tenacity.retry_if_exception(_retryable),
            reraise=True,
            before_sleep=lambda state: logger.info(
                "LLM call retried",
                extra={"endpoint": self.endpoint.where, "attempt": state.attempt_number},
            ),
        )
        try:
            try:
                return retrying(call)
            except openai.BadRequestError as exc:
                if logprobs and self._logprobs and "logprob" in str(exc.message):
                    # The endpoint does not return log-probabilities: scores come from stated confidence.
                    self._logprobs = False
                    return self._create(messages, schema, name, strict=strict)
                if schema is None or not self._structured or "response_format" not in str(exc.message):
                    raise
                # The endpoint does not take `response_format`: ask in words, parse and check the answer.
                self._structured = False
                return retrying(call)
        except EgressRefused as exc:
            raise LlmError("refused", str(exc)) from None
        except openai.OpenAIError as exc:
            raise self._error(exc) from None

    def complete_json(
        self,
        *,
        messages: Sequence[Message],
        schema: Mapping[str, Any],
        name: str = "answer",
        strict: bool = True,
        logprobs: bool = False,
    ) -> LlmAnswer:
        """The model's answer to `messages` as a JSON object matching `schema` (repaired once if needed).

        `strict=False` asks for the schema without OpenAI's strict mode (which needs every property required);
        the answer is checked against the full schema either way."""
        conversation = list(messages)
        prompt_tokens = completion_tokens = 0
        raws: list[str] = []
        for attempt in range(2):
            response = self._create(conversation, schema, name, strict=strict, logprobs=logprobs)
            usage = getattr(response, "usage", None)
            prompt_tokens += int(getattr(usage, "prompt_tokens", 0) or 0)
            completion_tokens += int(getattr(usage, "completion_tokens", 0) or 0)
            choice = response.choices[0] if response.choices else None
            refusal = getattr(choice.message, "refusal", None) if choice is not None else None
            if refusal:
                raise LlmError(
                    "model_refused",
                    f"{self.endpoint.where}: the model refused to answer: {str(refusal)[:300]}",
                    raw=str(refusal),
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                )
            raw = (choice.message.content or "") if choice is not None else ""
            raws.append(raw)
            data, problem = _parsed(raw, schema)
            if data is not None:
                return LlmAnswer(
                    data=data,
                    raw=raw,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    calls=attempt + 1,
                    repaired=attempt > 0,
                    logprobs=_logprobs_of(choice),
                )
            if attempt == 0:
                conversation += [
                    {"role": "assistant", "content": raw},
                    {
                        "role": "user",
                        "content": f"That answer cannot be used: {problem}. Answer again with only a JSON object "
                        f"matching this JSON Schema, nothing else: {json.dumps(schema)}",
                    },
                ]
        raise LlmError(
            "malformed_answer",
            f"{problem} (also after one repair)",
            raw="\n---\n".join(raws),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )

    def complete_text(self, *, messages: Sequence[Message], logprobs: bool = False) -> LlmAnswer:
        """The model's plain-text answer (for models with a fixed output format, such as Llama Guard's);
        `data` is empty, the caller reads `raw`."""
        response = self._create(list(messages), None, "answer", logprobs=logprobs)
        usage = getattr(response, "usage", None)
        choice = response.choices[0] if response.choices else None
        raw = (choice.message.content or "") if choice is not None else ""
        return LlmAnswer(
            data={},
            raw=raw,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            calls=1,
            logprobs=_logprobs_of(choice),
        )
