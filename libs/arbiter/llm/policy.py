"""Policy moderation: a language model applies a written policy to one input and says why.

A policy is a plain-language document (free instructions and categories, each with a definition, what violates,
what is safe and boundary examples) plus the OpenAI-compatible endpoint that applies it. For each input the model
answers the contract `{"flag": "safe" | "unsafe", "category": <a category or null>, "reason": "..."}` with
optional `rule_ids` and `confidence`, checked against a JSON Schema built from the policy's categories (asked
for with `response_format` where the endpoint takes it, repaired once, else a `PolicyError` keeping the raw
answer). Nothing here ever turns a failure into "safe".

Prompt styles:
- `generic` (the default): moderator instructions and the contract as the system message, the policy and the
  content in the user message;
- `safeguard`: the policy itself is the system message, in the sections gpt-oss-safeguard is trained on
  (INSTRUCTIONS, DEFINITIONS, VIOLATES, SAFE, EXAMPLES, OUTPUT FORMAT), the content is the user message;
- `llama_guard`: Llama Guard's prompt, the policy's categories numbered as its S-codes (S1 = the first
  category...); its two-line answer (`safe`, or `unsafe` and the codes) is mapped back onto the categories.

Scores: a probability per category that the input violates it, from the answer tokens' log-probabilities when
the endpoint returns them (the `flag` and `category` tokens' alternatives), else from the stated `confidence`,
else 1 for the decided category and 0 for the others.

Images: a vision-capable endpoint gets the image in the chat message. Otherwise a vision endpoint first writes
a caption and answers the policy's checklist (yes / no / unsure per question), and the text model decides on
those answers; the intermediate answers are kept with the decision.

Served and evaluated the same way by the inference and training services: a policy version is stored as a JSON
artifact (`policy_artifact_dump`) whose key ends in `POLICY_ARTIFACT_SUFFIX`; the key is kept encrypted
(`arbiter.secrets`) in it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from arbiter.llm.client import LlmAnswer, LlmClient, LlmEndpoint, LlmError, Message, TokenLogprob
from arbiter.ml.specs import label_is_negative
from arbiter.secrets import SecretUnreadable, secret_decrypt

PromptStyle = Literal["generic", "safeguard", "llama_guard"]
PROMPT_STYLES: tuple[str, ...] = ("generic", "safeguard", "llama_guard")
POLICY_ARTIFACT_SUFFIX = ".policy.json"
CATEGORY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
MAX_CATEGORIES = 30
SAFE, UNSAFE = "safe", "unsafe"


class PolicyError(Exception):
    """An input the policy model gave no usable decision for. `reason` is a stable code (`timeout`,
    `model_refused`, `malformed_answer`, `unknown_category`, `image_unreadable`, ...), the message is safe to
    show, `raw` keeps what the model answered."""

    def __init__(self, reason: str, message: str, *, raw: str | None = None, calls: int = 0) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.raw = raw
        self.calls = calls


class PolicyInvalid(ValueError):
    """A policy document that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Example:
    content: str
    flag: str  # "safe" or "unsafe"
    note: str = ""


@dataclass(frozen=True)
class Category:
    name: str
    definition: str
    violates: str = ""
    safe: str = ""
    examples: tuple[Example, ...] = ()


@dataclass(frozen=True)
class Provider:
    """An endpoint as a policy version stores it: the key encrypted, and what the endpoint can do."""

    base_url: str
    model: str
    api_key_encrypted: str = field(default="", repr=False)
    api_key_hint: str = ""
    vision: bool = False
    logprobs: bool = False

    def endpoint(self) -> LlmEndpoint:
        try:
            key = secret_decrypt(self.api_key_encrypted) if self.api_key_encrypted else ""
        except SecretUnreadable:
            raise PolicyError(
                "unreadable_key",
                "The provider's API key cannot be decrypted (ARBITER_SECRET_KEY changed); save the policy's "
                "provider key again.",
            ) from None
        return LlmEndpoint(base_url=self.base_url, model=self.model, api_key=key)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "model": self.model,
            "api_key_encrypted": self.api_key_encrypted,
            "api_key_hint": self.api_key_hint,
            "vision": self.vision,
            "logprobs": self.logprobs,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Provider:
        return cls(
            base_url=str(data["base_url"]),
            model=str(data["model"]),
            api_key_encrypted=str(data.get("api_key_encrypted") or ""),
            api_key_hint=str(data.get("api_key_hint") or ""),
            vision=bool(data.get("vision")),
            logprobs=bool(data.get("logprobs")),
        )


@dataclass(frozen=True)
class PolicyDocument:
    name: str
    categories: tuple[Category, ...]
    provider: Provider
    instructions: str = ""
    prompt_style: str = "generic"
    # The two-stage image path: the vision endpoint that captions an image and answers the checklist.
    vision_provider: Provider | None = None
    checklist: tuple[str, ...] = ()

    @property
    def category_names(self) -> list[str]:
        return [c.name for c in self.categories]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "instructions": self.instructions,
            "prompt_style": self.prompt_style,
            "provider": self.provider.to_dict(),
            "vision_provider": self.vision_provider.to_dict() if self.vision_provider else None,
            "checklist": list(self.checklist),
            "categories": [
                {
                    "name": c.name,
                    "definition": c.definition,
                    "violates": c.violates,
                    "safe": c.safe,
                    "examples": [{"content": e.content, "flag": e.flag, "note": e.note} for e in c.examples],
                }
                for c in self.categories
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyDocument:
        """A stored document (see `policy_validate` for what a request may hold)."""
        vision = data.get("vision_provider")
        return cls(
            name=str(data["name"]),
            instructions=str(data.get("instructions") or ""),
            prompt_style=str(data.get("prompt_style") or "generic"),
            provider=Provider.from_dict(data["provider"]),
            vision_provider=Provider.from_dict(vision) if vision else None,
            checklist=tuple(str(q) for q in data.get("checklist") or ()),
            categories=tuple(
                Category(
                    name=str(c["name"]),
                    definition=str(c.get("definition") or ""),
                    violates=str(c.get("violates") or ""),
                    safe=str(c.get("safe") or ""),
                    examples=tuple(
                        Example(content=str(e["content"]), flag=str(e["flag"]), note=str(e.get("note") or ""))
                        for e in c.get("examples") or ()
                    ),
                )
                for c in data["categories"]
            ),
        )


def _text(value: Any, where: str, *, required: bool = False, limit: int = 20000) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise PolicyInvalid(f"{where}: give a string.")
    if required and not value.strip():
        raise PolicyInvalid(f"{where}: required.")
    if len(value) > limit:
        raise PolicyInvalid(f"{where}: at most {limit} characters.")
    return value.strip()


def categories_validate(value: Any) -> list[dict[str, Any]]:
    """The `categories` of a request, cleaned: each `{name, definition, violates, safe, examples}`."""
    if not isinstance(value, list) or not value:
        raise PolicyInvalid("categories: give a non-empty list of categories.")
    if len(value) > MAX_CATEGORIES:
        raise PolicyInvalid(f"categories: at most {MAX_CATEGORIES}.")
    seen: set[str] = set()
    clean = []
    for i, item in enumerate(value):
        where = f"categories[{i}]"
        if not isinstance(item, dict):
            raise PolicyInvalid(f"{where}: give an object {{name, definition, violates, safe, examples}}.")
        name = _text(item.get("name"), f"{where}.name", required=True, limit=64)
        if not CATEGORY_NAME.match(name):
            raise PolicyInvalid(
                f"{where}.name: '{name}' — use letters, digits, '-' and '_' (it names the category in answers)."
            )
        if label_is_negative(name):
            raise PolicyInvalid(f"{where}.name: '{name}' reads as 'nothing to flag'; name what violates.")
        if name.lower() in seen:
            raise PolicyInvalid(f"{where}.name: '{name}' is listed twice.")
        seen.add(name.lower())
        examples = item.get("examples") or []
        if not isinstance(examples, list):
            raise PolicyInvalid(f"{where}.examples: give a list of {{content, flag, note}}.")
        clean_examples = []
        for j, example in enumerate(examples):
            at = f"{where}.examples[{j}]"
            if not isinstance(example, dict):
                raise PolicyInvalid(f"{at}: give an object {{content, flag, note}}.")
            flag = example.get("flag")
            if flag not in (SAFE, UNSAFE):
                raise PolicyInvalid(f"{at}.flag: 'safe' or 'unsafe'.")
            clean_examples.append(
                {
                    "content": _text(example.get("content"), f"{at}.content", required=True),
                    "flag": flag,
                    "note": _text(example.get("note"), f"{at}.note"),
                }
            )
        clean.append(
            {
                "name": name,
                "definition": _text(item.get("definition"), f"{where}.definition", required=True),
                "violates": _text(item.get("violates"), f"{where}.violates"),
                "safe": _text(item.get("safe"), f"{where}.safe"),
                "examples": clean_examples,
            }
        )
    return clean


# --- prompts ------------------------------------------------------------------------------------------------


def policy_text(document: PolicyDocument) -> str:
    """The policy as the model reads it (generic style), shown in the console as it is sent."""
    lines = [f"# Policy: {document.name}"]
    if document.instructions:
        lines += ["", "## Instructions", document.instructions]
    lines += ["", "## Categories"]
    for category in document.categories:
        lines += ["", f"### {category.name} (rule id: {category.name})", f"Definition: {category.definition}"]
        if category.violates:
            lines.append(f"Violates: {category.violates}")
        if category.safe:
            lines.append(f"Safe (does not violate): {category.safe}")
        for example in category.examples:
            note = f" — {example.note}" if example.note else ""
            lines.append(f"Example: {json.dumps(example.content)} -> {example.flag}{note}")
    return "\n".join(lines)


def _contract(document: PolicyDocument) -> str:
    names = ", ".join(json.dumps(n) for n in document.category_names)
    return (
        'Answer with a JSON object only: {"flag": "safe" or "unsafe", "category": one of ['
        f"{names}] when unsafe, null when safe, "
        '"reason": one or two sentences citing the policy, "rule_ids": [the rule ids applied], '
        '"confidence": 0..1}.'
    )


def _safeguard_policy(document: PolicyDocument) -> str:
    lines = [f"# {document.name}", "", "## INSTRUCTIONS"]
    lines.append(
        document.instructions
        or "Decide whether the content violates this policy. Judge the content itself, not its author."
    )
    lines += ["", "## DEFINITIONS"]
    lines += [f"- {c.name}: {c.definition}" for c in document.categories]
    lines += ["", "## VIOLATES (unsafe)"]
    lines += [f"- {c.name}: {c.violates or c.definition}" for c in document.categories]
    lines += ["", "## SAFE"]
    lines += [f"- {c.name}: {c.safe}" for c in document.categories if c.safe] or [
        "- Anything not listed above."
    ]
    examples = [(c.name, e) for c in document.categories for e in c.examples]
    if examples:
        lines += ["", "## EXAMPLES"]
        for name, example in examples:
            verdict = f"unsafe ({name})" if example.flag == UNSAFE else "safe"
            note = f" — {example.note}" if example.note else ""
            lines.append(f"- Content: {json.dumps(example.content)} -> {verdict}{note}")
    lines += ["", "## OUTPUT FORMAT", _contract(document)]
    return "\n".join(lines)


def llama_guard_codes(document: PolicyDocument) -> dict[str, str]:
    """S-code -> category: S1 is the policy's first category."""
    return {f"S{i + 1}": c.name for i, c in enumerate(document.categories)}


def _llama_guard_prompt(document: PolicyDocument, content: str) -> str:
    categories = "\n".join(
        f"S{i + 1}: {c.name}.\n{c.definition}" + (f"\nViolates: {c.violates}" if c.violates else "")
        for i, c in enumerate(document.categories)
    )
    return (
        "Task: Check if there is unsafe content in 'User' messages in conversations according our safety "
        "policy with the below categories.\n\n"
        f"<BEGIN UNSAFE CONTENT CATEGORIES>\n{categories}\n<END UNSAFE CONTENT CATEGORIES>\n\n"
        f"<BEGIN CONVERSATION>\n\nUser: {content}\n\n<END CONVERSATION>\n\n"
        "Provide your safety assessment for ONLY THE LAST User message in the above conversation:\n"
        " - First line must read 'safe' or 'unsafe'.\n"
        " - If unsafe, a second line must include a comma-separated list of violated categories."
    )


def _user_content(text: str, image_url: str | None) -> Any:
    if image_url is None:
        return text
    parts: list[dict[str, Any]] = []
    if text:
        parts.append({"type": "text", "text": text})
    parts.append({"type": "image_url", "image_url": {"url": image_url}})
    return parts


def policy_messages(document: PolicyDocument, *, text: str, image_url: str | None = None) -> list[Message]:
    """The chat messages that ask for one input's decision in the policy's prompt style."""
    style = document.prompt_style
    if style == "llama_guard":
        prompt = _llama_guard_prompt(document, text or "(see the image)")
        return [{"role": "user", "content": _user_content(prompt, image_url)}]
    if style == "safeguard":
        return [
            {"role": "system", "content": _safeguard_policy(document)},
            {"role": "user", "content": _user_content(text, image_url)},
        ]
    system = (
        "You are a content moderator. Apply the policy you are given to the content, exactly as written: a "
        "content violates a category only as the policy defines it. " + _contract(document)
    )
    user = f"{policy_text(document)}\n\n# Content to review\n<<<\n{text}\n>>>"
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": _user_content(user, image_url)},
    ]


def decision_schema(document: PolicyDocument) -> dict[str, Any]:
    """The contract as a JSON Schema: an unsafe answer names one of the policy's categories."""
    names: list[Any] = list(document.category_names)
    return {
        "type": "object",
        "properties": {
            "flag": {"type": "string", "enum": [SAFE, UNSAFE]},
            "category": {"type": ["string", "null"], "enum": [*names, None]},
            "reason": {"type": "string", "minLength": 1},
            "rule_ids": {"type": "array", "items": {"type": "string"}},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["flag", "category", "reason"],
        "additionalProperties": False,
        "if": {"properties": {"flag": {"const": UNSAFE}}},
        "then": {"properties": {"category": {"type": "string", "enum": names}}},
    }


# --- the decision -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyDecision:
    flagged: bool
    category: str | None
    reason: str
    # Per category: the probability the input violates it.
    scores: dict[str, float]
    # Where the scores came from: "logprobs", "confidence" or "decision".
    score_source: str
    rule_ids: tuple[str, ...] = ()
    confidence: float | None = None
    raw: str = ""
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # The two-stage image path's caption and checklist answers.
    intermediate: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "flag": UNSAFE if self.flagged else SAFE,
            "category": self.category,
            "reason": self.reason,
            "rule_ids": list(self.rule_ids),
            "confidence": self.confidence,
            "scores": self.scores,
            "score_source": self.score_source,
            "raw": self.raw,
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "intermediate": self.intermediate,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicyDecision:
        return cls(
            flagged=data["flag"] == UNSAFE,
            category=data.get("category"),
            reason=str(data.get("reason") or ""),
            scores={str(k): float(v) for k, v in (data.get("scores") or {}).items()},
            score_source=str(data.get("score_source") or "decision"),
            rule_ids=tuple(data.get("rule_ids") or ()),
            confidence=data.get("confidence"),
            raw=str(data.get("raw") or ""),
            calls=int(data.get("calls") or 0),
            prompt_tokens=int(data.get("prompt_tokens") or 0),
            completion_tokens=int(data.get("completion_tokens") or 0),
            intermediate=data.get("intermediate"),
        )


def _matching(token: str, word: str) -> bool:
    piece = token.strip().strip('"').strip().lower()
    return bool(piece) and word.lower().startswith(piece)


def _share(alternatives: Sequence[tuple[str, float]], words: Sequence[str]) -> dict[str, float] | None:
    """How the probability mass of one token position splits over `words` (tokens that start them)."""
    mass = dict.fromkeys(words, 0.0)
    for token, logprob in alternatives:
        fits = [w for w in words if _matching(token, w)]
        for word in fits:
            mass[word] += math.exp(logprob) / len(fits)
    total = sum(mass.values())
    if total <= 0:
        return None
    return {word: value / total for word, value in mass.items()}


def _value_position(tokens: Sequence[TokenLogprob], key: str) -> int | None:
    """The index of the first token of the JSON value of `key` in the answer tokens."""
    text = ""
    starts = []
    for token in tokens:
        starts.append(len(text))
        text += token.token
    found = re.search(rf'"{re.escape(key)}"\s*:\s*"?', text)
    if found is None:
        return None
    offset = found.end()
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        if start <= offset < end or (start >= offset and tokens[i].token.strip('" ')):
            return i
    return None


def _alternatives(token: TokenLogprob) -> list[tuple[str, float]]:
    return list(token.top) or [(token.token, token.logprob)]


def _scores(
    document: PolicyDocument,
    *,
    flagged: bool,
    category: str | None,
    confidence: float | None,
    tokens: tuple[TokenLogprob, ...] | None,
    flag_at: int | None,
    category_at: int | None,
) -> tuple[dict[str, float], str]:
    names = document.category_names
    if tokens and flag_at is not None:
        flag_share = _share(_alternatives(tokens[flag_at]), [UNSAFE, SAFE])
        if flag_share is not None:
            p_unsafe = flag_share[UNSAFE]
            split = None
            if category_at is not None:
                split = _share(_alternatives(tokens[category_at]), names)
            if split is None:
                split = (
                    {n: 1.0 if n == category else 0.0 for n in names}
                    if category
                    else dict.fromkeys(names, 1.0 / len(names))
                )
            return {n: round(p_unsafe * split[n], 6) for n in names}, "logprobs"
    if confidence is not None:
        if flagged:
            return {n: (confidence if n == category else 0.0) for n in names}, "confidence"
        return dict.fromkeys(names, round(1.0 - confidence, 6)), "confidence"
    return {n: (1.0 if flagged and n == category else 0.0) for n in names}, "decision"


def _llm_error(error: LlmError) -> PolicyError:
    reason = error.reason
    if reason == "malformed_answer" and error.raw and "category" in str(error):
        reason = "unknown_category"
    return PolicyError(reason, str(error), raw=error.raw)


def _json_decision(
    client: LlmClient, document: PolicyDocument, *, text: str, image_url: str | None, logprobs: bool
) -> PolicyDecision:
    messages = policy_messages(document, text=text, image_url=image_url)
    try:
        answer = client.complete_json(
            messages=messages,
            schema=decision_schema(document),
            name="decision",
            strict=False,
            logprobs=logprobs,
        )
    except LlmError as error:
        raise _llm_error(error) from None
    data = answer.data
    flagged = data["flag"] == UNSAFE
    category = data.get("category") if flagged else None
    confidence = data.get("confidence")
    tokens = answer.logprobs
    # After a repair the tokens are the repaired answer's, so the positions are found in that answer.
    scores, source = _scores(
        document,
        flagged=flagged,
        category=category,
        confidence=float(confidence) if confidence is not None else None,
        tokens=tokens,
        flag_at=_value_position(tokens, "flag") if tokens else None,
        category_at=_value_position(tokens, "category") if tokens and flagged else None,
    )
    return _decision(answer, flagged, category, str(data["reason"]), scores, source, data)


def _decision(
    answer: LlmAnswer,
    flagged: bool,
    category: str | None,
    reason: str,
    scores: dict[str, float],
    source: str,
    data: Mapping[str, Any],
) -> PolicyDecision:
    confidence = data.get("confidence")
    return PolicyDecision(
        flagged=flagged,
        category=category,
        reason=reason,
        scores=scores,
        score_source=source,
        rule_ids=tuple(str(r) for r in data.get("rule_ids") or ()),
        confidence=float(confidence) if confidence is not None else None,
        raw=answer.raw,
        calls=answer.calls,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
    )


def _llama_guard_decision(
    client: LlmClient, document: PolicyDocument, *, text: str, image_url: str | None, logprobs: bool
) -> PolicyDecision:
    try:
        answer = client.complete_text(
            messages=policy_messages(document, text=text, image_url=image_url), logprobs=logprobs
        )
    except LlmError as error:
        raise _llm_error(error) from None
    lines = [line.strip() for line in answer.raw.strip().splitlines() if line.strip()]
    verdict = lines[0].lower() if lines else ""
    if verdict not in (SAFE, UNSAFE):
        raise PolicyError(
            "malformed_answer",
            "the answer does not start with 'safe' or 'unsafe' (Llama Guard's format)",
            raw=answer.raw,
            calls=1,
        )
    codes = llama_guard_codes(document)
    named: list[str] = []
    if verdict == UNSAFE:
        asked = [
            code.strip().upper() for code in (lines[1] if len(lines) > 1 else "").split(",") if code.strip()
        ]
        unknown = [code for code in asked if code not in codes]
        if not asked or unknown:
            raise PolicyError(
                "unknown_category",
                f"the answer names {', '.join(unknown) or 'no category'}; the policy has "
                f"{', '.join(f'{c} ({n})' for c, n in codes.items())}",
                raw=answer.raw,
                calls=1,
            )
        named = [codes[code] for code in asked]
    flagged = verdict == UNSAFE
    category = named[0] if named else None
    tokens = answer.logprobs
    first = next((i for i, t in enumerate(tokens or ()) if t.token.strip()), None)
    scores, source = _scores(
        document,
        flagged=flagged,
        category=category,
        confidence=None,
        tokens=tokens,
        flag_at=first,
        category_at=None,
    )
    if flagged and source == "logprobs":
        for name in named[1:]:
            scores[name] = scores[category or name]
    reason = (
        "Llama Guard: " + ", ".join(f"{code} ({codes[code]})" for code in codes if codes[code] in named)
        if flagged
        else "Llama Guard: safe"
    )
    return PolicyDecision(
        flagged=flagged,
        category=category,
        reason=reason,
        scores=scores,
        score_source=source,
        rule_ids=tuple(named),
        raw=answer.raw,
        calls=1,
        prompt_tokens=answer.prompt_tokens,
        completion_tokens=answer.completion_tokens,
    )


CHECKLIST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "caption": {"type": "string", "minLength": 1},
        "answers": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "question": {"type": "string"},
                    "answer": {"type": "string", "enum": ["yes", "no", "unsure"]},
                },
                "required": ["question", "answer"],
            },
        },
    },
    "required": ["caption", "answers"],
}


def image_checklist_messages(document: PolicyDocument, *, image_url: str) -> list[Message]:
    questions = list(document.checklist) or [
        f"Does the image show {c.name}? ({c.definition})" for c in document.categories
    ]
    prompt = (
        "Describe this image factually in one or two sentences (the caption), then answer each question with "
        "yes, no or unsure. Answer with a JSON object only: "
        '{"caption": "...", "answers": [{"question": "...", "answer": "yes" | "no" | "unsure"}]}.\n'
        "Questions:\n" + "\n".join(f"- {q}" for q in questions)
    )
    return [{"role": "user", "content": _user_content(prompt, image_url)}]


def _described(
    vision: LlmClient, document: PolicyDocument, *, image_url: str
) -> tuple[dict[str, Any], int, int, int]:
    try:
        answer = vision.complete_json(
            messages=image_checklist_messages(document, image_url=image_url),
            schema=CHECKLIST_SCHEMA,
            name="checklist",
            strict=False,
        )
    except LlmError as error:
        reason = "image_unreadable" if error.reason in ("bad_request", "malformed_answer") else error.reason
        raise PolicyError(
            reason, f"the vision model gave no description of the image: {error}", raw=error.raw
        ) from None
    return dict(answer.data), answer.calls, answer.prompt_tokens, answer.completion_tokens


def policy_decide(
    document: PolicyDocument,
    *,
    client: LlmClient,
    text: str = "",
    image_url: str | None = None,
    vision_client: LlmClient | None = None,
) -> PolicyDecision:
    """One input's decision. `image_url` is a URL or `data:` URL the endpoint can read (already fetched and
    checked by the caller). Raises `PolicyError`; never answers "safe" for a failure."""
    logprobs = document.provider.logprobs
    decide = _llama_guard_decision if document.prompt_style == "llama_guard" else _json_decision
    if image_url is None or document.provider.vision:
        return decide(client, document, text=text, image_url=image_url, logprobs=logprobs)
    if vision_client is None:
        raise PolicyError(
            "image_unsupported",
            "the policy's endpoint does not read images and the policy names no vision endpoint to describe them",
        )
    described, calls, prompt_tokens, completion_tokens = _described(
        vision_client, document, image_url=image_url
    )
    checklist = "\n".join(f"- {a.get('question')}: {a.get('answer')}" for a in described.get("answers") or [])
    combined = (f"{text}\n\n" if text else "") + (
        f"[Image] Description: {described['caption']}\nChecklist answers:\n{checklist}"
    )
    decision = decide(client, document, text=combined, image_url=None, logprobs=logprobs)
    return PolicyDecision(
        **{
            **decision.__dict__,
            "calls": decision.calls + calls,
            "prompt_tokens": decision.prompt_tokens + prompt_tokens,
            "completion_tokens": decision.completion_tokens + completion_tokens,
            "intermediate": {"caption": described["caption"], "answers": described.get("answers") or []},
        }
    )


# --- the artifact -------------------------------------------------------------------------------------------


def policy_heads(document: PolicyDocument) -> list[dict[str, Any]]:
    """The heads a served policy answers with: one per category, `[safe, unsafe]`, so the moderation APIs name
    each category as it is (see `services/inference/compat.py`)."""
    return [
        {"name": name, "labels": [SAFE, UNSAFE], "multi_label": False, "negative_labels": [SAFE]}
        for name in document.category_names
    ]


def policy_artifact_key(*, org_id: int, model_id: int, version: int) -> str:
    return f"artifacts/org-{org_id}/model-{model_id}/v{version}{POLICY_ARTIFACT_SUFFIX}"


def is_policy_artifact(key: str) -> bool:
    return key.endswith(POLICY_ARTIFACT_SUFFIX)


def policy_artifact_dump(document: PolicyDocument, *, org_id: int, model_id: int, version: int) -> bytes:
    meta = {"org_id": org_id, "model_id": model_id, "version": version}
    return json.dumps({"kind": "policy", "meta": meta, "policy": document.to_dict()}, sort_keys=True).encode()


def policy_artifact_load(data: bytes) -> tuple[PolicyDocument, dict[str, Any]]:
    """The document and `{org_id, model_id, version}` of a policy artifact; `PolicyInvalid` if it is none."""
    try:
        body = json.loads(data)
        if body.get("kind") != "policy":
            raise ValueError("not a policy")
        return PolicyDocument.from_dict(body["policy"]), dict(body["meta"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise PolicyInvalid(f"the policy artifact cannot be read: {error}") from error
