"""The LLM client layer against a fake OpenAI-compatible server on loopback: structured output, repair, retries
honouring Retry-After, timeouts, the egress guard, token counts, and keys that never show."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from arbiter.llm import (
    LabelChoice,
    LlmClient,
    LlmEndpoint,
    LlmError,
    label_answer_schema,
    label_messages,
    secret_decrypt,
    secret_encrypt,
)
from tests.annotation import fake_llm
from tests.annotation.fake_llm import FakeLlm

CHOICES = [LabelChoice("toxic", "insults and hostility"), LabelChoice("safe", "friendly or neutral")]
SCHEMA = label_answer_schema(labels=CHOICES, multi_label=False)
KEY = "sk-test-very-secret-key-0123456789"


def ask(fake: FakeLlm, text: str = "you idiot") -> Any:
    client = LlmClient(LlmEndpoint(base_url=fake.base_url, model="fake-model", api_key=KEY))
    try:
        messages = label_messages(head="toxicity", labels=CHOICES, multi_label=False, text=text)
        return client.complete_json(messages=messages, schema=SCHEMA, name="label")
    finally:
        client.close()


def test_a_good_answer_is_asked_with_a_json_schema_and_counted(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.good("toxic"))
    answer = ask(fake_llm_server, "you idiot")
    assert answer.data == {"label": "toxic", "confidence": 0.9}
    assert (answer.prompt_tokens, answer.completion_tokens, answer.calls) == (30, 5, 1)
    sent = fake_llm_server.requests[0]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    assert sent["body"]["response_format"]["json_schema"]["schema"]["properties"]["label"]["enum"] == [
        "toxic",
        "safe",
    ]
    system, user = sent["body"]["messages"]
    assert "insults and hostility" in system["content"] and user["content"] == "you idiot"


def test_prose_is_repaired_once_then_accepted(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.prose(), fake_llm.good("safe"))
    answer = ask(fake_llm_server)
    assert answer.data["label"] == "safe" and answer.repaired and answer.calls == 2
    repair = fake_llm_server.requests[1]["body"]["messages"][-1]["content"]
    assert "not JSON" in repair


def test_an_answer_that_stays_wrong_fails_keeping_the_raw_answers(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.content('{"label": "spam", "confidence": 0.5}'))
    with pytest.raises(LlmError) as failure:
        ask(fake_llm_server)
    assert failure.value.reason == "malformed_answer"
    assert 'at label: "spam" is not one of "toxic" or "safe"' in str(failure.value)
    assert failure.value.raw is not None and failure.value.raw.count('"spam"') == 2
    assert failure.value.prompt_tokens == 60


def test_429_waits_for_retry_after_and_5xx_is_retried(fake_llm_server: FakeLlm, caplog: Any) -> None:
    fake_llm_server.script(
        fake_llm.status(429, retry_after="0.1"), fake_llm.status(503), fake_llm.good("toxic")
    )
    with caplog.at_level(logging.DEBUG):
        answer = ask(fake_llm_server)
    assert answer.data["label"] == "toxic"
    assert len(fake_llm_server.requests) == 3
    assert KEY not in caplog.text


def test_an_endpoint_that_keeps_failing_gives_up_with_the_reason(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.status(500))
    with pytest.raises(LlmError) as failure:
        ask(fake_llm_server)
    assert failure.value.reason == "server_error"
    assert len(fake_llm_server.requests) == 4  # ARBITER_LLM_MAX_ATTEMPTS
    assert KEY not in str(failure.value)


def test_a_slow_endpoint_times_out(fake_llm_server: FakeLlm, override_arbiter_settings: Any) -> None:
    override_arbiter_settings(ARBITER_LLM_MAX_ATTEMPTS="2")
    fake_llm_server.script(fake_llm.slow(1.5, "safe"))
    with pytest.raises(LlmError) as failure:
        ask(fake_llm_server)
    assert failure.value.reason == "timeout"
    assert "no answer within 1 s" in str(failure.value)


def test_an_endpoint_without_response_format_is_asked_in_words(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.refuse_response_format(fake_llm.good("safe")))
    assert ask(fake_llm_server).data["label"] == "safe"
    assert "response_format" not in fake_llm_server.requests[-1]["body"]


def test_the_egress_guard_refuses_private_endpoints_without_the_allow_list(
    fake_llm_server: FakeLlm, override_arbiter_settings: Any
) -> None:
    override_arbiter_settings(ARBITER_LLM_ALLOWED_NETWORKS="")
    with pytest.raises(Exception, match="loopback") as refused:
        ask(fake_llm_server)
    assert KEY not in str(refused.value)
    assert fake_llm_server.requests == []


def test_keys_are_encrypted_at_rest() -> None:
    token = secret_encrypt(KEY)
    assert KEY not in token
    assert secret_decrypt(token) == KEY
    assert repr(LlmEndpoint(base_url="https://x/v1", model="m", api_key=KEY)).count(KEY) == 0
