"""Training options as the API takes them: the ML core's defaults, plus the training service's own limit.

The names map one to one onto `arbiter.ml.specs.TrainOptions`, which owns their defaults and allowed values;
`max_invalid_row_percent` is checked by the training service before any training starts.
"""

from __future__ import annotations

from typing import Any

from arbiter.ml.specs import MAX_TIME_BUDGET_MINUTES, SELECTION_RULES, STRATEGIES, TrainOptions

API_OPTIONS: tuple[str, ...] = (
    "strategy",
    "max_epochs",
    "selection_rule",
    "selection_head",
    "early_stopping",
    "learning_rate",
    "batch_size",
    "max_tokens",
    "target_precision",
    "time_budget_minutes",
)

OPTION_DEFAULTS: dict[str, Any] = {
    **{name: getattr(TrainOptions(), name) for name in API_OPTIONS},
    "max_invalid_row_percent": 5.0,
}

__all__ = ["API_OPTIONS", "MAX_TIME_BUDGET_MINUTES", "OPTION_DEFAULTS", "SELECTION_RULES", "STRATEGIES"]
