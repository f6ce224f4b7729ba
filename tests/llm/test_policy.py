"""Applying a written policy with an LLM, against a fake OpenAI-compatible server on loopback: what reaches the
model in each prompt style, the decision contract, scores from log-probabilities or stated confidence, the
two-stage image path, and every failure a recorded error (never "safe")."""

from __future__ import annotations

import json
from typing import Any

import pytest

from arbiter.llm import LlmClient
from arbiter.llm.policy import (
    PolicyDocument,
    PolicyError,
    PolicyInvalid,
    Provider,
    categories_validate,
    policy_decide,
)
from arbiter.secrets import secret_encrypt
from tests.annotation import fake_llm
from tests.annotation.fake_llm import FakeLlm

CATEGORIES = [
    {
        "name": "harassment",
        "definition": "Insults or threats aimed at a person.",
        "violates": "Name-calling, slurs, threats of harm.",
        "safe": "Criticism of ideas or work.",
        "examples": [{"content": "you absolute moron", "flag": "unsafe", "note": "name-calling"}],
    },
    {"name": "spam", "definition": "Unsolicited advertising or scams.", "examples": []},
]
KEY = "sk-policy-secret-0123456789"


def document(fake: FakeLlm, **changes: Any) -> PolicyDocument:
    provider = {"base_url": fake.base_url, "model": "judge", "api_key_encrypted": secret_encrypt(KEY)}
    provider.update(changes.pop("provider", {}))
    body = {
        "name": "community",
        "instructions": "Be strict about threats.",
        "categories": categories_validate(CATEGORIES),
        "provider": provider,
        **changes,
    }
    return PolicyDocument.from_dict(body)


def decide(doc: PolicyDocument, **kwargs: Any) -> Any:
    client = LlmClient(doc.provider.endpoint())
    vision = LlmClient(doc.vision_provider.endpoint()) if doc.vision_provider else None
    try:
        return policy_decide(doc, client=client, vision_client=vision, **kwargs)
    finally:
        client.close()


def test_generic_style_sends_the_policy_and_the_content_and_reads_the_contract(
    fake_llm_server: FakeLlm,
) -> None:
    fake_llm_server.script(fake_llm.decision("unsafe", "harassment", "Name-calling.", confidence=0.8))
    result = decide(document(fake_llm_server), text="you absolute moron")
    assert (result.flagged, result.category, result.reason) == (True, "harassment", "Name-calling.")
    assert result.scores == {"harassment": 0.8, "spam": 0.0} and result.score_source == "confidence"
    sent = fake_llm_server.requests[0]
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"
    system, user = sent["body"]["messages"]
    assert "Insults or threats aimed at a person." in user["content"]
    assert "Be strict about threats." in user["content"] and "you absolute moron" in user["content"]
    schema = sent["body"]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["category"]["enum"] == ["harassment", "spam", None]


def test_safeguard_style_puts_the_policy_in_the_system_message(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.decision("safe", None, "Criticism of work.", confidence=0.9))
    result = decide(document(fake_llm_server, prompt_style="safeguard"), text="this essay is weak")
    assert not result.flagged and result.scores == {"harassment": 0.1, "spam": 0.1}
    system, user = fake_llm_server.requests[0]["body"]["messages"]
    assert system["content"].startswith("# community") and "## VIOLATES" in system["content"]
    assert "Name-calling, slurs" in system["content"] and user["content"] == "this essay is weak"


def test_logprobs_give_the_score_when_the_endpoint_returns_them(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.decision("unsafe", "spam", "An ad.", p_unsafe=0.7))
    result = decide(document(fake_llm_server, provider={"logprobs": True}), text="buy now")
    assert result.score_source == "logprobs"
    assert result.scores["spam"] == pytest.approx(0.7) and result.scores["harassment"] == 0.0
    assert fake_llm_server.requests[0]["body"]["top_logprobs"] == 5


def test_an_endpoint_without_logprobs_is_asked_again_without_them(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(
        fake_llm.refuse_logprobs(fake_llm.decision("unsafe", "spam", "An ad.", confidence=0.6))
    )
    result = decide(document(fake_llm_server, provider={"logprobs": True}), text="buy now")
    assert result.scores["spam"] == 0.6 and result.score_source == "confidence"
    assert [bool(r["body"].get("logprobs")) for r in fake_llm_server.requests] == [True, False]


def test_llama_guard_style_maps_s_codes_onto_the_policy(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.llama_guard("unsafe\nS2", p_unsafe=0.9))
    doc = document(fake_llm_server, prompt_style="llama_guard", provider={"logprobs": True})
    result = decide(doc, text="cheap pills here")
    assert (result.flagged, result.category) == (True, "spam")
    assert result.scores["spam"] == pytest.approx(0.9) and result.reason == "Llama Guard: S2 (spam)"
    (user,) = fake_llm_server.requests[0]["body"]["messages"]
    assert "S1: harassment." in user["content"] and "S2: spam." in user["content"]
    assert "User: cheap pills here" in user["content"]
    assert "response_format" not in fake_llm_server.requests[0]["body"]


def test_llama_guard_code_outside_the_policy_is_an_error(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.llama_guard("unsafe\nS9"))
    with pytest.raises(PolicyError) as failure:
        decide(document(fake_llm_server, prompt_style="llama_guard"), text="x")
    assert failure.value.reason == "unknown_category" and failure.value.raw == "unsafe\nS9"


@pytest.mark.parametrize(
    ("answers", "reason", "raw"),
    [
        ([fake_llm.prose()], "malformed_answer", "I think this text is probably fine"),
        (
            [fake_llm.decision("unsafe", "violence", "Not in the policy.")],
            "unknown_category",
            '"category": "violence"',
        ),
        ([fake_llm.refusal("I won't judge this.")], "model_refused", "I won't judge this."),
        ([fake_llm.slow(3, "x")], "timeout", None),
    ],
    ids=["prose", "unknown-category", "refusal", "timeout"],
)
def test_failures_are_errors_with_the_raw_answer_never_safe(
    fake_llm_server: FakeLlm, answers: list[Any], reason: str, raw: str | None
) -> None:
    fake_llm_server.script(*answers)
    with pytest.raises(PolicyError) as failure:
        decide(document(fake_llm_server), text="hello")
    assert failure.value.reason == reason
    if raw is not None:
        assert failure.value.raw is not None and raw in failure.value.raw


def test_unsafe_without_a_category_is_repaired_once(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(
        fake_llm.decision("unsafe", None, "Bad."), fake_llm.decision("unsafe", "harassment", "Threat.")
    )
    result = decide(document(fake_llm_server), text="I will find you")
    assert result.category == "harassment" and result.calls == 2
    assert "category" in fake_llm_server.requests[1]["body"]["messages"][-1]["content"]


IMAGE = "data:image/png;base64,iVBORw0KGgo="


def test_a_vision_endpoint_gets_the_image_in_the_message(fake_llm_server: FakeLlm) -> None:
    fake_llm_server.script(fake_llm.decision("unsafe", "harassment", "A threatening sign."))
    result = decide(document(fake_llm_server, provider={"vision": True}), text="caption", image_url=IMAGE)
    assert result.flagged and fake_llm_server.images() == [IMAGE] and result.intermediate is None


def test_two_stage_images_caption_and_checklist_then_the_text_model_decides(fake_llm_server: FakeLlm) -> None:
    described = {
        "caption": "A man holding a knife at a person.",
        "answers": [{"question": "A weapon?", "answer": "yes"}],
    }
    fake_llm_server.script(
        fake_llm.content(json.dumps(described)),
        fake_llm.decision("unsafe", "harassment", "A threat with a knife."),
    )
    vision = {"base_url": fake_llm_server.base_url, "model": "eyes"}
    doc = document(fake_llm_server, vision_provider=vision, checklist=["A weapon?"])
    result = decide(doc, text="", image_url=IMAGE)
    assert result.intermediate == described and result.calls == 2
    first, second = fake_llm_server.requests
    assert first["body"]["model"] == "eyes" and fake_llm_server.images() == [IMAGE]
    assert "A weapon?" in fake_llm_server.last_text(first)
    assert "A man holding a knife" in fake_llm_server.last_text(second) and second["body"]["model"] == "judge"


def test_an_image_without_a_way_to_read_it_is_an_error(fake_llm_server: FakeLlm) -> None:
    with pytest.raises(PolicyError) as failure:
        decide(document(fake_llm_server), text="", image_url=IMAGE)
    assert failure.value.reason == "image_unsupported" and not fake_llm_server.requests


@pytest.mark.parametrize(
    ("categories", "message"),
    [
        ([], "categories: give a non-empty list"),
        ([{"name": "safe", "definition": "x"}], "reads as 'nothing to flag'"),
        ([{"name": "a b", "definition": "x"}], "categories[0].name"),
        ([{"name": "spam", "definition": ""}], "categories[0].definition: required"),
        ([{"name": "spam", "definition": "x"}, {"name": "SPAM", "definition": "y"}], "listed twice"),
        ([{"name": "spam", "definition": "x", "examples": [{"content": "a", "flag": "maybe"}]}], "flag"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(categories: Any, message: str) -> None:
    with pytest.raises(PolicyInvalid, match=message.replace("[", r"\[").replace("]", r"\]")):
        categories_validate(categories)


def test_provider_round_trip_keeps_the_key_encrypted(fake_llm_server: FakeLlm) -> None:
    doc = document(fake_llm_server)
    stored = json.dumps(doc.to_dict())
    assert KEY not in stored and KEY not in repr(doc)
    assert Provider.from_dict(doc.to_dict()["provider"]).endpoint().api_key == KEY
