"""The `auto` strategy: try candidates within a time budget and keep the best on the validation rows.

Candidates, in order (each one is skipped when the budget is spent, the first always runs):

1. `tfidf`: word (1-2) + character (2-5) n-gram TF-IDF with logistic regression per head, the
   regularisation C picked per head from a small grid by 3-fold cross-validation on the fit rows.
2. `head`: linear heads on frozen encoder embeddings (the `head` strategy).
3. `full`: fine-tuning (the `full` strategy), when a GPU is present or the measured speed says the
   remaining budget allows at least one epoch, and no kept parent head needs the encoder unchanged.
4. `blend`: per head, the encoder candidate (the better of `head` and `full` on the validation rows) and
   `tfidf` mixed by averaging probabilities, with the encoder's share (1 = encoder only, 0 = TF-IDF
   only) picked per head on out-of-fold predictions for the fit rows plus the validation rows. Small
   heads have few validation rows; choosing on all rows keeps the choice from chasing their noise.

The result is always servable: every choice is a set of linear components (see `arbiter.ml.model`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.model_selection import KFold, StratifiedKFold

from arbiter.ml.data import HeadLabels, LabelledRows
from arbiter.ml.encoders import EmbeddingCache, Encoder
from arbiter.ml.finetune import encoder_finetune
from arbiter.ml.heads import (
    CancelCheck,
    EpochProgress,
    EpochTracker,
    ProgressCallback,
    cancel_check,
    heads_train_frozen,
)
from arbiter.ml.metrics import head_loss, head_score, selection_score
from arbiter.ml.model import ENCODER, HeadModel, LinearComponent, sigmoid, softmax
from arbiter.ml.specs import HeadSpec, TrainOptions
from arbiter.ml.tfidf import TfidfFeatures, logistic_fit

C_GRID = (1.0, 0.5, 2.0, 4.0)
CV_FOLDS = 3
# Tried in this order; a later share replaces an earlier one only when strictly better, so ties keep
# the simpler model.
ENCODER_SHARES = (1.0, 0.0, 0.5, 0.75, 0.25)
# A fine-tuning step on a CPU costs about four inference passes (forward and backward in fp32,
# the optimizer), measured on MiniLM.
_STEP_COST = 4.0


@dataclass
class AutoOutcome:
    heads: list[HeadModel]
    tfidf: TfidfFeatures
    selected: str
    candidates: list[dict[str, Any]]
    history: list[EpochProgress] = field(default_factory=list)
    best_epoch: int | None = None
    encoder_fine_tuned: bool = False


def _probabilities(heads: Sequence[HeadModel], logits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        head.spec.name: sigmoid(logits[head.spec.name])
        if head.spec.multi_label
        else softmax(logits[head.spec.name])
        for head in heads
    }


def _folds(labels: HeadLabels, *, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds over the rows where the head applies, stratified when every class allows.

    No folds for a head with fewer than two rows per fold: its C stays at the first of the grid.
    """
    rows = np.flatnonzero(labels.mask)
    if len(rows) < 2 * CV_FOLDS:
        return []
    indicators = labels.indicators[rows]
    # Multi-label rows are stratified by their first label (or none), which keeps rare labels spread.
    key = np.where(indicators.any(axis=1), indicators.argmax(axis=1), -1)
    _, counts = np.unique(key, return_counts=True)
    splitter = (
        StratifiedKFold(CV_FOLDS, shuffle=True, random_state=seed)
        if counts.min() >= CV_FOLDS
        else KFold(CV_FOLDS, shuffle=True, random_state=seed)
    )
    return [(rows[train], rows[test]) for train, test in splitter.split(rows, key)]


def _logistic_probabilities(
    features: sp.csr_matrix, component: LinearComponent, spec: HeadSpec
) -> np.ndarray:
    logits = np.asarray(features @ component.weight.T) + component.bias
    return sigmoid(logits) if spec.multi_label else softmax(logits)


def _tfidf_candidate(
    *,
    specs: Sequence[HeadSpec],
    fit: LabelledRows,
    valid: LabelledRows,
    options: TrainOptions,
    deadline: float,
    features_name: str,
    should_cancel: CancelCheck | None,
) -> tuple[TfidfFeatures, list[HeadModel], dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """TF-IDF + logistic regression per head, C chosen per head by cross-validation on the fit rows.

    Cross-validation rather than the validation rows: a small head's validation rows are too few to
    rank regularisation strengths, and picking on them overfits them. Returns the featurizer, the
    heads, their validation probabilities, their out-of-fold probabilities on the fit rows, details.
    """
    features = TfidfFeatures.fit(fit.texts)
    x_fit, x_valid = features.transform(fit.texts), features.transform(valid.texts)
    folds = {spec.name: _folds(fit.heads[spec.name], seed=options.seed) for spec in specs}
    scores: dict[str, dict[float, float]] = {spec.name: {} for spec in specs}
    out_of_fold: dict[str, dict[float, np.ndarray]] = {spec.name: {} for spec in specs}
    for c in C_GRID:
        if scores[specs[0].name] and time.monotonic() > deadline:
            break
        for spec in specs:
            labels = fit.heads[spec.name]
            fold_scores = []
            predicted = np.zeros((len(fit), len(spec.labels)))
            for train, test in folds[spec.name]:
                cancel_check(should_cancel)
                weight, bias = logistic_fit(
                    features=x_fit[train],
                    labels=labels.subset(train),
                    c=c,
                    class_weighting=options.class_weighting,
                    seed=options.seed,
                )
                probabilities = _logistic_probabilities(x_fit[test], LinearComponent("", weight, bias), spec)
                predicted[test] = probabilities
                score = head_score(
                    probabilities=probabilities, labels=labels.subset(test), rule=options.selection_rule
                )
                fold_scores.append(-np.inf if score is None else score)
            scores[spec.name][c] = float(np.mean(fold_scores)) if fold_scores else 0.0
            out_of_fold[spec.name][c] = predicted
    heads, valid_probabilities, chosen = [], {}, {}
    for spec in specs:
        # max() keeps the first of equal scores, and the grid starts at the usual C=1.
        chosen[spec.name] = max(scores[spec.name], key=scores[spec.name].__getitem__)
        weight, bias = logistic_fit(
            features=x_fit,
            labels=fit.heads[spec.name],
            c=chosen[spec.name],
            class_weighting=options.class_weighting,
            seed=options.seed,
        )
        head = HeadModel(spec=spec, components=[LinearComponent(features_name, weight, bias)])
        head.thresholds = head.default_thresholds()
        heads.append(head)
        valid_probabilities[spec.name] = _logistic_probabilities(x_valid, head.components[0], spec)
    detail = {"c": chosen, "features": features.dim}
    oof = {name: out_of_fold[name][c] for name, c in chosen.items()}
    return features, heads, valid_probabilities, oof, detail


def _embeddings_fit(
    *,
    encoder: Encoder,
    texts: Sequence[str],
    options: TrainOptions,
    cache: EmbeddingCache | None,
    deadline: float,
) -> bool:
    """Whether embedding the texts not yet cached ends before the deadline, timed on a sample.

    The sample's embeddings go to the cache, so the timing costs nothing when the answer is yes.
    """
    missing = encoder.missing(texts, max_tokens=options.max_tokens, cache=cache)
    if not missing:
        return True
    sample = missing[:64]
    started = time.monotonic()
    encoder.embed(sample, max_tokens=options.max_tokens, cache=cache)
    per_text = (time.monotonic() - started) / len(sample)
    return time.monotonic() + per_text * (len(missing) - len(sample)) < deadline


def _full_epochs_affordable(
    *, encoder: Encoder, fit: LabelledRows, valid: LabelledRows, options: TrainOptions, remaining: float
) -> int:
    """How many fine-tuning epochs fit in `remaining` seconds, from a timed forward pass on a sample."""
    if encoder.device.type == "cuda":
        return options.max_epochs
    sample = list(fit.texts[:64])
    started = time.monotonic()
    encoder.embed(sample, max_tokens=options.max_tokens, bf16=False)
    per_text = (time.monotonic() - started) / max(1, len(sample))
    per_epoch = per_text * (len(fit) * _STEP_COST + len(valid))
    return min(options.max_epochs, int(remaining // max(per_epoch, 1e-6)))


def automl_search(
    *,
    specs: Sequence[HeadSpec],
    fit: LabelledRows,
    valid: LabelledRows,
    options: TrainOptions,
    encoder_load: Any,
    parents: dict[str, LinearComponent],
    allow_full: bool,
    cache: EmbeddingCache | None,
    features_name: str,
    on_progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
) -> tuple[AutoOutcome, Encoder | None]:
    """Run the candidates; returns the outcome and the encoder (fine-tuned if `full` won) when used."""
    started = time.monotonic()
    deadline = started + options.time_budget_s
    rule, focus = options.selection_rule, options.selection_head
    sign = -1.0 if rule == "loss" else 1.0
    candidates: list[dict[str, Any]] = []

    features, tfidf_heads, tfidf_valid, tfidf_oof, detail = _tfidf_candidate(
        specs=specs,
        fit=fit,
        valid=valid,
        options=options,
        deadline=deadline,
        features_name=features_name,
        should_cancel=should_cancel,
    )
    tfidf_score, tfidf_per_head = selection_score(
        probabilities=tfidf_valid, rows=valid, rule=rule, head=focus
    )
    tfidf_seconds = time.monotonic() - started
    losses = [
        loss
        for name, labels in valid.heads.items()
        if (loss := head_loss(tfidf_valid[name], labels)) is not None
    ]
    progress = EpochProgress(
        candidate="tfidf",
        epoch=1,
        max_epochs=1,
        train_loss=None,
        valid_loss=round(float(np.mean(losses)), 6) if losses else None,
        selection_metric=round(sign * tfidf_score, 6),
        head_metrics={name: round(sign * value, 6) for name, value in tfidf_per_head.items()},
        best=True,
        seconds=tfidf_seconds,
    )
    if on_progress is not None:
        on_progress(progress)
    candidates.append(
        {
            "name": "tfidf",
            "selection_metric": round(sign * tfidf_score, 6),
            "seconds": round(tfidf_seconds, 2),
            **detail,
        }
    )
    history = [progress]

    encoder: Encoder | None = None
    fit_embeddings: np.ndarray | None = None
    encoder_heads: list[HeadModel] | None = None
    encoder_valid: dict[str, np.ndarray] | None = None
    encoder_tracker: EpochTracker | None = None
    encoder_name = ""
    fine_tuned = False
    phase = time.monotonic()
    if phase < deadline:
        cancel_check(should_cancel)
        encoder = encoder_load()
        if not _embeddings_fit(
            encoder=encoder, texts=fit.texts + valid.texts, options=options, cache=cache, deadline=deadline
        ):
            encoder = None
            candidates.append({"name": "head", "skipped": "embedding the rows would overrun the time budget"})
    else:
        candidates.append({"name": "head", "skipped": "the time budget was spent"})
    if encoder is not None:
        fit_embeddings = encoder.embed(fit.texts, max_tokens=options.max_tokens, cache=cache)
        valid_embeddings = encoder.embed(valid.texts, max_tokens=options.max_tokens, cache=cache)
        encoder_heads, encoder_tracker = heads_train_frozen(
            specs=specs,
            fit=fit,
            fit_embeddings=fit_embeddings,
            valid=valid,
            valid_embeddings=valid_embeddings,
            options=options,
            parents=parents,
            on_progress=on_progress,
            should_cancel=should_cancel,
        )
        encoder_name = "head"
        encoder_valid = _probabilities(encoder_heads, _encoder_logits(encoder_heads, valid_embeddings))
        history.extend(encoder_tracker.history)
        candidates.append(
            {
                "name": "head",
                "selection_metric": round(sign * encoder_tracker.best_score, 6),
                "seconds": round(time.monotonic() - phase, 2),
                "best_epoch": encoder_tracker.best_epoch,
            }
        )
        remaining = deadline - time.monotonic()
        epochs = (
            _full_epochs_affordable(
                encoder=encoder, fit=fit, valid=valid, options=options, remaining=remaining
            )
            if allow_full and remaining > 0
            else 0
        )
        if epochs >= 1:
            phase = time.monotonic()
            frozen_state = copy.deepcopy(encoder.model.state_dict())
            full_heads, full_tracker = encoder_finetune(
                encoder=encoder,
                specs=specs,
                fit=fit,
                valid=valid,
                options=options,
                parents=parents,
                on_progress=on_progress,
                should_cancel=should_cancel,
                max_epochs=epochs,
                deadline=deadline,
            )
            history.extend(full_tracker.history)
            candidates.append(
                {
                    "name": "full",
                    "selection_metric": round(sign * full_tracker.best_score, 6),
                    "seconds": round(time.monotonic() - phase, 2),
                    "best_epoch": full_tracker.best_epoch,
                    "epochs": len(full_tracker.history),
                }
            )
            if full_tracker.best_score > encoder_tracker.best_score:
                valid_embeddings = encoder.embed(valid.texts, max_tokens=options.max_tokens)
                encoder_heads, encoder_tracker, encoder_name, fine_tuned = (
                    full_heads,
                    full_tracker,
                    "full",
                    True,
                )
                encoder_valid = _probabilities(full_heads, _encoder_logits(full_heads, valid_embeddings))
            else:
                encoder.model.load_state_dict(frozen_state)
                encoder.weights_changed()
        elif allow_full:
            candidates.append(
                {"name": "full", "skipped": "the time budget does not allow one epoch on this CPU"}
            )

    if encoder_heads is None or encoder_valid is None or encoder_tracker is None:
        return AutoOutcome(
            heads=tfidf_heads, tfidf=features, selected="tfidf", candidates=candidates, history=history
        ), None

    # Shares are picked on out-of-fold predictions for the fit rows plus the validation rows when the
    # encoder candidate is `head` (cheap to cross-validate on cached embeddings); a fine-tuned encoder
    # has seen the fit rows, so `full` is blended on the validation rows alone.
    share_rows, encoder_probabilities, tfidf_probabilities = valid, encoder_valid, tfidf_valid
    enough_rows = len(fit) >= 2 * CV_FOLDS
    if encoder_name == "head" and fit_embeddings is not None and enough_rows and time.monotonic() < deadline:
        encoder_oof = _encoder_out_of_fold(
            specs=specs,
            fit=fit,
            embeddings=fit_embeddings,
            options=options,
            parents=parents,
            epochs=encoder_tracker.best_epoch,
            should_cancel=should_cancel,
        )
        share_rows = fit.concat(valid)
        encoder_probabilities = {n: np.concatenate([encoder_oof[n], encoder_valid[n]]) for n in encoder_valid}
        tfidf_probabilities = {n: np.concatenate([tfidf_oof[n], tfidf_valid[n]]) for n in tfidf_valid}
    shares = _shares_choose(
        specs=specs, encoder=encoder_probabilities, tfidf=tfidf_probabilities, rows=share_rows, rule=rule
    )
    heads = []
    for spec, encoder_head, tfidf_head in zip(specs, encoder_heads, tfidf_heads, strict=True):
        best_share = shares[spec.name]
        components = []
        if best_share > 0:
            components.append(
                LinearComponent(
                    ENCODER, encoder_head.components[0].weight, encoder_head.components[0].bias, best_share
                )
            )
        if best_share < 1:
            tfidf_component = tfidf_head.components[0]
            components.append(
                LinearComponent(
                    tfidf_component.features, tfidf_component.weight, tfidf_component.bias, 1 - best_share
                )
            )
        head = HeadModel(spec=spec, components=components)
        head.thresholds = head.default_thresholds()
        heads.append(head)
    blended = {
        name: shares[name] * encoder_valid[name] + (1 - shares[name]) * tfidf_valid[name] for name in shares
    }
    blend_score, _ = selection_score(probabilities=blended, rows=valid, rule=rule, head=focus)
    candidates.append(
        {
            "name": "blend",
            "selection_metric": round(sign * blend_score, 6),
            "encoder": encoder_name,
            "encoder_share": shares,
        }
    )
    if all(share == 1.0 for share in shares.values()):
        selected = encoder_name
    elif all(share == 0.0 for share in shares.values()):
        selected = "tfidf"
    else:
        selected = "blend"
    uses_encoder = any(share > 0 for share in shares.values())
    return (
        AutoOutcome(
            heads=heads,
            tfidf=features,
            selected=selected,
            candidates=candidates,
            history=history,
            best_epoch=encoder_tracker.best_epoch if uses_encoder else None,
            encoder_fine_tuned=fine_tuned and uses_encoder,
        ),
        encoder if uses_encoder else None,
    )


def _encoder_out_of_fold(
    *,
    specs: Sequence[HeadSpec],
    fit: LabelledRows,
    embeddings: np.ndarray,
    options: TrainOptions,
    parents: dict[str, LinearComponent],
    epochs: int,
    should_cancel: CancelCheck | None,
) -> dict[str, np.ndarray]:
    """Out-of-fold probabilities of the `head` candidate on the fit rows, `epochs` epochs per fold."""
    fold_options = dataclasses.replace(options, max_epochs=max(1, epochs), early_stopping=0)
    predicted = {spec.name: np.zeros((len(fit), len(spec.labels))) for spec in specs}
    for train, test in KFold(CV_FOLDS, shuffle=True, random_state=options.seed).split(np.arange(len(fit))):
        heads, _ = heads_train_frozen(
            specs=specs,
            fit=fit.subset(train),
            fit_embeddings=embeddings[train],
            valid=fit.subset(test),
            valid_embeddings=embeddings[test],
            options=fold_options,
            parents=parents,
            on_progress=None,
            should_cancel=should_cancel,
            keep_best=False,
        )
        for name, probabilities in _probabilities(heads, _encoder_logits(heads, embeddings[test])).items():
            predicted[name][test] = probabilities
    return predicted


def _shares_choose(
    *,
    specs: Sequence[HeadSpec],
    encoder: dict[str, np.ndarray],
    tfidf: dict[str, np.ndarray],
    rows: LabelledRows,
    rule: str,
) -> dict[str, float]:
    """Per head, the encoder's share in the blend that scores best on `rows` (ties: the simpler one)."""
    shares = {}
    for spec in specs:
        best_share, best_score = 1.0, -np.inf
        for share in ENCODER_SHARES:
            mixed = share * encoder[spec.name] + (1 - share) * tfidf[spec.name]
            score = head_score(probabilities=mixed, labels=rows.heads[spec.name], rule=rule)
            if score is not None and score > best_score:
                best_share, best_score = share, score
        shares[spec.name] = best_share
    return shares


def _encoder_logits(heads: Sequence[HeadModel], embeddings: np.ndarray) -> dict[str, np.ndarray]:
    return {
        head.spec.name: embeddings @ head.components[0].weight.T + head.components[0].bias for head in heads
    }
