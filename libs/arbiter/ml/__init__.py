"""The ML core of Arbiter: encoders, heads, training strategies, metrics, artifacts and predictors.

Pure Python (torch, transformers, scikit-learn, onnxruntime); nothing here imports Django. The
trainer (`arbiter train --run ID`) calls `train_from_snapshot`; the inference service loads a
`Predictor` from the artifact it wrote.

Training::

    from pathlib import Path
    from arbiter.ml import HeadSpec, TrainOptions, train_from_snapshot

    result = train_from_snapshot(
        rows=[{"row": 1, "input": "you are great", "labels": {"toxicity": ["safe"]}, "split": "train"}, ...],
        heads=[HeadSpec(name="toxicity", labels=("safe", "toxic"))],
        options=TrainOptions(strategy="head", max_epochs=20, selection_rule="f1"),
        out_dir=Path("run-42/artifact"),
        on_progress=lambda progress: print(progress.to_dict()),   # once per epoch
        should_cancel=lambda: False,                               # polled between steps
    )
    result.metrics          # the evaluation (shape: arbiter.ml.metrics), also in metrics.json
    blob = artifact_pack(result.artifact_dir)                      # tar bytes for the blob store

Updating a version: `parent=artifact_unpack(blob, Path("parent"))` keeps the parent's heads that the
new rows do not label and retrains or adds the others.

Serving::

    from arbiter.ml import Predictor, artifact_unpack

    predictor = Predictor.load(artifact_unpack(blob, Path("deployments/7")))   # ONNX on CPU when exported
    predictor.predict(["some text"])
    # [{"toxicity": {"label": "toxic", "score": 0.97, "labels": ["toxic"],
    #                "label_scores": {"safe": 0.03, "toxic": 0.97}, "flagged": True}}]

Errors that the user can act on are `MLError` subclasses with a stable `code` and a clear message:
`TrainingDataError` (no training rows, a head with a single class, unknown labels, test rows whose
heads or classes differ), `BaseModelError` (the base model cannot be loaded), `ArtifactError`, and
`TrainingCancelled`.
"""

from arbiter.ml.artifacts import Artifact, artifact_load, artifact_pack, artifact_unpack
from arbiter.ml.data import rows_parse, rows_split
from arbiter.ml.encoders import DEFAULT_BASE_MODEL, EmbeddingCache, Encoder, encoder_resolve
from arbiter.ml.errors import ArtifactError, BaseModelError, MLError, TrainingCancelled, TrainingDataError
from arbiter.ml.heads import EpochProgress
from arbiter.ml.metrics import model_evaluate, selection_score
from arbiter.ml.predict import Predictor
from arbiter.ml.specs import HeadSpec, TrainOptions, label_is_negative
from arbiter.ml.training import TrainResult, train_from_snapshot

__all__ = [
    "DEFAULT_BASE_MODEL",
    "Artifact",
    "ArtifactError",
    "BaseModelError",
    "EmbeddingCache",
    "Encoder",
    "EpochProgress",
    "HeadSpec",
    "MLError",
    "Predictor",
    "TrainOptions",
    "TrainResult",
    "TrainingCancelled",
    "TrainingDataError",
    "artifact_load",
    "artifact_pack",
    "artifact_unpack",
    "encoder_resolve",
    "label_is_negative",
    "model_evaluate",
    "rows_parse",
    "rows_split",
    "selection_score",
    "train_from_snapshot",
]
