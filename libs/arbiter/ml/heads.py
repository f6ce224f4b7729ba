"""Linear heads in torch: masked, class-weighted losses and the epoch loop shared by `head` and `full`.

One `nn.Linear` per head reads the sentence embedding. Multi-class heads use softmax cross-entropy with
"balanced" class weights (n / (k * n_c)); multi-label heads use sigmoid binary cross-entropy with a
positive weight per label (negatives / positives, at most 20). Rows where a head does not apply add
nothing to its loss; each head's loss is the mean over its applicable rows, and the heads' losses add up.
Rows with a sample weight (`HeadLabels.weights`) count that many times in their head's mean.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from arbiter.ml.data import LabelledRows
from arbiter.ml.errors import TrainingCancelled
from arbiter.ml.metrics import head_loss, selection_score
from arbiter.ml.model import ENCODER, HeadModel, LinearComponent, sigmoid, softmax
from arbiter.ml.specs import HeadSpec, TrainOptions

_MAX_POSITIVE_WEIGHT = 20.0
DEFAULT_LEARNING_RATE = 3e-3


@dataclass(frozen=True)
class EpochProgress:
    """What the trainer reports after each epoch (`training.progress`).

    `selection_metric` is the value of the selection rule on the validation rows (for the `loss` rule,
    the loss itself); `head_metrics` the same per head. `best` tells whether this epoch is the best so
    far, i.e. the weights that will be kept.
    """

    candidate: str
    epoch: int
    max_epochs: int
    train_loss: float | None
    valid_loss: float | None
    selection_metric: float | None
    head_metrics: dict[str, float]
    best: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "epoch": self.epoch,
            "max_epochs": self.max_epochs,
            "train_loss": self.train_loss,
            "valid_loss": self.valid_loss,
            "selection_metric": self.selection_metric,
            "head_metrics": dict(self.head_metrics),
            "best": self.best,
            "seconds": round(self.seconds, 3),
        }


ProgressCallback = Callable[[EpochProgress], None]
CancelCheck = Callable[[], bool]
# What a time budget is measured on: `time.monotonic` unless a caller (a test) simulates time.
Clock = Callable[[], float]


def cancel_check(should_cancel: CancelCheck | None) -> None:
    if should_cancel is not None and should_cancel():
        raise TrainingCancelled("The training run was cancelled.")


class HeadStack(nn.Module):
    """One linear layer per head over a shared feature vector."""

    def __init__(self, specs: Sequence[HeadSpec], dim: int) -> None:
        super().__init__()
        self.specs = list(specs)
        self.linears = nn.ModuleList(nn.Linear(dim, len(spec.labels)) for spec in self.specs)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        return [linear(features) for linear in self.linears]

    def layers(self) -> list[tuple[HeadSpec, nn.Linear]]:
        return [
            (spec, typing.cast(nn.Linear, linear))
            for spec, linear in zip(self.specs, self.linears, strict=True)
        ]

    def initialise(self, parents: dict[str, LinearComponent]) -> None:
        """Start heads from a parent's encoder components (same labels), the others stay random."""
        with torch.no_grad():
            for spec, linear in self.layers():
                if spec.name in parents:
                    linear.weight.copy_(torch.from_numpy(parents[spec.name].weight))
                    linear.bias.copy_(torch.from_numpy(parents[spec.name].bias))

    def head_models(self) -> list[HeadModel]:
        models = []
        for spec, linear in self.layers():
            component = LinearComponent(
                features=ENCODER,
                weight=linear.weight.detach().cpu().float().numpy().copy(),
                bias=linear.bias.detach().cpu().float().numpy().copy(),
            )
            head = HeadModel(spec=spec, components=[component])
            head.thresholds = head.default_thresholds()
            models.append(head)
        return models

    def probabilities(self, embeddings: np.ndarray) -> dict[str, np.ndarray]:
        result = {}
        for spec, linear in self.layers():
            weight = linear.weight.detach().cpu().float().numpy()
            bias = linear.bias.detach().cpu().float().numpy()
            logits = embeddings @ weight.T + bias
            result[spec.name] = sigmoid(logits) if spec.multi_label else softmax(logits)
        return result


@dataclass
class HeadTargets:
    """Training targets as tensors, with the loss weights computed from the training counts."""

    indicators: list[torch.Tensor]
    masks: list[torch.Tensor]
    weights: list[torch.Tensor]
    specs: list[HeadSpec] = field(default_factory=list)
    # Per head, each row's sample weight; None where every row weighs 1 (the plain mean losses).
    row_weights: list[torch.Tensor | None] = field(default_factory=list)

    @classmethod
    def from_rows(cls, rows: LabelledRows, *, class_weighting: bool, device: torch.device) -> HeadTargets:
        indicators, masks, weights, specs = [], [], [], []
        row_weights: list[torch.Tensor | None] = []
        for head in rows.heads.values():
            specs.append(head.spec)
            row_weights.append(None if head.weights is None else torch.from_numpy(head.weights).to(device))
            indicators.append(torch.from_numpy(head.indicators).to(device))
            masks.append(torch.from_numpy(head.mask).to(device))
            applicable = head.indicators[head.mask]
            count = len(head.spec.labels)
            weight = np.ones(count, dtype=np.float32)
            if class_weighting and len(applicable):
                positives = applicable.sum(axis=0)
                if head.spec.multi_label:
                    negatives = len(applicable) - positives
                    ratio = np.divide(negatives, positives, out=np.ones_like(positives), where=positives > 0)
                    weight = np.clip(ratio, 1.0, _MAX_POSITIVE_WEIGHT).astype(np.float32)
                else:
                    present = positives > 0
                    balanced = len(applicable) / (present.sum() * np.maximum(positives, 1.0))
                    weight = np.where(present, balanced, 1.0).astype(np.float32)
            weights.append(torch.from_numpy(weight).to(device))
        return cls(indicators=indicators, masks=masks, weights=weights, specs=specs, row_weights=row_weights)

    def loss(self, logits: list[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        """Sum over heads of each head's weighted mean loss on the applicable rows of `index`."""
        total = logits[0].new_zeros(())
        for spec, head_logits, indicators, mask, weight, rows in zip(
            self.specs, logits, self.indicators, self.masks, self.weights, self.row_weights, strict=True
        ):
            applies = mask[index]
            if not applies.any():
                continue
            head_logits = head_logits[applies].float()
            target = indicators[index][applies]
            if rows is not None:
                loss = _weighted_loss(spec, head_logits, target, weight, rows[index][applies])
            elif spec.multi_label:
                loss = nn.functional.binary_cross_entropy_with_logits(
                    head_logits, target, pos_weight=weight, reduction="mean"
                )
            else:
                loss = nn.functional.cross_entropy(head_logits, target.argmax(dim=1), weight=weight)
            total = total + loss
        return total


def _weighted_loss(
    spec: HeadSpec, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, rows: torch.Tensor
) -> torch.Tensor:
    """The head's loss with each row counted `rows` times: with weights all 1, exactly the unweighted loss
    (cross-entropy's mean is over the rows' class weights, binary cross-entropy's over rows and labels)."""
    if spec.multi_label:
        per_row = nn.functional.binary_cross_entropy_with_logits(
            logits, target, pos_weight=weight, reduction="none"
        ).mean(dim=1)
        return (per_row * rows).sum() / rows.sum()
    classes = target.argmax(dim=1)
    per_row = nn.functional.cross_entropy(logits, classes, weight=weight, reduction="none")
    return (per_row * rows).sum() / (weight[classes] * rows).sum()


def mean_head_loss(probabilities: dict[str, np.ndarray], rows: LabelledRows) -> float:
    """Mean over heads of each head's cross-entropy on its applicable rows (inf when no head applies)."""
    losses = [
        loss
        for name, labels in rows.heads.items()
        if (loss := head_loss(probabilities[name], labels)) is not None
    ]
    return float(np.mean(losses)) if losses else math.inf


@dataclass
class EpochTracker:
    """Scores each epoch on the validation rows, keeps the best state and decides early stopping."""

    candidate: str
    options: TrainOptions
    valid: LabelledRows
    on_progress: ProgressCallback | None
    best_score: float = -math.inf
    best_loss: float = math.inf
    best_epoch: int = 0
    best_state: Any = None
    history: list[EpochProgress] = field(default_factory=list)
    # Set when the epochs stopped at the deadline before `max_epochs` or early stopping: why, in words.
    stopped: str | None = None

    def deadline_stop(self, planned: int) -> None:
        """Record that the epochs stopped at the deadline (the best epoch so far is the one kept)."""
        self.stopped = (
            f"stopped at the time budget after {len(self.history)} of {planned} epochs; the best epoch "
            f"({self.best_epoch}) kept"
        )

    def record(
        self,
        *,
        epoch: int,
        train_loss: float,
        probabilities: dict[str, np.ndarray],
        state: Callable[[], Any],
        started: float,
    ) -> bool:
        """Record an epoch; returns True when training should stop (patience exhausted)."""
        rule = self.options.selection_rule
        score, per_head = selection_score(
            probabilities=probabilities, rows=self.valid, rule=rule, head=self.options.selection_head
        )
        valid_loss = mean_head_loss(probabilities, self.valid)
        losses = [valid_loss] if math.isfinite(valid_loss) else []
        # Accuracy-like scores plateau long before the model stops improving: on a tie, the lower
        # validation loss wins, so training goes on while the probabilities still get better.
        improved = score > self.best_score + 1e-9 or (
            abs(score - self.best_score) <= 1e-9 and valid_loss < self.best_loss
        )
        if improved:
            self.best_score, self.best_loss = score, valid_loss
            self.best_epoch, self.best_state = epoch, copy.deepcopy(state())
        sign = -1.0 if rule == "loss" else 1.0
        progress = EpochProgress(
            candidate=self.candidate,
            epoch=epoch,
            max_epochs=self.options.max_epochs,
            train_loss=round(train_loss, 6),
            valid_loss=round(valid_loss, 6) if losses else None,
            selection_metric=round(sign * score, 6) if math.isfinite(score) else None,
            head_metrics={name: round(sign * value, 6) for name, value in per_head.items()},
            best=improved,
            seconds=time.monotonic() - started,
        )
        self.history.append(progress)
        if self.on_progress is not None:
            self.on_progress(progress)
        patience = self.options.early_stopping
        return bool(patience) and epoch - self.best_epoch >= patience


def heads_train_frozen(
    *,
    specs: Sequence[HeadSpec],
    fit: LabelledRows,
    fit_embeddings: np.ndarray,
    valid: LabelledRows,
    valid_embeddings: np.ndarray,
    options: TrainOptions,
    parents: dict[str, LinearComponent],
    on_progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
    candidate: str = "head",
    keep_best: bool = True,
    deadline: float | None = None,
    clock: Clock = time.monotonic,
) -> tuple[list[HeadModel], EpochTracker]:
    """Train heads on fixed embeddings with AdamW; returns the heads and the history.

    The heads are the best epoch's by the selection rule on `valid`, or with `keep_best=False` the last
    epoch's (for cross-validation, where `valid` is the held-out fold and must not choose). With a
    `deadline` (a `clock()` value) no epoch starts that would, at the pace of the epochs so far, end after
    it, and an epoch still running at the deadline ends there; the first epoch always runs, and the
    tracker's `stopped` says when the deadline cut the epochs.
    """
    with _one_thread():
        return _heads_train_frozen(
            specs=specs,
            fit=fit,
            fit_embeddings=fit_embeddings,
            valid=valid,
            valid_embeddings=valid_embeddings,
            options=options,
            parents=parents,
            on_progress=on_progress,
            should_cancel=should_cancel,
            candidate=candidate,
            keep_best=keep_best,
            deadline=deadline,
            clock=clock,
        )


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Head steps multiply a batch by a few hundred weights: thread hand-offs cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _heads_train_frozen(
    *,
    specs: Sequence[HeadSpec],
    fit: LabelledRows,
    fit_embeddings: np.ndarray,
    valid: LabelledRows,
    valid_embeddings: np.ndarray,
    options: TrainOptions,
    parents: dict[str, LinearComponent],
    on_progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
    candidate: str,
    keep_best: bool,
    deadline: float | None,
    clock: Clock,
) -> tuple[list[HeadModel], EpochTracker]:
    torch.manual_seed(options.seed)
    device = torch.device("cpu")
    stack = HeadStack(specs, fit_embeddings.shape[1]).to(device)
    stack.initialise(parents)
    targets = HeadTargets.from_rows(fit, class_weighting=options.class_weighting, device=device)
    features = torch.from_numpy(np.ascontiguousarray(fit_embeddings, dtype=np.float32)).to(device)
    optimizer = torch.optim.AdamW(
        stack.parameters(),
        lr=options.learning_rate or DEFAULT_LEARNING_RATE,
        weight_decay=options.weight_decay,
    )
    generator = torch.Generator().manual_seed(options.seed)
    tracker = EpochTracker(candidate=candidate, options=options, valid=valid, on_progress=on_progress)
    first_started = clock()
    for epoch in range(1, options.max_epochs + 1):
        cancel_check(should_cancel)
        started = time.monotonic()
        stack.train()
        order = torch.randperm(len(fit), generator=generator)
        losses: list[float] = []
        for start in range(0, len(order), options.batch_size):
            if deadline is not None and losses and clock() > deadline:
                break
            index = order[start : start + options.batch_size]
            loss = targets.loss(stack(features[index]), index)
            if not loss.requires_grad:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        stack.eval()
        # Reported the way the validation loss is (unweighted mean over heads), so the two curves compare;
        # the optimised loss above is class-weighted and summed over heads.
        stop = tracker.record(
            epoch=epoch,
            train_loss=mean_head_loss(stack.probabilities(fit_embeddings), fit) if losses else 0.0,
            probabilities=stack.probabilities(valid_embeddings),
            state=stack.state_dict,
            started=started,
        )
        if stop:
            break
        epoch_seconds = (clock() - first_started) / epoch
        if deadline is not None and epoch < options.max_epochs and clock() + epoch_seconds > deadline:
            tracker.deadline_stop(options.max_epochs)
            break
    if keep_best:
        stack.load_state_dict(tracker.best_state)
    return stack.head_models(), tracker
