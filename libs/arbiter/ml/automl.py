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


@dataclass
class _Search:
    """What every candidate works with (rows, options, budget, callbacks) and what the search has recorded."""

    specs: Sequence[HeadSpec]
    fit: LabelledRows
    valid: LabelledRows
    options: TrainOptions
    parents: dict[str, LinearComponent]
    cache: EmbeddingCache | None
    on_progress: ProgressCallback | None
    should_cancel: CancelCheck | None
    started: float
    deadline: float
    candidates: list[dict[str, Any]] = field(default_factory=list)
    history: list[EpochProgress] = field(default_factory=list)

    @property
    def sign(self) -> float:
        """Scores are compared higher-is-better; a loss is reported as itself."""
        return -1.0 if self.options.selection_rule == "loss" else 1.0

    def score(self, probabilities: dict[str, np.ndarray]) -> tuple[float, dict[str, float]]:
        return selection_score(
            probabilities=probabilities,
            rows=self.valid,
            rule=self.options.selection_rule,
            head=self.options.selection_head,
        )


@dataclass
class _Tfidf:
    """The `tfidf` candidate: its featurizer and heads, their probabilities on the validation rows and out of
    fold on the fit rows, and the details reported (C per head, feature count)."""

    features: TfidfFeatures
    heads: list[HeadModel]
    valid_probabilities: dict[str, np.ndarray]
    out_of_fold: dict[str, np.ndarray]
    detail: dict[str, Any]


@dataclass
class _EncoderCandidate:
    """The better encoder candidate: `head` (frozen encoder) or `full` (fine-tuned)."""

    name: str
    heads: list[HeadModel]
    tracker: EpochTracker
    valid_probabilities: dict[str, np.ndarray]
    fit_embeddings: np.ndarray  # the frozen encoder's, for the out-of-fold predictions of `head`


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
) -> _Tfidf:
    """TF-IDF + logistic regression per head, C chosen per head by cross-validation on the fit rows.

    Cross-validation rather than the validation rows: a small head's validation rows are too few to
    rank regularisation strengths, and picking on them overfits them.
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
            score, predicted = _cross_validate(
                spec,
                features=x_fit,
                labels=fit.heads[spec.name],
                folds=folds[spec.name],
                c=c,
                options=options,
                should_cancel=should_cancel,
            )
            scores[spec.name][c] = score
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
    return _Tfidf(
        features=features,
        heads=heads,
        valid_probabilities=valid_probabilities,
        out_of_fold={name: out_of_fold[name][c] for name, c in chosen.items()},
        detail={"c": chosen, "features": features.dim},
    )


def _cross_validate(
    spec: HeadSpec,
    *,
    features: sp.csr_matrix,
    labels: HeadLabels,
    folds: list[tuple[np.ndarray, np.ndarray]],
    c: float,
    options: TrainOptions,
    should_cancel: CancelCheck | None,
) -> tuple[float, np.ndarray]:
    """One head's mean score over the folds with regularisation `c`, and its out-of-fold probabilities."""
    fold_scores = []
    predicted = np.zeros((len(labels.mask), len(spec.labels)))
    for train, test in folds:
        cancel_check(should_cancel)
        weight, bias = logistic_fit(
            features=features[train],
            labels=labels.subset(train),
            c=c,
            class_weighting=options.class_weighting,
            seed=options.seed,
        )
        probabilities = _logistic_probabilities(features[test], LinearComponent("", weight, bias), spec)
        predicted[test] = probabilities
        score = head_score(
            probabilities=probabilities, labels=labels.subset(test), rule=options.selection_rule
        )
        fold_scores.append(-np.inf if score is None else score)
    return (float(np.mean(fold_scores)) if fold_scores else 0.0), predicted


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
    search = _Search(
        specs=specs,
        fit=fit,
        valid=valid,
        options=options,
        parents=parents,
        cache=cache,
        on_progress=on_progress,
        should_cancel=should_cancel,
        started=started,
        deadline=started + options.time_budget_s,
    )
    tfidf = _tfidf_run(search, features_name=features_name)
    phase = time.monotonic()  # the `head` candidate's time includes loading the encoder
    encoder = _encoder_load(search, encoder_load, now=phase)
    best = _head_run(search, encoder, started=phase) if encoder is not None else None
    if encoder is not None and best is not None:
        best = _full_run(search, encoder, head=best, allow_full=allow_full)
    if encoder is None or best is None:
        outcome = AutoOutcome(
            heads=tfidf.heads,
            tfidf=tfidf.features,
            selected="tfidf",
            candidates=search.candidates,
            history=search.history,
        )
        return outcome, None
    return _blend(search, tfidf=tfidf, encoder=encoder, best=best)


def _tfidf_run(search: _Search, *, features_name: str) -> _Tfidf:
    """The first candidate, which always runs: reported as one epoch."""
    tfidf = _tfidf_candidate(
        specs=search.specs,
        fit=search.fit,
        valid=search.valid,
        options=search.options,
        deadline=search.deadline,
        features_name=features_name,
        should_cancel=search.should_cancel,
    )
    score, per_head = search.score(tfidf.valid_probabilities)
    seconds = time.monotonic() - search.started
    losses = [
        loss
        for name, labels in search.valid.heads.items()
        if (loss := head_loss(tfidf.valid_probabilities[name], labels)) is not None
    ]
    sign = search.sign
    progress = EpochProgress(
        candidate="tfidf",
        epoch=1,
        max_epochs=1,
        train_loss=None,
        valid_loss=round(float(np.mean(losses)), 6) if losses else None,
        selection_metric=round(sign * score, 6),
        head_metrics={name: round(sign * value, 6) for name, value in per_head.items()},
        best=True,
        seconds=seconds,
    )
    if search.on_progress is not None:
        search.on_progress(progress)
    search.candidates.append(
        {
            "name": "tfidf",
            "selection_metric": round(sign * score, 6),
            "seconds": round(seconds, 2),
            **tfidf.detail,
        }
    )
    search.history.append(progress)
    return tfidf


def _encoder_load(search: _Search, encoder_load: Any, *, now: float) -> Encoder | None:
    """The encoder, when the budget left allows embedding every row; else the reason goes to the record."""
    if now >= search.deadline:
        search.candidates.append({"name": "head", "skipped": "the time budget was spent"})
        return None
    cancel_check(search.should_cancel)
    encoder: Encoder = encoder_load()
    texts = search.fit.texts + search.valid.texts
    if not _embeddings_fit(
        encoder=encoder, texts=texts, options=search.options, cache=search.cache, deadline=search.deadline
    ):
        search.candidates.append(
            {"name": "head", "skipped": "embedding the rows would overrun the time budget"}
        )
        return None
    return encoder


def _head_run(search: _Search, encoder: Encoder, *, started: float) -> _EncoderCandidate:
    """Linear heads on the frozen encoder's embeddings."""
    options = search.options
    fit_embeddings = encoder.embed(search.fit.texts, max_tokens=options.max_tokens, cache=search.cache)
    valid_embeddings = encoder.embed(search.valid.texts, max_tokens=options.max_tokens, cache=search.cache)
    heads, tracker = heads_train_frozen(
        specs=search.specs,
        fit=search.fit,
        fit_embeddings=fit_embeddings,
        valid=search.valid,
        valid_embeddings=valid_embeddings,
        options=options,
        parents=search.parents,
        on_progress=search.on_progress,
        should_cancel=search.should_cancel,
    )
    search.history.extend(tracker.history)
    search.candidates.append(
        {
            "name": "head",
            "selection_metric": round(search.sign * tracker.best_score, 6),
            "seconds": round(time.monotonic() - started, 2),
            "best_epoch": tracker.best_epoch,
        }
    )
    return _EncoderCandidate(
        name="head",
        heads=heads,
        tracker=tracker,
        valid_probabilities=_probabilities(heads, _encoder_logits(heads, valid_embeddings)),
        fit_embeddings=fit_embeddings,
    )


def _full_run(
    search: _Search, encoder: Encoder, *, head: _EncoderCandidate, allow_full: bool
) -> _EncoderCandidate:
    """Fine-tuning, when allowed and affordable; the better of it and `head` (the encoder's weights are
    put back when `head` stays the better one)."""
    remaining = search.deadline - time.monotonic()
    epochs = (
        _full_epochs_affordable(
            encoder=encoder, fit=search.fit, valid=search.valid, options=search.options, remaining=remaining
        )
        if allow_full and remaining > 0
        else 0
    )
    if epochs < 1:
        if allow_full:
            search.candidates.append(
                {"name": "full", "skipped": "the time budget does not allow one epoch on this CPU"}
            )
        return head
    phase = time.monotonic()
    frozen_state = copy.deepcopy(encoder.model.state_dict())
    heads, tracker = encoder_finetune(
        encoder=encoder,
        specs=search.specs,
        fit=search.fit,
        valid=search.valid,
        options=search.options,
        parents=search.parents,
        on_progress=search.on_progress,
        should_cancel=search.should_cancel,
        max_epochs=epochs,
        deadline=search.deadline,
    )
    search.history.extend(tracker.history)
    search.candidates.append(
        {
            "name": "full",
            "selection_metric": round(search.sign * tracker.best_score, 6),
            "seconds": round(time.monotonic() - phase, 2),
            "best_epoch": tracker.best_epoch,
            "epochs": len(tracker.history),
        }
    )
    if tracker.best_score > head.tracker.best_score:
        valid_embeddings = encoder.embed(search.valid.texts, max_tokens=search.options.max_tokens)
        return _EncoderCandidate(
            name="full",
            heads=heads,
            tracker=tracker,
            valid_probabilities=_probabilities(heads, _encoder_logits(heads, valid_embeddings)),
            fit_embeddings=head.fit_embeddings,
        )
    encoder.model.load_state_dict(frozen_state)
    encoder.weights_changed()
    return head


def _blend(
    search: _Search, *, tfidf: _Tfidf, encoder: Encoder, best: _EncoderCandidate
) -> tuple[AutoOutcome, Encoder | None]:
    """Per head, the encoder candidate and `tfidf` mixed with the share that scores best; the outcome names
    the simplest candidate the shares amount to."""
    shares = _shares_pick(search, tfidf=tfidf, best=best)
    heads = [
        _blended_head(spec, encoder_head=encoder_head, tfidf_head=tfidf_head, share=shares[spec.name])
        for spec, encoder_head, tfidf_head in zip(search.specs, best.heads, tfidf.heads, strict=True)
    ]
    blended = {
        name: shares[name] * best.valid_probabilities[name]
        + (1 - shares[name]) * tfidf.valid_probabilities[name]
        for name in shares
    }
    blend_score, _ = search.score(blended)
    search.candidates.append(
        {
            "name": "blend",
            "selection_metric": round(search.sign * blend_score, 6),
            "encoder": best.name,
            "encoder_share": shares,
        }
    )
    if all(share == 1.0 for share in shares.values()):
        selected = best.name
    elif all(share == 0.0 for share in shares.values()):
        selected = "tfidf"
    else:
        selected = "blend"
    uses_encoder = any(share > 0 for share in shares.values())
    outcome = AutoOutcome(
        heads=heads,
        tfidf=tfidf.features,
        selected=selected,
        candidates=search.candidates,
        history=search.history,
        best_epoch=best.tracker.best_epoch if uses_encoder else None,
        encoder_fine_tuned=best.name == "full" and uses_encoder,
    )
    return outcome, encoder if uses_encoder else None


def _shares_pick(search: _Search, *, tfidf: _Tfidf, best: _EncoderCandidate) -> dict[str, float]:
    """The encoder's share per head.

    Shares are picked on out-of-fold predictions for the fit rows plus the validation rows when the
    encoder candidate is `head` (cheap to cross-validate on cached embeddings); a fine-tuned encoder
    has seen the fit rows, so `full` is blended on the validation rows alone.
    """
    fit, valid = search.fit, search.valid
    share_rows, encoder_probabilities, tfidf_probabilities = (
        valid,
        best.valid_probabilities,
        tfidf.valid_probabilities,
    )
    enough_rows = len(fit) >= 2 * CV_FOLDS
    if best.name == "head" and enough_rows and time.monotonic() < search.deadline:
        encoder_oof = _encoder_out_of_fold(
            specs=search.specs,
            fit=fit,
            embeddings=best.fit_embeddings,
            options=search.options,
            parents=search.parents,
            epochs=best.tracker.best_epoch,
            should_cancel=search.should_cancel,
        )
        share_rows = fit.concat(valid)
        encoder_probabilities = {
            n: np.concatenate([encoder_oof[n], best.valid_probabilities[n]]) for n in best.valid_probabilities
        }
        tfidf_probabilities = {
            n: np.concatenate([tfidf.out_of_fold[n], tfidf.valid_probabilities[n]])
            for n in tfidf.valid_probabilities
        }
    return _shares_choose(
        specs=search.specs,
        encoder=encoder_probabilities,
        tfidf=tfidf_probabilities,
        rows=share_rows,
        rule=search.options.selection_rule,
    )


def _blended_head(
    spec: HeadSpec, *, encoder_head: HeadModel, tfidf_head: HeadModel, share: float
) -> HeadModel:
    """The head as weighted components: the encoder's with `share`, TF-IDF's with the rest (a component
    whose weight is zero is left out)."""
    components = []
    if share > 0:
        encoder_component = encoder_head.components[0]
        components.append(LinearComponent(ENCODER, encoder_component.weight, encoder_component.bias, share))
    if share < 1:
        tfidf_component = tfidf_head.components[0]
        components.append(
            LinearComponent(tfidf_component.features, tfidf_component.weight, tfidf_component.bias, 1 - share)
        )
    head = HeadModel(spec=spec, components=components)
    head.thresholds = head.default_thresholds()
    return head


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
