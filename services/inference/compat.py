"""Answers in the shapes of OpenAI's moderation API and Mistral's classifiers API.

OpenAI and Mistral moderation answers name *categories*, each with a flag and a score. An Arbiter
model has heads, each with labels; they map onto categories like this:

- a multi-class head with negative labels (safe, none, not, ...) and exactly one other label, e.g.
  `toxicity` = [safe, toxic], is one category named after the head (`toxicity`), scored by that
  label's probability;
- every other head gives one category per label that is not negative, named `<head>/<label>`
  (`topic/spam`, `topic/scam`), scored by the label's probability.

A category is flagged when its head is flagged with that label (thresholds included), and a result
is flagged when any of its categories is. Negative labels carry no category: their score is one
minus the others' for a multi-class head, and "safe" is not something to flag.

Mistral's classifications answer keeps the native structure: per head, every label's probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arbiter.ml.specs import HeadSpec

NativeResult = dict[str, dict[str, Any]]


def head_categories(spec: HeadSpec) -> list[tuple[str, str]]:
    """`(category, label)` pairs of one head (see the module docstring)."""
    negative = set(spec.resolved_negative_labels)
    positive = [label for label in spec.labels if label not in negative]
    if not spec.multi_label and negative and len(positive) == 1:
        return [(spec.name, positive[0])]
    return [(f"{spec.name}/{label}", label) for label in positive]


def moderation_result(
    result: NativeResult, heads: Sequence[HeadSpec], *, input_type: str | Sequence[str] = "text"
) -> dict[str, Any]:
    """One input's OpenAI moderation result.

    `{flagged, categories, category_scores, category_applied_input_types}`; `input_type` ("text" or "image")
    is what the model classified of the input.
    """
    categories: dict[str, bool] = {}
    scores: dict[str, float] = {}
    for spec in heads:
        native = result[spec.name]
        for category, label in head_categories(spec):
            scores[category] = native["label_scores"][label]
            categories[category] = bool(native["flagged"]) and label in native["labels"]
    return {
        "flagged": any(categories.values()),
        "categories": categories,
        "category_scores": scores,
        "category_applied_input_types": {
            category: [input_type] if isinstance(input_type, str) else list(input_type)
            for category in categories
        },
    }


def mistral_moderation_result(result: NativeResult, heads: Sequence[HeadSpec]) -> dict[str, Any]:
    """One input's Mistral moderation result: `{categories, category_scores}`."""
    full = moderation_result(result, heads)
    return {"categories": full["categories"], "category_scores": full["category_scores"]}


def mistral_classification_result(result: NativeResult) -> dict[str, dict[str, dict[str, float]]]:
    """One input's Mistral classification result: `{<head>: {"scores": {<label>: p}}}`."""
    return {head: {"scores": dict(native["label_scores"])} for head, native in result.items()}


def results_merge(results: Sequence[NativeResult], heads: Sequence[HeadSpec]) -> NativeResult:
    """Several parts of one input (OpenAI's multi-modal input) as one result: per head, the part whose
    flagging labels score highest answers (a flagged part flags the input)."""
    merged: NativeResult = {}
    for spec in heads:
        negative = set(spec.resolved_negative_labels)

        def weight(
            result: NativeResult, name: str = spec.name, negative: set[str] = negative
        ) -> tuple[bool, float]:
            native = result[name]
            scores = [score for label, score in native["label_scores"].items() if label not in negative]
            return bool(native["flagged"]), max(scores, default=0.0)

        merged[spec.name] = max(results, key=weight)[spec.name]
    return merged
