"""The `auto` strategy: plan the time budget, run the candidates that fit, keep the best on the validation rows.

The plan (every step is recorded in the candidates table, with its time, its validation score, or why it
was skipped):

1. `tfidf` always runs first: word (1-2) + character (2-5) n-gram TF-IDF with logistic regression per
   head, the regularisation C picked per head from a small grid by 3-fold cross-validation on the fit rows.
   The grid's first C always runs (its out-of-fold predictions feed the blend and the calibration); before
   each further C its cost is estimated from the rounds measured so far, and the grid stops, keeping the best
   C so far, when that round plus the final fit and the refit (step 6) would end after the deadline. The
   candidate records the C values tried and, when the grid was cut, what was left out and why.
2. The encoder is loaded and its speed measured on a sample: seconds per row to embed, and seconds per
   row of a fine-tuning step (a forward and backward pass, nothing applied). `max_tokens` is set from the
   data: the 95th percentile of the fit rows' token counts (never above the option).
3. From those speeds and the budget left (less a reserve for the final evaluation and export):
   - `head` (linear heads on frozen embeddings) runs when embedding every row fits, and does not cost
     fine-tuning its second epoch. The rows are embedded in chunks of a few seconds; before each, the rows
     left are costed at the pace so far, and when they would end after the deadline (less the reserve) the
     embedding stops and `head` is skipped with that reason. Its epochs stop at the deadline, the best
     epoch so far kept;
   - `full` (fine-tuning: class weights, warmup then linear decay, early stopping on the selection rule,
     the best epoch kept) runs when at least one epoch fits and no kept parent head needs the encoder
     unchanged, for as many epochs as fit (at most `max_epochs`); with a GPU, in bf16 with larger batches.
     An epoch that would end after the deadline does not start, and one running at the deadline ends there.
4. `blend`: per head, the encoder candidate (the better of `head` and `full`) and `tfidf` mixed by averaging
   probabilities, the encoder's share picked per head (on out-of-fold predictions of the fit rows plus the
   validation rows for `head`; on the validation rows for `full`, which has seen the fit rows). A head
   whose blend scores below either pure candidate on the validation rows keeps that candidate. A head keeps
   the encoder only when its blend beats TF-IDF alone by more than NOISE_STANDARD_ERRORS standard errors of
   the gain on the rows the share was picked on (`_noise_check`); else it is TF-IDF alone. So the result is
   never below TF-IDF there, and pays for the encoder only for a gain beyond the noise.
5. `calibrate`: per head, a logit offset per label (a class prior for multi-class heads, a threshold for
   multi-label ones) picked for the selection rule on out-of-fold predictions of the fit rows plus the
   validation rows, folded into the heads' biases, kept only when it raises the score and does not lower
   it on the validation rows.
6. `refit`: the kept TF-IDF components are trained again on the fit and validation rows together, with
   everything chosen above (C, shares, offsets) kept.

The result is always servable: every choice is a set of linear components (see `arbiter.ml.model`).
Every deadline is read on the search's clock (`time.monotonic` unless a caller simulates time), so a candidate
cut by the budget ends the run `succeeded` with what fit, and its row says what was cut.
`auto_plan` gives the same plan before a run, from a per-row cost model (the console's estimate).

An image base runs `image_automl_search` instead: steps 2 and 3 alone (no TF-IDF, so no blend, calibration or
refit), `full` being `arbiter.ml.image_finetune`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from arbiter.ml.data import HeadLabels, LabelledRows
from arbiter.ml.encoders import EmbeddingCache, Encoder
from arbiter.ml.finetune import encoder_finetune
from arbiter.ml.heads import (
    CancelCheck,
    Clock,
    EpochProgress,
    EpochTracker,
    HeadStack,
    HeadTargets,
    ProgressCallback,
    cancel_check,
    heads_train_frozen,
)
from arbiter.ml.image_encoders import ImageEncoder
from arbiter.ml.image_finetune import image_encoder_finetune, image_finetune_speed
from arbiter.ml.metrics import head_loss, head_score, selection_score
from arbiter.ml.model import ENCODER, HeadModel, LinearComponent, sigmoid, softmax
from arbiter.ml.plan import Plan, Speeds, duration_text, plan_make
from arbiter.ml.specs import HeadSpec, TrainOptions
from arbiter.ml.tfidf import TfidfFeatures, logistic_fit

C_GRID = (1.0, 0.5, 2.0, 4.0)
CV_FOLDS = 3
# Tried in this order; a later share replaces an earlier one only when strictly better, so ties keep
# the simpler model.
ENCODER_SHARES = (1.0, 0.0, 0.5, 0.75, 0.25)
# Fine-tuning batch on a GPU (bf16): larger batches keep it busy; on a CPU the option's batch size holds.
GPU_BATCH_SIZE = 128
# Rows timed to measure speeds, and fit rows whose token counts set max_tokens.
SPEED_SAMPLE = 64
LENGTH_SAMPLE = 2000
LENGTH_PERCENTILE = 95
# A head keeps the encoder in its blend only when the blend beats TF-IDF alone by more than this many standard
# errors of the gain (a paired bootstrap over the rows the share was picked on). TF-IDF is refit on every labelled
# row and serves without the encoder (many times faster): a gain within the noise of a few hundred rows does not
# pay for that, and on OLID's small subtask_c it did not carry over to the test rows.
NOISE_STANDARD_ERRORS = 1.0
BOOTSTRAP_RESAMPLES = 200
# Logit offsets tried per label by the calibration, and the least gain on the validation rows it must bring.
CALIBRATION_OFFSETS = tuple(np.round(np.linspace(-1.0, 1.0, 17), 3))
# Out-of-fold models are trained on two thirds of the rows and are less sure than the final one: small gains
# on their predictions do not carry over (measured on OLID samples), so only a clear one is taken.
CALIBRATION_MIN_GAIN = 0.01
CALIBRATION_MIN_ROWS = 150
# Rows are embedded for `head` in chunks of about this many seconds at the pace so far (within these bounds),
# the deadline checked before each.
EMBED_CHUNK_SECONDS = 5.0
EMBED_CHUNK_ROWS = (32, 4096)


@dataclass
class AutoOutcome:
    heads: list[HeadModel]
    tfidf: TfidfFeatures | None  # None for an image base (no TF-IDF candidate)
    selected: str
    candidates: list[dict[str, Any]]
    history: list[EpochProgress] = field(default_factory=list)
    best_epoch: int | None = None
    encoder_fine_tuned: bool = False
    max_tokens: int | None = None
    plan: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Search:
    """What every candidate works with (rows, options, budget, callbacks) and what the search has recorded."""

    specs: Sequence[HeadSpec]
    fit: LabelledRows
    valid: LabelledRows
    test_rows: int
    options: TrainOptions
    parents: dict[str, LinearComponent]
    cache: EmbeddingCache | None
    on_progress: ProgressCallback | None
    should_cancel: CancelCheck | None
    started: float
    deadline: float
    tune_max_tokens: bool = True
    reserve: float = 0.0  # seconds kept for the final evaluation (from the plan) and the TF-IDF refit
    candidates: list[dict[str, Any]] = field(default_factory=list)
    history: list[EpochProgress] = field(default_factory=list)
    clock: Clock = time.monotonic
    embed_speed: float = 0.0  # seconds per row, measured on a sample (text bases)

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

    def head_score(self, name: str, probabilities: np.ndarray) -> float:
        score = head_score(
            probabilities=probabilities, labels=self.valid.heads[name], rule=self.options.selection_rule
        )
        return -np.inf if score is None else score

    def skip(self, name: str, reason: str, *, seconds: float | None = None) -> None:
        self.candidates.append(
            {"name": name, "skipped": reason, **({} if seconds is None else {"seconds": round(seconds, 2)})}
        )


@dataclass
class _Tfidf:
    """The `tfidf` candidate: its featurizer and heads, their probabilities on the validation rows and out of
    fold on the fit rows, its validation logits, and the details reported (C per head, feature count)."""

    features: TfidfFeatures
    heads: list[HeadModel]
    valid_probabilities: dict[str, np.ndarray]
    out_of_fold: dict[str, np.ndarray]
    valid_features: sp.csr_matrix
    detail: dict[str, Any]
    refit_seconds: float = 0.0  # the refit's estimated cost, kept out of the encoder's plan


@dataclass
class _EncoderCandidate:
    """The better encoder candidate: `head` (frozen encoder) or `full` (fine-tuned)."""

    name: str
    heads: list[HeadModel]
    tracker: EpochTracker
    valid_probabilities: dict[str, np.ndarray]
    valid_embeddings: np.ndarray
    fit_embeddings: np.ndarray | None  # the frozen encoder's, for the out-of-fold predictions of `head`
    out_of_fold: dict[str, np.ndarray] | None = None  # `head`'s on the fit rows, once the blend made them


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
    clock: Clock = time.monotonic,
) -> _Tfidf:
    """TF-IDF + logistic regression per head, C chosen per head by cross-validation on the fit rows.

    Cross-validation rather than the validation rows: a small head's validation rows are too few to
    rank regularisation strengths, and picking on them overfits them. The first C of the grid always runs;
    each further one only when `_tfidf_costs` says its round, the final fit and the refit end before the
    deadline (the detail's `c_tried`, and `stopped` when the grid was cut).
    """
    started = clock()
    features = TfidfFeatures.fit(fit.texts)
    x_fit, x_valid = features.transform(fit.texts), features.transform(valid.texts)
    costs = _TfidfCosts(features=clock() - started, fit_rows=len(fit), valid_rows=len(valid))
    folds = {spec.name: _folds(fit.heads[spec.name], seed=options.seed) for spec in specs}
    scores: dict[str, dict[float, float]] = {spec.name: {} for spec in specs}
    out_of_fold: dict[str, dict[float, np.ndarray]] = {spec.name: {} for spec in specs}
    stopped = None
    for c in C_GRID:
        if costs.rounds:
            left = deadline - clock()
            need = costs.round(c) + costs.after()
            if need > left:
                untried = [value for value in C_GRID if value not in costs.rounds]
                stopped = (
                    f"C {', '.join(f'{value:g}' for value in untried)} not tried: a cross-validation round at "
                    f"C={c:g} (about {duration_text(costs.round(c))}) and the final fit and refit after it "
                    f"(about {duration_text(costs.after())}) would end after the time budget "
                    f"({duration_text(max(left, 0.0))} left); the best C of those tried is kept"
                )
                break
        round_started = clock()
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
        costs.rounds[c] = clock() - round_started
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
    detail: dict[str, Any] = {"c": chosen, "c_tried": list(costs.rounds), "features": features.dim}
    if stopped is not None:
        detail["stopped"] = stopped
    return _Tfidf(
        features=features,
        heads=heads,
        valid_probabilities=valid_probabilities,
        out_of_fold={name: out_of_fold[name][c] for name, c in chosen.items()},
        valid_features=x_valid,
        detail=detail,
        refit_seconds=costs.refit(),
    )


@dataclass
class _TfidfCosts:
    """The TF-IDF candidate's cost model, from what it measured on these rows: the features (fit and
    transform) and each cross-validation round (C -> seconds).

    A round fits every head on 3 folds of two thirds of the rows, about two fits on all of them. Logistic
    regression needs more iterations as C grows (weaker regularisation): a round at a larger C than one
    measured is costed at the measured time times the square root of the ratio, which errs on the safe
    side (on OLID's three heads, a fit at C=4 took 0.8 to 1.2 times one at C=1, and C=0.5 about half). The
    refit fits the features and each head again on the fit and validation rows together.
    """

    features: float
    fit_rows: int
    valid_rows: int
    rounds: dict[float, float] = field(default_factory=dict)

    def round(self, c: float) -> float:
        return max(seconds * max(1.0, math.sqrt(c / measured)) for measured, seconds in self.rounds.items())

    def fit(self) -> float:
        """One fit per head on the fit rows (at the costliest C measured)."""
        return max(self.rounds.values(), default=0.0) / 2

    def refit(self) -> float:
        scale = (self.fit_rows + self.valid_rows) / max(self.fit_rows, 1)
        return (self.features + self.fit()) * scale

    def after(self) -> float:
        """What still follows the grid: the final fit and the refit."""
        return self.fit() + self.refit()


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


def _max_tokens_from_data(encoder: Encoder, texts: Sequence[str], *, limit: int) -> tuple[int, int]:
    """(max_tokens to train with, the fit rows' 95th-percentile token count): the percentile rounded up to
    a multiple of 8, at least 16 and never above the option. Most short posts need far fewer than 128
    tokens, and a step's cost grows with them."""
    sample = list(texts[:LENGTH_SAMPLE])
    if not sample:
        return limit, 0
    lengths = [len(ids) for ids in encoder.tokenize(sample, max_tokens=limit)]
    percentile = int(math.ceil(float(np.percentile(lengths, LENGTH_PERCENTILE))))
    return min(limit, max(16, 8 * math.ceil(percentile / 8))), percentile


def _embed_speed(
    encoder: Encoder,
    texts: Sequence[str],
    *,
    max_tokens: int,
    cache: EmbeddingCache | None,
    clock: Clock = time.monotonic,
) -> float:
    """Seconds per row to embed, timed on a sample of rows not in the cache (whose embeddings go to the
    cache, so the timing costs nothing when `head` runs); on uncached copies when every row is cached."""
    missing = encoder.missing(texts, max_tokens=max_tokens, cache=cache)
    sample = missing[:SPEED_SAMPLE] if missing else list(dict.fromkeys(texts))[:SPEED_SAMPLE]
    if not sample:
        return 0.0
    started = clock()
    encoder.embed(sample, max_tokens=max_tokens, cache=cache if missing else None)
    return (clock() - started) / len(sample)


def _finetune_speed(encoder: Encoder, search: _Search, *, max_tokens: int, batch_size: int) -> float:
    """Seconds per row of one fine-tuning step, timed on a sample: forward and backward through the
    encoder and a throwaway head, as `encoder_finetune` trains (the word embeddings frozen). No step is
    applied, so the encoder is unchanged; the optimizer's update adds about a tenth on a CPU."""
    count = min(len(search.fit), max(SPEED_SAMPLE // 2, min(batch_size, SPEED_SAMPLE)))
    if count == 0:
        return 0.0
    rows = search.fit.subset(np.arange(count))
    device = encoder.device
    stack = HeadStack(search.specs, encoder.dim).to(device)
    targets = HeadTargets.from_rows(rows, class_weighting=search.options.class_weighting, device=device)
    ids = encoder.tokenize(rows.texts, max_tokens=max_tokens)
    word_embeddings = encoder.model.get_input_embeddings().weight
    frozen = word_embeddings.requires_grad
    word_embeddings.requires_grad_(False)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    encoder.model.train()
    timings = []
    try:
        for _ in range(2):  # the first pass warms up kernels and allocations; the second is timed
            started = search.clock()
            input_ids, attention_mask = encoder.pad(ids)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = stack(encoder.forward(input_ids, attention_mask))
            loss = targets.loss(logits, torch.arange(count, device=device))
            if loss.requires_grad:
                loss.backward()
            timings.append(search.clock() - started)
    finally:
        encoder.model.zero_grad(set_to_none=True)
        word_embeddings.requires_grad_(frozen)
        encoder.model.eval()
    return 1.1 * timings[-1] / count


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
    deadline: float | None = None,
    test_rows: int = 0,
    tune_max_tokens: bool = True,
    clock: Clock = time.monotonic,
) -> tuple[AutoOutcome, Encoder | None]:
    """Run the plan; returns the outcome and the encoder (fine-tuned if `full` won) when used.

    `deadline` (a `clock()` value) defaults to the options' budget from now; `test_rows` sizes the
    reserve for the final evaluation; `tune_max_tokens` lets the data set `max_tokens` (not when kept
    heads of a parent depend on the encoder as it is). `clock` is what the budget is measured on (every
    step's seconds too): `time.monotonic` unless a caller simulates time.
    """
    started = clock()
    search = _Search(
        specs=specs,
        fit=fit,
        valid=valid,
        test_rows=test_rows,
        options=options,
        parents=parents,
        # `head` embeds in chunks through a cache, so that rows embedded before the deadline stay known.
        cache=cache if cache is not None else EmbeddingCache(),
        on_progress=on_progress,
        should_cancel=should_cancel,
        started=started,
        deadline=deadline if deadline is not None else started + options.time_budget_s,
        tune_max_tokens=tune_max_tokens,
        clock=clock,
    )
    tfidf = _tfidf_run(search, features_name=features_name)
    phase = clock()  # the encoder's candidates' times include loading it and measuring its speed
    encoder, plan = _encoder_plan(search, encoder_load, allow_full=allow_full, tfidf=tfidf)
    best = None
    if encoder is not None and plan is not None:
        head = _head_run(search, encoder, started=phase) if plan.head else None
        if plan.head:
            phase = clock()
        best = _full_run(search, encoder, head=head, epochs=plan.full_epochs, started=phase)
    plan_record = {"budget_s": round(search.deadline - started, 1), **(plan.to_dict() if plan else {})}
    if tfidf.refit_seconds:
        plan_record["tfidf_refit_s"] = round(tfidf.refit_seconds, 1)
    if encoder is not None:
        plan_record["max_tokens"] = search.options.max_tokens
    if encoder is None or best is None:
        heads = _calibrate(search, heads=tfidf.heads, tfidf=tfidf, encoder=None)
        features, heads = _tfidf_refit(search, tfidf=tfidf, heads=heads)
        outcome = AutoOutcome(
            heads=heads,
            tfidf=features,
            selected="tfidf",
            candidates=search.candidates,
            history=search.history,
            max_tokens=search.options.max_tokens,
            plan=plan_record,
        )
        return outcome, None
    outcome, used = _blend(search, tfidf=tfidf, encoder=encoder, best=best)
    outcome.tfidf, outcome.heads = _tfidf_refit(search, tfidf=tfidf, heads=outcome.heads)
    outcome.plan = plan_record
    return outcome, used


def image_automl_search(
    *,
    specs: Sequence[HeadSpec],
    fit: LabelledRows,
    valid: LabelledRows,
    options: TrainOptions,
    encoder_load: Any,
    parents: dict[str, LinearComponent],
    allow_full: bool,
    cache: EmbeddingCache | None,
    on_progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
    deadline: float | None = None,
    test_rows: int = 0,
) -> AutoOutcome:
    """`auto` for an image base: `head` and, when the budget allows, `full`; the better on the validation
    rows is kept (the backbone's weights are put back when `head` stays the better one).

    TF-IDF, and with it the blend, the calibration and the refit, mean nothing for images. The backbone is
    loaded and its speeds measured on a sample (embedding; a fine-tuning step with decoding and
    augmentation), and the plan is text's (`plan_make`): `full` runs for as many epochs as fit in the budget
    left, less the final evaluation's reserve, unless a kept parent head reads the backbone; `head` runs
    when embedding every row fits and does not cost fine-tuning its second epoch. When neither fits, `head`
    runs all the same (an image model has no cheaper candidate) and the plan says so (`over_budget`). The
    candidates record each step's time and validation score, or why it was skipped.
    """
    started = time.monotonic()
    search = _Search(
        specs=specs,
        fit=fit,
        valid=valid,
        test_rows=test_rows,
        options=options,
        parents=parents,
        cache=cache,
        on_progress=on_progress,
        should_cancel=should_cancel,
        started=started,
        deadline=deadline if deadline is not None else started + options.time_budget_s,
        tune_max_tokens=False,
    )
    cancel_check(should_cancel)
    encoder: ImageEncoder = encoder_load()
    if encoder.device.type == "cuda":
        search.options = dataclasses.replace(options, batch_size=max(options.batch_size, GPU_BATCH_SIZE))
    texts = fit.texts + valid.texts
    embed = _embed_speed(encoder, texts, max_tokens=options.max_tokens, cache=cache)  # type: ignore[arg-type]
    # Measuring a fine-tuning step takes a few seconds on a CPU: not when the budget is already spent.
    spent = time.monotonic() >= search.deadline
    finetune = (
        image_finetune_speed(encoder, specs=specs, fit=fit, options=search.options)
        if allow_full and not spent
        else 0.0
    )
    plan = plan_make(
        speeds=Speeds(tfidf=0.0, embed=embed, finetune=finetune),
        fit_rows=len(fit),
        valid_rows=len(valid),
        test_rows=test_rows,
        embed_rows=len(encoder.missing(texts, max_tokens=options.max_tokens, cache=cache)),
        remaining=search.deadline - time.monotonic(),
        max_epochs=options.max_epochs,
        allow_full=allow_full and not spent,
    )
    if allow_full and spent:
        plan.skipped["full"] = "the time budget was spent loading the backbone and measuring its speed"
    search.reserve = plan.estimates["reserve"]
    plan_record: dict[str, Any] = {"budget_s": round(search.deadline - started, 1), **plan.to_dict()}
    over_budget = not plan.head and plan.full_epochs < 1
    if over_budget:
        plan_record["head"] = True
        plan_record["over_budget"] = (
            f"head runs although {plan.skipped['head']}: an image model has no cheaper candidate"
        )
    for name, reason in plan.skipped.items():
        if not (over_budget and name == "head"):
            search.skip(name, reason)
    head = None
    phase = started  # the first candidate's time includes loading the backbone and measuring its speed
    if plan.head or over_budget:
        # Over budget, `head` is all an image model has: its epochs are not cut (they cost little beside the
        # embedding).
        head = _head_run(search, encoder, started=phase, deadline=not over_budget)
        phase = time.monotonic()
    best = _full_run(search, encoder, head=head, epochs=plan.full_epochs, started=phase)
    assert best is not None
    return AutoOutcome(
        heads=best.heads,
        tfidf=None,
        selected=best.name,
        candidates=search.candidates,
        history=search.history,
        best_epoch=best.tracker.best_epoch,
        encoder_fine_tuned=best.name == "full",
        plan=plan_record,
    )


def _tfidf_refit(
    search: _Search, *, tfidf: _Tfidf, heads: list[HeadModel]
) -> tuple[TfidfFeatures, list[HeadModel]]:
    """The kept heads' TF-IDF components trained again on the fit and validation rows, with the C, share
    and calibration offsets chosen on them: the validation rows have done their job of choosing, and a
    tenth more rows is worth a few points on small sets. It runs even when the budget is spent (one fit per
    head, a twelfth of the cross-validation's cost; the operator's grace covers it), not when there are no
    separate validation rows; recorded as the `refit` step."""
    uses_tfidf = any(component.features != ENCODER for head in heads for component in head.components)
    if not uses_tfidf or search.valid is search.fit:
        return tfidf.features, heads
    started = search.clock()
    rows = search.fit.concat(search.valid)
    features = TfidfFeatures.fit(rows.texts)
    x_rows = features.transform(rows.texts)
    refitted = []
    for head, original in zip(heads, tfidf.heads, strict=True):
        components = []
        for component in head.components:
            if component.features == ENCODER:
                components.append(component)
                continue
            weight, bias = logistic_fit(
                features=x_rows,
                labels=rows.heads[head.spec.name],
                c=tfidf.detail["c"][head.spec.name],
                class_weighting=search.options.class_weighting,
                seed=search.options.seed,
            )
            offset = component.bias - original.components[0].bias  # the calibration's, if any
            components.append(
                LinearComponent(
                    component.features, weight, (bias + offset).astype(bias.dtype), component.share
                )
            )
        refitted.append(HeadModel(spec=head.spec, components=components, thresholds=dict(head.thresholds)))
    search.candidates.append(
        {
            "name": "refit",
            "seconds": round(search.clock() - started, 2),
            "rows": len(rows),
            "features": features.dim,
        }
    )
    return features, refitted


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
        clock=search.clock,
    )
    score, per_head = search.score(tfidf.valid_probabilities)
    seconds = search.clock() - search.started
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
            "head_metrics": {name: round(sign * value, 6) for name, value in per_head.items()},
            "seconds": round(seconds, 2),
            **tfidf.detail,
        }
    )
    search.history.append(progress)
    return tfidf


def _encoder_plan(
    search: _Search, encoder_load: Any, *, allow_full: bool, tfidf: _Tfidf
) -> tuple[Encoder | None, Plan | None]:
    """Load the encoder, set `max_tokens` from the data, measure speeds and plan the budget left less the
    TF-IDF refit's estimate; the skipped candidates go to the record with their reasons."""
    if search.clock() >= search.deadline - tfidf.refit_seconds:
        search.skip("head", "the time budget was spent")
        if allow_full:
            search.skip("full", "the time budget was spent")
        return None, None
    cancel_check(search.should_cancel)
    encoder: Encoder = encoder_load()
    options = search.options
    if search.tune_max_tokens:
        max_tokens, _ = _max_tokens_from_data(encoder, search.fit.texts, limit=options.max_tokens)
        options = dataclasses.replace(options, max_tokens=max_tokens)
    if encoder.device.type == "cuda":
        options = dataclasses.replace(options, batch_size=max(options.batch_size, GPU_BATCH_SIZE))
    search.options = options
    texts = search.fit.texts + search.valid.texts
    embed = _embed_speed(
        encoder, texts, max_tokens=options.max_tokens, cache=search.cache, clock=search.clock
    )
    search.embed_speed = embed
    finetune = (
        _finetune_speed(encoder, search, max_tokens=options.max_tokens, batch_size=options.batch_size)
        if allow_full
        else 0.0
    )
    plan = plan_make(
        speeds=Speeds(tfidf=0.0, embed=embed, finetune=finetune),
        fit_rows=len(search.fit),
        valid_rows=len(search.valid),
        test_rows=search.test_rows,
        embed_rows=len(encoder.missing(texts, max_tokens=options.max_tokens, cache=search.cache)),
        remaining=search.deadline - tfidf.refit_seconds - search.clock(),
        max_epochs=options.max_epochs,
        allow_full=allow_full,
    )
    search.reserve = plan.estimates["reserve"] + tfidf.refit_seconds
    for name, reason in plan.skipped.items():
        search.skip(name, reason)
    if not plan.head and plan.full_epochs < 1:
        return None, plan
    return encoder, plan


def _head_run(
    search: _Search, encoder: Encoder | ImageEncoder, *, started: float, deadline: bool = True
) -> _EncoderCandidate | None:
    """Linear heads on the frozen encoder's embeddings, within the deadline less the reserve (`deadline`
    False: not cut). A text encoder embeds the rows with `_embed_within`; when they cannot all be embedded
    in time, `head` is skipped with the reason (and None returned). The epochs stop at the deadline, the
    best so far kept."""
    options = search.options
    until = search.deadline - search.reserve if deadline else None
    if until is not None and not isinstance(encoder, ImageEncoder):
        unfinished = _embed_within(search, encoder, search.fit.texts + search.valid.texts, deadline=until)
        if unfinished is not None:
            search.skip("head", unfinished, seconds=search.clock() - started)
            return None
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
        deadline=until,
        clock=search.clock,
    )
    search.history.extend(tracker.history)
    candidate = _EncoderCandidate(
        name="head",
        heads=heads,
        tracker=tracker,
        valid_probabilities=_probabilities(heads, _encoder_logits(heads, valid_embeddings)),
        valid_embeddings=valid_embeddings,
        fit_embeddings=fit_embeddings,
    )
    search.candidates.append(
        {
            "name": "head",
            "selection_metric": round(search.sign * tracker.best_score, 6),
            "head_metrics": _head_metrics(search, candidate.valid_probabilities),
            "seconds": round(search.clock() - started, 2),
            "best_epoch": tracker.best_epoch,
            "epochs": len(tracker.history),
            **({"stopped": tracker.stopped} if tracker.stopped else {}),
        }
    )
    return candidate


def _embed_within(search: _Search, encoder: Encoder, texts: Sequence[str], *, deadline: float) -> str | None:
    """Embed the texts the cache lacks, into the cache, in chunks of about EMBED_CHUNK_SECONDS (shortest
    texts first, so batches pad little). Before each chunk the rows left are costed at the pace so far (the
    sample's speed until a chunk is timed); when they would end after `deadline`, it stops there and says
    why (None once every row is embedded). What was embedded stays in the cache."""
    max_tokens = search.options.max_tokens
    missing = sorted(encoder.missing(texts, max_tokens=max_tokens, cache=search.cache), key=len)
    total, done, spent = len(missing), 0, 0.0
    pace = search.embed_speed
    while done < total:
        cancel_check(search.should_cancel)
        left = deadline - search.clock()
        need = (total - done) * pace
        if need > left:
            so_far = f"{done} of {total} rows embedded in {duration_text(spent)}; " if done else ""
            return (
                f"embedding the rows would overrun the time budget: {so_far}the {total - done} rows left "
                f"would take about {duration_text(need)} at {pace * 1000:.0f} ms a row, with "
                f"{duration_text(max(left, 0.0))} left"
            )
        low, high = EMBED_CHUNK_ROWS
        size = int(min(high, max(low, EMBED_CHUNK_SECONDS / max(pace, 1e-9))))
        chunk = missing[done : done + size]
        chunk_started = search.clock()
        encoder.embed(chunk, max_tokens=max_tokens, cache=search.cache)
        spent += search.clock() - chunk_started
        done += len(chunk)
        pace = spent / done
    return None


def _head_metrics(search: _Search, probabilities: dict[str, np.ndarray]) -> dict[str, float]:
    _, per_head = search.score(probabilities)
    return {name: round(search.sign * value, 6) for name, value in per_head.items()}


def _full_run(
    search: _Search,
    encoder: Encoder | ImageEncoder,
    *,
    head: _EncoderCandidate | None,
    epochs: int,
    started: float,
) -> _EncoderCandidate | None:
    """Fine-tuning for the planned epochs; the better of it and `head` (the encoder's weights are put back
    when `head` stays the better one)."""
    if epochs < 1:
        return head
    frozen_state = copy.deepcopy(encoder.model.state_dict()) if head is not None else None
    was_fine_tuned = getattr(encoder, "fine_tuned", False)
    image = isinstance(encoder, ImageEncoder)
    finetune: Any = image_encoder_finetune if image else encoder_finetune
    heads, tracker = finetune(
        encoder=encoder,
        specs=search.specs,
        fit=search.fit,
        valid=search.valid,
        options=search.options,
        parents=search.parents,
        on_progress=search.on_progress,
        should_cancel=search.should_cancel,
        max_epochs=epochs,
        deadline=search.deadline - search.reserve,
        # An image search is timed on time.monotonic, which image_encoder_finetune reads.
        **({} if image else {"clock": search.clock}),
    )
    search.history.extend(tracker.history)
    valid_embeddings = encoder.embed(search.valid.texts, max_tokens=search.options.max_tokens)
    candidate = _EncoderCandidate(
        name="full",
        heads=heads,
        tracker=tracker,
        valid_probabilities=_probabilities(heads, _encoder_logits(heads, valid_embeddings)),
        valid_embeddings=valid_embeddings,
        fit_embeddings=None,
    )
    search.candidates.append(
        {
            "name": "full",
            "selection_metric": round(search.sign * tracker.best_score, 6),
            "head_metrics": _head_metrics(search, candidate.valid_probabilities),
            "seconds": round(search.clock() - started, 2),
            "best_epoch": tracker.best_epoch,
            "epochs": len(tracker.history),
            "planned_epochs": epochs,
            **({"stopped": tracker.stopped} if tracker.stopped else {}),
            **({} if isinstance(encoder, ImageEncoder) else {"max_tokens": search.options.max_tokens}),
            "batch_size": search.options.batch_size,
        }
    )
    if head is None or tracker.best_score > head.tracker.best_score:
        return candidate
    assert frozen_state is not None
    encoder.model.load_state_dict(frozen_state)
    encoder.weights_changed()
    if isinstance(encoder, ImageEncoder):
        encoder.fine_tuned = was_fine_tuned
    return head


def _blend(
    search: _Search, *, tfidf: _Tfidf, encoder: Encoder, best: _EncoderCandidate
) -> tuple[AutoOutcome, Encoder | None]:
    """Per head, the encoder candidate and `tfidf` mixed with the share that scores best, never below either
    alone on the validation rows; then calibrated. The outcome names the simplest candidate the shares
    amount to."""
    started = search.clock()
    picked = _shares_pick(search, tfidf=tfidf, best=best)
    shares = picked.shares
    for name, share in list(shares.items()):
        # The share was picked on more rows than the validation ones; on those, a pure candidate that
        # scores higher wins (ties keep the pick).
        mixed = search.head_score(
            name, share * best.valid_probabilities[name] + (1 - share) * tfidf.valid_probabilities[name]
        )
        pure = {1.0: search.head_score(name, best.valid_probabilities[name])}
        pure[0.0] = search.head_score(name, tfidf.valid_probabilities[name])
        top = max(pure, key=pure.__getitem__)
        if pure[top] > mixed:
            shares[name] = top
    noise = _noise_check(search, picked)
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
            "head_metrics": _head_metrics(search, blended),
            "seconds": round(search.clock() - started, 2),
            "encoder": best.name,
            "encoder_share": shares,
            **({"noise": noise} if noise else {}),
        }
    )
    heads = _calibrate(search, heads=heads, tfidf=tfidf, encoder=best)
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
        max_tokens=search.options.max_tokens,
    )
    return outcome, encoder if uses_encoder else None


@dataclass
class _Shares:
    """The encoder's share per head, and the rows and each candidate's probabilities it was picked on."""

    shares: dict[str, float]
    rows: LabelledRows
    encoder: dict[str, np.ndarray]
    tfidf: dict[str, np.ndarray]


def _shares_pick(search: _Search, *, tfidf: _Tfidf, best: _EncoderCandidate) -> _Shares:
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
    if best.fit_embeddings is not None and enough_rows and search.clock() < search.deadline:
        encoder_oof = _encoder_out_of_fold(
            specs=search.specs,
            fit=fit,
            embeddings=best.fit_embeddings,
            options=search.options,
            parents=search.parents,
            epochs=best.tracker.best_epoch,
            should_cancel=search.should_cancel,
        )
        best.out_of_fold = encoder_oof
        share_rows = fit.concat(valid)
        encoder_probabilities = {
            n: np.concatenate([encoder_oof[n], best.valid_probabilities[n]]) for n in best.valid_probabilities
        }
        tfidf_probabilities = {
            n: np.concatenate([tfidf.out_of_fold[n], tfidf.valid_probabilities[n]])
            for n in tfidf.valid_probabilities
        }
    shares = _shares_choose(
        specs=search.specs,
        encoder=encoder_probabilities,
        tfidf=tfidf_probabilities,
        rows=share_rows,
        rule=search.options.selection_rule,
    )
    return _Shares(shares=shares, rows=share_rows, encoder=encoder_probabilities, tfidf=tfidf_probabilities)


def _noise_check(search: _Search, picked: _Shares) -> dict[str, dict[str, Any]]:
    """Give TF-IDF alone every head whose blend beats it by no more than NOISE_STANDARD_ERRORS standard errors
    of the gain on the rows the share was picked on (changing `picked.shares`); return, per head that had the
    encoder, the gain, its standard error and what was kept."""
    rule = search.options.selection_rule
    found: dict[str, dict[str, Any]] = {}
    for name, share in picked.shares.items():
        if share == 0.0:
            continue
        labels = picked.rows.heads[name]
        mixed = share * picked.encoder[name] + (1 - share) * picked.tfidf[name]
        gain, error = gain_and_error(
            mixed, picked.tfidf[name], labels=labels, rule=rule, seed=search.options.seed
        )
        kept = "encoder" if gain > NOISE_STANDARD_ERRORS * error else "tfidf"
        if kept == "tfidf":
            picked.shares[name] = 0.0
        found[name] = {"gain": round(gain, 6), "standard_error": round(error, 6), "kept": kept}
    return found


def gain_and_error(
    mixed: np.ndarray, tfidf: np.ndarray, *, labels: HeadLabels, rule: str, seed: int
) -> tuple[float, float]:
    """How much `mixed` scores above `tfidf` on `labels`' rows, and the standard error of that gain by a paired
    bootstrap (the same resampled rows scored for both)."""
    gain = (head_score(probabilities=mixed, labels=labels, rule=rule) or 0.0) - (
        head_score(probabilities=tfidf, labels=labels, rule=rule) or 0.0
    )
    rows = np.flatnonzero(labels.mask)
    if len(rows) < 2:
        return gain, 0.0
    generator = np.random.default_rng(seed)
    gains = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        sample = rows[generator.integers(0, len(rows), len(rows))]
        resampled = labels.subset(sample)
        ours = head_score(probabilities=mixed[sample], labels=resampled, rule=rule)
        theirs = head_score(probabilities=tfidf[sample], labels=resampled, rule=rule)
        if ours is not None and theirs is not None:
            gains.append(ours - theirs)
    return gain, float(np.std(gains, ddof=1)) if len(gains) > 1 else 0.0


def _shifted(probabilities: np.ndarray, shift: np.ndarray, *, multi_label: bool) -> np.ndarray:
    """Probabilities with `shift` added to the logits they came from."""
    if multi_label:
        clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
        return sigmoid(np.log(clipped / (1 - clipped)) + shift)
    weighted = probabilities * np.exp(shift)
    return weighted / np.maximum(weighted.sum(axis=1, keepdims=True), 1e-12)


def _calibration_rows(
    search: _Search, *, head: HeadModel, tfidf: _Tfidf, encoder: _EncoderCandidate | None
) -> tuple[HeadLabels, dict[str, np.ndarray]]:
    """The labels and each component's probabilities to calibrate a head on: out-of-fold predictions on the
    fit rows plus the validation rows when every component has them (a few dozen validation rows alone
    would be chased, not calibrated on), else the validation rows."""
    name = head.spec.name
    valid = {tfidf.heads[0].components[0].features: tfidf.valid_probabilities[name]}
    fit = {tfidf.heads[0].components[0].features: tfidf.out_of_fold[name]}
    if encoder is not None:
        valid[ENCODER] = encoder.valid_probabilities[name]
        fit[ENCODER] = encoder.out_of_fold[name] if encoder.out_of_fold is not None else None  # type: ignore[assignment]
    used = [component.features for component in head.components]
    labels = search.fit.heads[name]
    # A head too small for folds has no out-of-fold predictions (its rows stay zero).
    complete = all(
        fit.get(features) is not None and np.allclose(fit[features][labels.mask].sum(axis=1), 1.0)
        if not head.spec.multi_label
        else fit.get(features) is not None and bool(np.any(fit[features][labels.mask]))
        for features in used
    )
    if not complete or not labels.mask.any():
        return search.valid.heads[name], {features: valid[features] for features in used}
    both = search.fit.concat(search.valid).heads[name]
    return both, {features: np.concatenate([fit[features], valid[features]]) for features in used}


def _calibrate(
    search: _Search, *, heads: list[HeadModel], tfidf: _Tfidf, encoder: _EncoderCandidate | None
) -> list[HeadModel]:
    """Per head, logit offsets per label picked by coordinate ascent for the selection rule, folded into
    every component's bias; a head keeps them only when its score rises by CALIBRATION_MIN_GAIN and they do
    not lower its score on the validation rows.

    For a multi-class head an offset is a class prior (argmax decides); for a multi-label head it moves the
    label's 0.5 threshold. Offsets are picked on out-of-fold predictions for the fit rows plus the
    validation rows (see `_calibration_rows`), and only for heads with CALIBRATION_MIN_ROWS such rows. The
    loss rule is left alone: offsets that help decisions cost likelihood. It runs even when the budget is
    spent: a few hundred scorings take well under a second.
    """
    if search.options.selection_rule == "loss":
        return heads
    started = search.clock()
    rule = search.options.selection_rule
    offsets: dict[str, dict[str, float]] = {}
    shifts: dict[str, np.ndarray] = {}
    calibrated = []
    for head in heads:
        labels, components = _calibration_rows(search, head=head, tfidf=tfidf, encoder=encoder)
        if int(labels.mask.sum()) < CALIBRATION_MIN_ROWS:
            calibrated.append(head)
            continue

        def score(
            shift: np.ndarray,
            head: HeadModel = head,
            labels: HeadLabels = labels,
            components: Any = components,
        ) -> float:
            value = head_score(probabilities=_mixed(head, components, shift), labels=labels, rule=rule)
            return -np.inf if value is None else value

        shift = np.zeros(len(head.spec.labels))
        before = best = score(shift)
        for _ in range(2):
            for i in range(len(shift)):
                for value in CALIBRATION_OFFSETS:
                    trial = shift.copy()
                    trial[i] = value
                    trial_score = score(trial)
                    if trial_score > best + 1e-12:
                        best, shift = trial_score, trial
        name = head.spec.name
        valid_components = _valid_components(head, tfidf=tfidf, encoder=encoder)
        valid_before = search.head_score(name, _mixed(head, valid_components, np.zeros_like(shift)))
        valid_after = search.head_score(name, _mixed(head, valid_components, shift))
        if best < before + CALIBRATION_MIN_GAIN or not np.any(shift) or valid_after < valid_before:
            calibrated.append(head)
            continue
        offsets[name] = {label: float(value) for label, value in zip(head.spec.labels, shift, strict=True)}
        shifts[name] = shift
        components_shifted = [
            LinearComponent(c.features, c.weight, (c.bias + shift).astype(c.bias.dtype), c.share)
            for c in head.components
        ]
        calibrated.append(
            HeadModel(spec=head.spec, components=components_shifted, thresholds=dict(head.thresholds))
        )
    if offsets:
        final = {}
        for head in calibrated:
            name = head.spec.name
            valid_components = _valid_components(head, tfidf=tfidf, encoder=encoder)
            final[name] = _mixed(head, valid_components, shifts.get(name, np.zeros(len(head.spec.labels))))
        total_score, _ = search.score(final)
        search.candidates.append(
            {
                "name": "calibrate",
                "selection_metric": round(search.sign * total_score, 6),
                "head_metrics": _head_metrics(search, final),
                "seconds": round(search.clock() - started, 2),
                "offsets": offsets,
            }
        )
    return calibrated


def _valid_components(
    head: HeadModel, *, tfidf: _Tfidf, encoder: _EncoderCandidate | None
) -> dict[str, np.ndarray]:
    """Each component's probabilities of the head on the validation rows."""
    found = {}
    for component in head.components:
        source = tfidf if component.features != ENCODER else encoder
        assert source is not None
        found[component.features] = source.valid_probabilities[head.spec.name]
    return found


def _mixed(head: HeadModel, components: dict[str, np.ndarray], shift: np.ndarray) -> np.ndarray:
    """A head's probabilities from its components' (before any shift), with `shift` added to the logits."""
    total = sum(component.share for component in head.components)
    return sum(  # type: ignore[return-value]
        (c.share / total) * _shifted(components[c.features], shift, multi_label=head.spec.multi_label)
        for c in head.components
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
