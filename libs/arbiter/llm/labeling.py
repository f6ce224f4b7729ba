"""Labeling one text with an LLM: the prompt (built from the labels' descriptions, optional few-shot examples and
the text) and the JSON Schema of the answer. The prompt is plain data so the console and API can show it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LabelChoice:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Example:
    text: str
    labels: tuple[str, ...]


TEXT_PLACEHOLDER = "{text}"


def label_system_prompt(*, head: str, labels: Sequence[LabelChoice], multi_label: bool) -> str:
    lines = [
        f"You label texts for the category {head!r}.",
        "Choose every label that applies." if multi_label else "Choose exactly one label.",
        "The labels, each with what it means:",
    ]
    lines += [f"- {label.name}: {label.description or '(no description)'}" for label in labels]
    lines.append(
        'Answer with a JSON object only: {"labels": [...], "confidence": <0..1>}'
        if multi_label
        else 'Answer with a JSON object only: {"label": "...", "confidence": <0..1>}'
    )
    return "\n".join(lines)


def label_messages(
    *,
    head: str,
    labels: Sequence[LabelChoice],
    multi_label: bool,
    text: str,
    examples: Sequence[Example] = (),
) -> list[dict[str, str]]:
    """The chat messages that ask for `text`'s label(s); examples become earlier turns (few-shot)."""
    messages = [
        {"role": "system", "content": label_system_prompt(head=head, labels=labels, multi_label=multi_label)}
    ]
    for example in examples:
        answer: dict[str, Any] = (
            {"labels": list(example.labels), "confidence": 1.0}
            if multi_label
            else {"label": example.labels[0], "confidence": 1.0}
        )
        messages += [
            {"role": "user", "content": example.text},
            {"role": "assistant", "content": json.dumps(answer)},
        ]
    messages.append({"role": "user", "content": text})
    return messages


def label_answer_schema(*, labels: Sequence[LabelChoice], multi_label: bool) -> dict[str, Any]:
    names = [label.name for label in labels]
    confidence = {"type": "number", "minimum": 0, "maximum": 1}
    if multi_label:
        return {
            "type": "object",
            "properties": {
                "labels": {"type": "array", "items": {"type": "string", "enum": names}},
                "confidence": confidence,
            },
            "required": ["labels", "confidence"],
            "additionalProperties": False,
        }
    return {
        "type": "object",
        "properties": {"label": {"type": "string", "enum": names}, "confidence": confidence},
        "required": ["label", "confidence"],
        "additionalProperties": False,
    }


def label_answer_read(data: dict[str, Any], *, multi_label: bool) -> tuple[list[str], float]:
    """The labels and confidence of an answer already checked against `label_answer_schema`."""
    labels = list(dict.fromkeys(data["labels"])) if multi_label else [data["label"]]
    return labels, float(data["confidence"])
