"""`train_from_snapshot`: from snapshot rows to an evaluated, servable artifact directory."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arbiter.ml.artifacts import (
    ENCODER_FOLDER,
    METRICS_FILE,
    Artifact,
    artifact_load,
    artifact_write_model,
)
from arbiter.ml.automl import automl_search, image_automl_search
from arbiter.ml.data import LabelledRows, rows_check_trainable, rows_parse, rows_split
from arbiter.ml.encoders import DEFAULT_BASE_MODEL, EmbeddingCache, Encoder
from arbiter.ml.errors import ArtifactError, BaseModelError, MLError
from arbiter.ml.finetune import encoder_finetune
from arbiter.ml.heads import (
    CancelCheck,
    Clock,
    EpochProgress,
    ProgressCallback,
    cancel_check,
    heads_train_frozen,
)
from arbiter.ml.image_encoders import ImageEncoder, builtin_heads, image_encoder_add_onnx, is_image_base
from arbiter.ml.image_finetune import image_encoder_finetune
from arbiter.ml.metrics import model_evaluate, selection_score, threshold_for_precision
from arbiter.ml.model import ENCODER, ClassifierModel, EncoderInfo, HeadModel, LinearComponent
from arbiter.ml.onnx_export import artifact_add_onnx
from arbiter.ml.specs import HeadSpec, TrainOptions
from arbiter.ml.tfidf import TfidfFeatures

ONNX_CHECK_ROWS = 2000


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced.

    `selected` is what serves: `head`, `full`, `tfidf` or `blend` (auto). `selection_metric` is the
    selection rule's value on the validation rows; `metrics` is the evaluation written to metrics.json.
    """

    artifact: Artifact
    metrics: dict[str, Any]
    selected: str
    selection_metric: float | None
    best_epoch: int | None
    history: list[EpochProgress]
    candidates: list[dict[str, Any]]
    warnings: list[str]
    seconds: float

    @property
    def artifact_dir(self) -> Path:
        return self.artifact.path


@dataclass
class _Trained:
    heads: list[HeadModel]
    tfidf: dict[str, TfidfFeatures]
    selected: str
    history: list[EpochProgress]
    candidates: list[dict[str, Any]]
    best_epoch: int | None
    fine_tuned: bool
    max_tokens: int | None = None
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)


def _specs(heads: Sequence[HeadSpec | Mapping[str, Any]]) -> list[HeadSpec]:
    specs = [head if isinstance(head, HeadSpec) else HeadSpec.from_dict(head) for head in heads]
    if not specs:
        raise MLError("No heads to train: the snapshot declares no label column.")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise MLError(f"Head names must be unique, got {names}.")
    return specs


def _parent_inits(specs: Sequence[HeadSpec], parent: Artifact | None) -> dict[str, LinearComponent]:
    """Encoder components of parent heads with the same labels: new heads start from them."""
    inits: dict[str, LinearComponent] = {}
    if parent is None:
        return inits
    for spec in specs:
        try:
            previous = parent.model.head(spec.name)
        except KeyError:
            continue
        if previous.spec.labels == spec.labels and previous.spec.multi_label == spec.multi_label:
            for component in previous.components:
                if component.features == ENCODER:
                    inits[spec.name] = component
    return inits


def _next_tfidf_name(parent: Artifact | None) -> str:
    taken = set(parent.model.tfidf) if parent else set()
    index = 1
    while f"tfidf-{index}" in taken:
        index += 1
    return f"tfidf-{index}"


def _encoder_source(*, base_model: str | None, parent: Artifact | None) -> tuple[str, str]:
    """(base model name, what to load): an update reuses its parent's encoder, weights included."""
    if parent is not None and parent.model.encoder is not None:
        if base_model is not None and base_model != parent.base_model:
            raise BaseModelError(
                f"The parent version uses base model '{parent.base_model}'; an update keeps it. Train a new "
                f"model to change the base model to '{base_model}'.",
                details={"base_model": base_model, "parent_base_model": parent.base_model},
            )
        return parent.base_model, str(parent.encoder_path)
    name = base_model or (parent.base_model if parent else DEFAULT_BASE_MODEL)
    return name, name


def _set_target_thresholds(
    *, heads: Sequence[HeadModel], probabilities: Mapping[str, np.ndarray], valid: LabelledRows, target: float
) -> list[str]:
    """Raise each label's threshold to the lowest score reaching `target` precision on the validation rows."""
    warnings = []
    for head in heads:
        labels = valid.heads[head.spec.name]
        scores = probabilities[head.spec.name][labels.mask]
        truth = labels.indicators[labels.mask] > 0.5
        for i, label in enumerate(head.spec.labels):
            reached = threshold_for_precision(scores[:, i], truth[:, i], target)
            if reached is None:
                warnings.append(
                    f"Label '{label}' of head '{head.spec.name}' does not reach precision {target} on the "
                    f"validation rows; its threshold stays at {head.thresholds[label]}."
                )
            else:
                head.thresholds[label] = max(head.thresholds[label], reached["threshold"])
    return warnings


def _probabilities(
    *,
    model: ClassifierModel,
    rows: LabelledRows,
    encoder: Encoder | None,
    max_tokens: int,
    cache: EmbeddingCache | None,
) -> dict[str, np.ndarray]:
    encoder_logits = None
    if model.uses_encoder:
        assert encoder is not None
        embeddings = encoder.embed(rows.texts, max_tokens=max_tokens, cache=cache)
        encoder_logits = model.encoder_logits(embeddings)
        if model.builtin_features and isinstance(encoder, ImageEncoder):
            encoder_logits.update(encoder.builtin_logits(rows.texts))
    return model.probabilities(texts=rows.texts, encoder_logits=encoder_logits)


def train_from_snapshot(
    *,
    rows: Iterable[Mapping[str, Any]],
    heads: Sequence[HeadSpec | Mapping[str, Any]],
    out_dir: Path,
    options: TrainOptions | None = None,
    base_model: str | None = None,
    parent: Artifact | None = None,
    on_progress: ProgressCallback | None = None,
    should_cancel: CancelCheck | None = None,
    cache: EmbeddingCache | None = None,
    device: torch.device | None = None,
    clock: Clock = time.monotonic,
) -> TrainResult:
    """Train the heads of a snapshot, evaluate them, and write a servable artifact into `out_dir`.

    `rows` follow the snapshot contract (see `arbiter.ml.data`); rows with `split` null are shared out
    by `options.test_percent`. To test on another snapshot, pass its rows with `split` set to "test"; rows
    with `split` "valid" are the validation rows (else `options.valid_percent` of the training rows are).
    A row's `weight` scales its part in every training loss (head, full fine-tuning, TF-IDF).
    With a `parent`, the parent's heads that are not in `heads` are kept unchanged (and still served);
    heads in both are retrained, starting from the parent's weights when their labels match; the
    parent's encoder is reused. `on_progress` gets an `EpochProgress` per epoch; `should_cancel` is
    polled between steps and raises `TrainingCancelled` when it returns True. `options.time_budget_minutes`
    is measured on `clock` (`time.monotonic`; tests pass a simulated one), and so is the time used.
    """
    started = clock()
    options = options or TrainOptions()
    deadline = started + options.time_budget_s
    # Validation and test texts are embedded while training and again for evaluation: keep them.
    cache = cache if cache is not None else EmbeddingCache()
    specs = _specs(heads)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ArtifactError(f"The artifact directory {out_dir.name!r} is not empty.")
    data = _rows_prepare(rows=rows, specs=specs, options=options)
    update = _update_plan(specs=specs, parent=parent, base_model=base_model, options=options)
    options = update.options
    data.warnings += update.warnings
    encoder_load = _EncoderLoader(update.source, device=device)
    inits = _parent_inits(specs, parent)
    trained = _train(
        specs=specs,
        fit=data.fit,
        valid=data.valid,
        options=options,
        encoder_load=encoder_load,
        inits=inits,
        allow_full=not update.kept_need_encoder,
        cache=cache,
        tfidf_name=_next_tfidf_name(parent),
        on_progress=on_progress,
        should_cancel=should_cancel,
        deadline=deadline,
        test_rows=len(data.test),
        image=is_image_base(update.source),
        clock=clock,
    )
    cancel_check(should_cancel)
    if trained.max_tokens is not None and trained.max_tokens != options.max_tokens:
        options = dataclasses.replace(options, max_tokens=trained.max_tokens)

    tfidf = {**(parent.model.tfidf if parent else {}), **trained.tfidf}
    new_model = ClassifierModel(heads=trained.heads, tfidf=tfidf, encoder=None)
    encoder = encoder_load() if new_model.uses_encoder or update.kept_need_encoder else None
    selection_metric = _thresholds_and_selection(
        model=new_model, data=data, encoder=encoder, options=options, cache=cache
    )
    fine_tuned = trained.fine_tuned or bool(
        parent and parent.model.encoder and parent.model.encoder.fine_tuned
    )
    model = ClassifierModel(
        heads=trained.heads + update.kept,
        tfidf=tfidf,
        encoder=None
        if encoder is None
        else EncoderInfo(
            base_model=update.base_name,
            pooling=encoder.pooling,
            dim=encoder.dim,
            max_tokens=options.max_tokens,
            fine_tuned=fine_tuned,
        ),
    )
    metrics = _evaluate(model=model, data=data, encoder=encoder, options=options, cache=cache)
    metrics["training"] = _training_record(
        trained=trained,
        data=data,
        options=options,
        selection_metric=selection_metric,
        kept=update.kept,
        inits=inits,
        seconds=clock() - started,
    )
    if parent is not None and parent.metrics and update.kept:
        metrics["inherited_heads"] = _inherited_metrics(parent_metrics=parent.metrics, kept=update.kept)
    artifact = _artifact_write(
        model=model,
        out_dir=out_dir,
        base_name=update.base_name,
        encoder=encoder,
        metrics=metrics,
        options=options,
        selected=trained.selected,
        fit=data.fit,
        valid=data.valid,
    )
    return TrainResult(
        artifact=artifact,
        metrics=metrics,
        selected=trained.selected,
        selection_metric=selection_metric,
        best_epoch=trained.best_epoch,
        history=trained.history,
        candidates=trained.candidates,
        warnings=data.warnings,
        seconds=clock() - started,
    )


@dataclass
class _Rows:
    """The snapshot's rows shared out: fit and validation (epochs, candidates, thresholds), test (metrics)."""

    fit: LabelledRows
    valid: LabelledRows
    test: LabelledRows
    warnings: list[str]


def _rows_prepare(
    *, rows: Iterable[Mapping[str, Any]], specs: Sequence[HeadSpec], options: TrainOptions
) -> _Rows:
    snapshot = rows_parse(rows=rows, heads=specs)
    extra_train, extra_test = rows_split(
        rows=snapshot.unassigned, percent=options.test_percent, seed=options.seed
    )
    train = snapshot.train.concat(extra_train)
    test = snapshot.test.concat(extra_test)
    warnings = rows_check_trainable(train=train, test=test)
    if options.selection_head is not None and options.selection_head not in {spec.name for spec in specs}:
        raise MLError(f"selection_head '{options.selection_head}' is not one of the heads being trained.")
    if len(snapshot.valid):
        # Rows given as validation rows (split "valid") are the validation split: every training row fits.
        fit, valid = train, snapshot.valid
    else:
        fit, valid = rows_split(rows=train, percent=options.valid_percent, seed=options.seed + 1)
    if len(valid) == 0:
        valid = fit
        warnings.append(
            "Too few rows for a validation split: epochs and candidates are chosen on training rows."
        )
    return _Rows(fit=fit, valid=valid, test=test, warnings=warnings)


@dataclass
class _Update:
    """What a parent version imposes: the heads it keeps, its encoder, and options the kept heads need."""

    kept: list[HeadModel]
    kept_need_encoder: bool
    base_name: str
    source: str
    options: TrainOptions
    warnings: list[str]


def _update_plan(
    *, specs: Sequence[HeadSpec], parent: Artifact | None, base_model: str | None, options: TrainOptions
) -> _Update:
    new_names = {spec.name for spec in specs}
    kept = [head for head in parent.model.heads if head.spec.name not in new_names] if parent else []
    kept_need_encoder = any(head.uses(ENCODER) for head in kept)
    base_name, source = _encoder_source(base_model=base_model, parent=parent)
    warnings = []
    image = is_image_base(source)
    if image and parent is None:
        # The base's built-in heads (vision-moderation: nsfw) are kept unless the snapshot retrains them. They
        # read the Open-NSFW network's outputs, not the backbone: fine-tuning leaves them as they are.
        kept = kept + [head for head in builtin_heads(base_name) if head.spec.name not in new_names]
    if kept_need_encoder:
        assert parent is not None
        if options.strategy == "full":
            encoder = "image backbone" if image else "encoder"
            raise MLError(
                f"Fine-tuning ('full') would change the {encoder} that the kept heads "
                f"{[head.spec.name for head in kept if head.uses(ENCODER)]} rely on. Include those heads in "
                "the training data, or use the 'head' or 'auto' strategy.",
            )
        if options.max_tokens != parent.max_tokens:
            warnings.append(f"max_tokens set to the parent's {parent.max_tokens}: kept heads depend on it.")
            options = dataclasses.replace(options, max_tokens=parent.max_tokens)
    return _Update(
        kept=kept,
        kept_need_encoder=kept_need_encoder,
        base_name=base_name,
        source=source,
        options=options,
        warnings=warnings,
    )


class _EncoderLoader:
    """Loads the encoder the first time it is asked for; strategies that never need it never load it."""

    def __init__(self, source: str, *, device: torch.device | None) -> None:
        self.source = source
        self.device = device
        self.encoder: Encoder | None = None

    def __call__(self) -> Encoder:
        if self.encoder is None:
            if is_image_base(self.source):
                # Same duck-typed surface as `Encoder` (embed, fingerprint, save); `full` and `auto` go to
                # `image_encoder_finetune` and `image_automl_search`.
                self.encoder = ImageEncoder.load(self.source, device=self.device)  # type: ignore[assignment]
            else:
                self.encoder = Encoder.load(self.source, device=self.device)
        assert self.encoder is not None
        return self.encoder


def _thresholds_and_selection(
    *,
    model: ClassifierModel,
    data: _Rows,
    encoder: Encoder | None,
    options: TrainOptions,
    cache: EmbeddingCache | None,
) -> float:
    """Thresholds raised to the target precision (when one is set), then the selection rule's value on the
    validation rows (a loss as itself)."""
    valid = data.valid
    probabilities = _probabilities(
        model=model, rows=valid, encoder=encoder, max_tokens=options.max_tokens, cache=cache
    )
    if options.target_precision is not None:
        data.warnings += _set_target_thresholds(
            heads=model.heads, probabilities=probabilities, valid=valid, target=options.target_precision
        )
    score, _ = selection_score(
        probabilities=probabilities, rows=valid, rule=options.selection_rule, head=options.selection_head
    )
    return round(-score if options.selection_rule == "loss" else score, 6)


def _evaluate(
    *,
    model: ClassifierModel,
    data: _Rows,
    encoder: Encoder | None,
    options: TrainOptions,
    cache: EmbeddingCache | None,
) -> dict[str, Any]:
    """The metrics on the test rows (on the validation rows, with a warning, when there are none)."""
    evaluated, split = (data.test, "test") if len(data.test) else (data.valid, "validation")
    if split == "validation":
        data.warnings.append("No test rows: the metrics are computed on the validation rows.")
    return model_evaluate(
        probabilities=_probabilities(
            model=model, rows=evaluated, encoder=encoder, max_tokens=options.max_tokens, cache=cache
        ),
        rows=evaluated,
        split=split,
        target_precision=options.target_precision,
    )


def _training_record(
    *,
    trained: _Trained,
    data: _Rows,
    options: TrainOptions,
    selection_metric: float,
    kept: Sequence[HeadModel],
    inits: Mapping[str, LinearComponent],
    seconds: float,
) -> dict[str, Any]:
    """How the version was trained, as metrics.json tells it: choices, rows, epochs, candidates, the time
    budget and the time used (to the end of the evaluation), warnings."""
    return {
        "strategy": options.strategy,
        "time_budget_s": round(options.time_budget_s, 1),
        "seconds": round(seconds, 1),
        "max_tokens": options.max_tokens,
        "plan": trained.plan,
        "selected": trained.selected,
        "selection_rule": options.selection_rule,
        "selection_head": options.selection_head,
        "selection_metric": selection_metric,
        "best_epoch": trained.best_epoch,
        "rows": {
            "train": len(data.fit),
            "validation": len(data.valid) if data.valid is not data.fit else 0,
            "test": len(data.test),
        },
        "history": [progress.to_dict() for progress in trained.history],
        "candidates": trained.candidates,
        "warnings": data.warnings,
        "kept_heads": [head.spec.name for head in kept],
        "initialised_from_parent": sorted(inits),
    }


def _inherited_metrics(*, parent_metrics: dict[str, Any], kept: Sequence[HeadModel]) -> dict[str, Any]:
    """The parent's metrics of the heads kept unchanged (its own, or those it inherited in turn)."""
    parent_heads = parent_metrics.get("heads", {})
    inherited = {**parent_metrics.get("inherited_heads", {}), **parent_heads}
    return {head.spec.name: inherited[head.spec.name] for head in kept if head.spec.name in inherited}


def _artifact_write(
    *,
    model: ClassifierModel,
    out_dir: Path,
    base_name: str,
    encoder: Encoder | None,
    metrics: dict[str, Any],
    options: TrainOptions,
    selected: str,
    fit: LabelledRows,
    valid: LabelledRows,
) -> Artifact:
    """The artifact directory: model, encoder weights, metrics, and the ONNX export checked on validation rows."""
    artifact_write_model(
        model=model,
        path=out_dir,
        base_model=base_name,
        extra={
            "max_tokens": options.max_tokens,
            "strategy": options.strategy,
            "selected": selected,
            "options": options.to_dict(),
            "versions": _library_versions(),
        },
    )
    if encoder is not None:
        encoder.save(out_dir / ENCODER_FOLDER)
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1, ensure_ascii=False))
    artifact = artifact_load(out_dir)
    if isinstance(encoder, ImageEncoder):
        if options.export_onnx:
            image_encoder_add_onnx(
                artifact=artifact,
                encoder=encoder,
                fit=fit,
                valid=valid,
                rule=options.selection_rule,
                head=options.selection_head,
            )
        return artifact
    if options.export_onnx and encoder is not None:
        check_rows = valid.subset(np.arange(min(len(valid), ONNX_CHECK_ROWS)))
        artifact_add_onnx(
            artifact=artifact,
            encoder=encoder,
            rows=check_rows,
            rule=options.selection_rule,
            head=options.selection_head,
        )
    return artifact


def _train(
    *,
    specs: Sequence[HeadSpec],
    fit: LabelledRows,
    valid: LabelledRows,
    options: TrainOptions,
    encoder_load: Callable[[], Encoder],
    inits: dict[str, LinearComponent],
    allow_full: bool,
    cache: EmbeddingCache | None,
    tfidf_name: str,
    on_progress: ProgressCallback | None,
    should_cancel: CancelCheck | None,
    deadline: float,
    test_rows: int,
    image: bool,
    clock: Clock,
) -> _Trained:
    # Image training reads time.monotonic: the time left is carried over to it.
    monotonic_deadline = time.monotonic() + (deadline - clock())
    if options.strategy == "auto" and image:
        outcome = image_automl_search(
            specs=specs,
            fit=fit,
            valid=valid,
            options=options,
            encoder_load=encoder_load,
            parents=inits,
            allow_full=allow_full,
            cache=cache,
            on_progress=on_progress,
            should_cancel=should_cancel,
            deadline=monotonic_deadline,
            test_rows=test_rows,
        )
        return _Trained(
            heads=outcome.heads,
            tfidf={},
            selected=outcome.selected,
            history=outcome.history,
            candidates=outcome.candidates,
            best_epoch=outcome.best_epoch,
            fine_tuned=outcome.encoder_fine_tuned,
            plan=outcome.plan,
        )
    if options.strategy == "auto":
        outcome, _ = automl_search(
            specs=specs,
            fit=fit,
            valid=valid,
            options=options,
            encoder_load=encoder_load,
            parents=inits,
            allow_full=allow_full,
            cache=cache,
            features_name=tfidf_name,
            on_progress=on_progress,
            should_cancel=should_cancel,
            deadline=deadline,
            test_rows=test_rows,
            # Kept heads read the parent's embeddings: the tokens they were trained on stay.
            tune_max_tokens=allow_full,
            clock=clock,
        )
        used = {component.features for head in outcome.heads for component in head.components}
        return _Trained(
            heads=outcome.heads,
            tfidf={tfidf_name: outcome.tfidf} if tfidf_name in used and outcome.tfidf is not None else {},
            selected=outcome.selected,
            history=outcome.history,
            candidates=outcome.candidates,
            best_epoch=outcome.best_epoch,
            fine_tuned=outcome.encoder_fine_tuned,
            max_tokens=outcome.max_tokens,
            plan=outcome.plan,
        )
    encoder = encoder_load()
    if options.strategy == "full" and isinstance(encoder, ImageEncoder):
        heads, tracker = image_encoder_finetune(
            encoder=encoder,
            specs=specs,
            fit=fit,
            valid=valid,
            options=options,
            parents=inits,
            on_progress=on_progress,
            should_cancel=should_cancel,
            deadline=monotonic_deadline,
        )
    elif options.strategy == "full":
        heads, tracker = encoder_finetune(
            encoder=encoder,
            specs=specs,
            fit=fit,
            valid=valid,
            options=options,
            parents=inits,
            on_progress=on_progress,
            should_cancel=should_cancel,
            deadline=deadline,
            clock=clock,
        )
    else:
        heads, tracker = heads_train_frozen(
            specs=specs,
            fit=fit,
            fit_embeddings=encoder.embed(fit.texts, max_tokens=options.max_tokens, cache=cache),
            valid=valid,
            valid_embeddings=encoder.embed(valid.texts, max_tokens=options.max_tokens, cache=cache),
            options=options,
            parents=inits,
            on_progress=on_progress,
            should_cancel=should_cancel,
            deadline=deadline,
            clock=clock,
        )
    return _Trained(
        heads=heads,
        tfidf={},
        selected=options.strategy,
        history=tracker.history,
        candidates=[],
        best_epoch=tracker.best_epoch,
        fine_tuned=options.strategy == "full",
    )


def _library_versions() -> dict[str, str]:
    import sklearn
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "scikit-learn": sklearn.__version__,
    }
