"""Cascades: a deployment that pairs a trained model with a policy.

The trained model answers every input. For each trained category handed to the policy (`heads`: a head with one
flagging label, e.g. `toxicity` = [safe, toxic], or `head/label` for a head with several, e.g. `topic/spam`; the
names `/v1/moderations` gives them), the deciding score is that label's probability. An input whose deciding score
falls inside the band (`low <= score <= high`) for some category is sent to the policy (the inputs of a request
together, through the policy serving code: cached by policy version and input, a 502 naming the input when the
LLM gives no usable decision). The policy's decision then replaces the trained model's answer for those
categories: flagged when the policy flags the mapped policy category, with the policy's score for it and its
reason. Outside the band the trained model decides. Every head of a cascade's result says who decided it
(`decided_by: "model" | "policy"`); a head the policy decided carries `reason` and `policy_category`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from arbiter.api.errors import ApiError
from arbiter.api.fields import MAX_ID
from arbiter.llm.policy import PolicyDecision
from arbiter.ml.specs import HeadSpec
from services.inference.serving.policy import LlmCost, PolicyModel

MODEL, POLICY = "model", "policy"
# A version number is stored as a positive integer column.
MAX_VERSION = 2**31 - 1


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(status=400, code="invalid", message=f"{field}: {message}", details={field: [message]})


@dataclass(frozen=True)
class PolicyRef:
    """The policy a cascade names: a model id or name, and a version (None: the newest known)."""

    model: int | str
    version: int | None


@dataclass(frozen=True)
class Route:
    """A trained category handed to a policy category: `key` as given, the head and label it names."""

    key: str
    head: str
    label: str
    category: str


def _digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def cascade_parse(value: Any) -> tuple[PolicyRef, dict[str, Any]] | None:
    """The policy a create request's `cascade` names and the rest of it, `{band, heads}`, checked for shape
    (whether the heads and categories exist is checked once the versions are known); None without one."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _invalid(
            "cascade",
            'give an object {"policy": {"model", "version"}, "band": [low, high], "heads": {head: category}}.',
        )
    unknown = sorted(set(value) - {"policy", "band", "heads"})
    if unknown:
        raise _invalid("cascade", f"unknown field(s) {', '.join(unknown)}; give policy, band and heads.")
    policy = value.get("policy")
    if not isinstance(policy, dict) or policy.get("model") in (None, ""):
        raise _invalid("cascade.policy", 'give the policy as {"model": <policy model id>, "version": <n>}.')
    model = policy["model"]
    if (
        isinstance(model, bool)
        or not isinstance(model, int | str)
        or ((isinstance(model, int) or _digits(model)) and not 1 <= int(model) <= MAX_ID)
        or (isinstance(model, str) and model.isdigit() and not _digits(model))
        or len(str(model)) > 200
    ):
        raise _invalid("cascade.policy.model", "give the policy model's id (or its name).")
    version = policy.get("version")
    if version is not None and (
        isinstance(version, bool)
        or not (isinstance(version, int) or (isinstance(version, str) and _digits(version)))
        or not 1 <= int(version) <= MAX_VERSION
    ):
        raise _invalid("cascade.policy.version", "give a version number (1, 2, ...).")
    band = value.get("band")
    if (
        not isinstance(band, list | tuple)
        or len(band) != 2
        or any(isinstance(edge, bool) or not isinstance(edge, int | float) for edge in band)
    ):
        raise _invalid("cascade.band", "give the uncertainty band as two numbers [low, high].")
    low, high = band
    if not (0 <= low < high <= 1):  # compared as given: a huge integer is no float
        raise _invalid(
            "cascade.band",
            "the band must lie within 0..1 with low below high, e.g. [0.2, 0.8].",
        )
    heads = value.get("heads")
    if not isinstance(heads, dict) or not heads:
        raise _invalid(
            "cascade.heads",
            'give at least one trained category and the policy category that decides it, e.g. {"toxicity": "hate"}.',
        )
    for key, category in heads.items():
        if not isinstance(category, str) or not category:
            raise _invalid(f"cascade.heads.{key}", "give the name of a category of the policy.")
    ref = PolicyRef(
        model=int(model) if isinstance(model, int) or _digits(model) else str(model),
        version=None if version is None else int(version),
    )
    return ref, {"band": [float(low), float(high)], "heads": {str(k): str(v) for k, v in heads.items()}}


def _positive(spec: HeadSpec) -> list[str]:
    negative = set(spec.resolved_negative_labels)
    return [label for label in spec.labels if label not in negative]


def cascade_routes(
    cascade: Mapping[str, Any],
    trained_heads: Sequence[Mapping[str, Any]] | None,
    policy_categories: Sequence[str] | None,
) -> list[Route]:
    """The categories a cascade hands to its policy, checked against the trained heads and the policy's
    categories when they are known (None: not yet, checked at load)."""
    specs = [HeadSpec.from_dict(head) for head in trained_heads] if trained_heads is not None else None
    names = {
        f"{spec.name}/{label}": (spec.name, label)
        for spec in specs or []
        if spec.multi_label or spec.resolved_negative_labels
        for label in _positive(spec)
    }
    for spec in specs or []:
        positive = _positive(spec)
        if len(positive) == 1 and (spec.multi_label or spec.resolved_negative_labels):
            names[spec.name] = (spec.name, positive[0])
    routes: list[Route] = []
    seen: dict[tuple[str, str], str] = {}
    for key, category in cascade["heads"].items():
        field = f"cascade.heads.{key}"
        if policy_categories is not None and category not in policy_categories:
            raise _invalid(
                field,
                f"the policy has no category '{category}' (categories: {', '.join(policy_categories)}).",
            )
        if specs is None:
            head, _, label = key.partition("/")
            routes.append(Route(key=key, head=head, label=label, category=category))
            continue
        if key not in names:
            head = next((spec for spec in specs if spec.name == key.partition("/")[0]), None)
            if head is not None and not (head.multi_label or head.resolved_negative_labels):
                reason = f"head '{head.name}' sorts inputs into topics and flags none, so there is nothing to hand over"
            elif head is not None and "/" not in key:
                reason = (
                    f"head '{key}' has several flagging labels; name one as '{key}/<label>' "
                    f"({', '.join(f'{key}/{label}' for label in _positive(head))})"
                )
            else:
                reason = f"the model has no category '{key}' (categories: {', '.join(sorted(names))})"
            raise _invalid(field, reason + ".")
        head, label = names[key]
        if (head, label) in seen:
            raise _invalid(field, f"'{seen[(head, label)]}' already hands label '{label}' of '{head}' over.")
        seen[(head, label)] = key
        routes.append(Route(key=key, head=head, label=label, category=category))
    return routes


@dataclass(frozen=True)
class CascadeOutcome:
    """How a request's inputs were decided: how many went to the policy, and what its LLM calls cost."""

    inputs: int
    policy_inputs: int
    cost: LlmCost


def _replace(native: dict[str, Any], spec: HeadSpec, route: Route, decision: PolicyDecision) -> None:
    """The policy's decision for one trained category, in place of the model's."""
    p = round(float(decision.scores.get(route.category, 0.0)), 6)
    flagged = decision.flagged and decision.category == route.category
    scores = dict(native["label_scores"])
    scores[route.label] = p
    negative = set(spec.resolved_negative_labels)
    if spec.multi_label:
        kept = set(native["labels"]) - {route.label} | ({route.label} if flagged else set())
        labels = [label for label in spec.labels if label in kept]
        native["labels"] = labels
        native["label"] = max(labels, key=scores.__getitem__) if labels else None
        native["score"] = max(scores.values())
        native["flagged"] = any(label not in negative for label in labels)
    else:
        if len(spec.labels) == 2:
            other = next(label for label in spec.labels if label != route.label)
            scores[other] = round(1.0 - p, 6)
        if flagged:
            chosen = route.label
        elif native["label"] == route.label:
            chosen = max((label for label in spec.labels if label != route.label), key=scores.__getitem__)
        else:
            chosen = native["label"]
        if chosen != native["label"]:
            native["flagged"] = chosen not in negative and bool(negative)
        elif flagged:
            native["flagged"] = True
        native["label"] = chosen
        native["labels"] = [chosen]
        native["score"] = scores[chosen]
    native["label_scores"] = scores


def cascade_apply(
    results: list[dict[str, dict[str, Any]]],
    *,
    texts: Sequence[str],
    routes: Sequence[Route],
    band: Sequence[float],
    heads: Sequence[HeadSpec],
    policy: PolicyModel,
) -> CascadeOutcome:
    """Send the inputs the trained model is unsure of to the policy and put its decisions in `results` (in
    place), marking each head with who decided it. A policy error is the policy's 502, naming the input."""
    low, high = float(band[0]), float(band[1])
    specs = {spec.name: spec for spec in heads}
    unsure: dict[int, list[Route]] = {}
    for index, result in enumerate(results):
        for native in result.values():
            native["decided_by"] = MODEL
        for route in routes:
            score = float(result[route.head]["label_scores"][route.label])
            if low <= score <= high:
                unsure.setdefault(index, []).append(route)
    if not unsure:
        return CascadeOutcome(inputs=len(results), policy_inputs=0, cost=LlmCost())
    indexes = sorted(unsure)
    decided = policy.decisions_costed([texts[index] for index in indexes], indexes=indexes)
    for index, decision in zip(indexes, decided.decisions, strict=True):
        for route in unsure[index]:
            native = results[index][route.head]
            _replace(native, specs[route.head], route, decision)
            native["decided_by"] = POLICY
            native["reason"] = decision.reason
            native["policy_category"] = route.category
    return CascadeOutcome(inputs=len(results), policy_inputs=len(indexes), cost=decided.cost)
