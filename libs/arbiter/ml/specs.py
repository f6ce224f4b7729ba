"""What to train: head specifications and training options.

Both are frozen dataclasses so they can cross the service boundary (the trainer builds them from the
snapshot manifest and the run's options) and be written into an artifact's `config.json` as they are.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from arbiter.ml.errors import MLError

Strategy = Literal["auto", "head", "full"]
SelectionRule = Literal["balanced_accuracy", "f1", "loss"]

STRATEGIES: tuple[str, ...] = ("auto", "head", "full")
SELECTION_RULES: tuple[str, ...] = ("balanced_accuracy", "f1", "loss")
# The most a run may be given: a day.
MAX_TIME_BUDGET_MINUTES = 24 * 60

# Label names that mean "nothing to flag". Matched case-insensitively on the whole name, or as a
# `not_`/`non-`/`no ` prefix ("not_toxic", "non-offensive"), so OLID's `NOT` and sentiment's `0` count.
_NEGATIVE_NAMES = frozenset(
    {"safe", "none", "not", "neutral", "0", "no", "ok", "clean", "benign", "normal", "false"}
)
_NEGATIVE_PREFIX = re.compile(r"^(not|non|no)[\s_\-]", re.IGNORECASE)


def label_is_negative(label: str) -> bool:
    """Whether a label name reads as "nothing to flag" (safe, none, not, neutral, 0, no, ok, clean, ...)."""
    name = label.strip()
    return name.lower() in _NEGATIVE_NAMES or bool(_NEGATIVE_PREFIX.match(name))


@dataclass(frozen=True)
class HeadSpec:
    """One label column of a snapshot.

    `negative_labels` are the labels that never flag an input; left as None they are detected from the
    label names with `label_is_negative`.
    """

    name: str
    labels: tuple[str, ...]
    multi_label: bool = False
    negative_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        if not self.name:
            raise MLError("A head needs a name.")
        if len(set(self.labels)) != len(self.labels):
            raise MLError(f"Head '{self.name}' lists a label twice: {list(self.labels)}.")
        minimum = 1 if self.multi_label else 2
        if len(self.labels) < minimum:
            kind = "multi-label" if self.multi_label else "multi-class"
            raise MLError(
                f"Head '{self.name}' is {kind} and needs at least {minimum} label(s), "
                f"got {list(self.labels)}."
            )
        if self.negative_labels is not None:
            object.__setattr__(self, "negative_labels", tuple(self.negative_labels))
            unknown = set(self.negative_labels) - set(self.labels)
            if unknown:
                raise MLError(
                    f"Head '{self.name}': negative labels {sorted(unknown)} are not among its labels."
                )

    @functools.cached_property
    def resolved_negative_labels(self) -> tuple[str, ...]:
        if self.negative_labels is not None:
            return self.negative_labels
        return tuple(label for label in self.labels if label_is_negative(label))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadSpec:
        """Build from the snapshot manifest's `{"name", "labels", "multi_label"}` entry."""
        negative = data.get("negative_labels")
        return cls(
            name=str(data["name"]),
            labels=tuple(str(label) for label in data["labels"]),
            multi_label=bool(data.get("multi_label", False)),
            negative_labels=None if negative is None else tuple(str(label) for label in negative),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "labels": list(self.labels),
            "multi_label": self.multi_label,
            "negative_labels": list(self.resolved_negative_labels),
        }


@dataclass(frozen=True)
class TrainOptions:
    """Training options; the API's `options` object maps onto these fields one to one.

    `learning_rate` left as None picks the strategy's default (3e-3 for heads on a frozen encoder,
    5e-5 for fine-tuning). `valid_percent` of the training rows is held out (stratified, seeded) to
    pick the best epoch, the `auto` candidate and the thresholds; `test_percent` is the share of rows
    whose `split` is null that goes to the test set. `time_budget_minutes` bounds the whole training:
    `auto` plans its candidates to use it, `head` and `full` stop their epochs at it.
    """

    strategy: Strategy = "auto"
    max_epochs: int = 20
    selection_rule: SelectionRule = "balanced_accuracy"
    selection_head: str | None = None
    early_stopping: int = 3
    learning_rate: float | None = None
    batch_size: int = 32
    max_tokens: int = 128
    seed: int = 0
    time_budget_minutes: float = 20.0
    target_precision: float | None = None
    valid_percent: float = 10.0
    test_percent: float = 20.0
    class_weighting: bool = True
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    export_onnx: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise MLError(f"Unknown strategy '{self.strategy}'; use one of {list(STRATEGIES)}.")
        if self.selection_rule not in SELECTION_RULES:
            raise MLError(
                f"Unknown selection rule '{self.selection_rule}'; use one of {list(SELECTION_RULES)}."
            )
        if self.max_epochs < 1:
            raise MLError("max_epochs must be at least 1.")
        if self.early_stopping < 0:
            raise MLError("early_stopping is a patience in epochs: 0 (off) or more.")
        if self.batch_size < 1 or self.max_tokens < 8:
            raise MLError("batch_size must be at least 1 and max_tokens at least 8.")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise MLError("learning_rate must be between 0 and 1.")
        if self.target_precision is not None and not 0 < self.target_precision <= 1:
            raise MLError("target_precision must be in (0, 1].")
        if not 0 <= self.valid_percent < 100 or not 0 <= self.test_percent < 100:
            raise MLError("valid_percent and test_percent must be in [0, 100).")
        if not 0 < self.time_budget_minutes <= MAX_TIME_BUDGET_MINUTES:
            raise MLError(f"time_budget_minutes must be in (0, {MAX_TIME_BUDGET_MINUTES}].")

    @property
    def time_budget_s(self) -> float:
        return self.time_budget_minutes * 60.0

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainOptions:
        """Build from the run's options; keys this library does not use are kept in `extra`."""
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values = {key: value for key, value in data.items() if key in known}
        extra = {key: value for key, value in data.items() if key not in known}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("extra")
        return data
