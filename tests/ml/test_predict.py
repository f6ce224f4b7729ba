"""Artifacts and predictors: round trips, runtimes, the result shape and the `flagged` rule."""

from __future__ import annotations

import json
import tarfile
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from arbiter.ml import (
    ArtifactError,
    HeadSpec,
    Predictor,
    TrainResult,
    artifact_load,
    artifact_pack,
    artifact_unpack,
)
from arbiter.ml.model import ClassifierModel, HeadModel, LinearComponent
from arbiter.ml.predict import TokenRuntime

TEXTS = [
    "you are a pathetic loser, the senate vote",
    "the tennis final is wonderful",
    "my lunch is so kind",
    "you are a brainless fool, our hockey team and parliament",
]


def test_artifact_holds_config_weights_tokenizer_onnx_and_metrics_without_pickle(
    head_result: TrainResult,
) -> None:
    folder = head_result.artifact_dir
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "arbiter.model" and config["format_version"] == 1
    assert config["base_model"] == "all-MiniLM-L6-v2" and config["max_tokens"] == 128
    assert [head["name"] for head in config["heads"]] == ["toxicity", "topics"]
    assert config["heads"][0]["negative_labels"] == ["safe"]
    assert config["heads"][1]["thresholds"] == {"sports": 0.5, "politics": 0.5}
    assert (folder / "encoder" / "tokenizer.json").is_file()
    assert (folder / "encoder" / "model.safetensors").is_file()
    assert set(load_file(str(folder / "heads.safetensors"))) == {
        "toxicity/0/weight",
        "toxicity/0/bias",
        "topics/0/weight",
        "topics/0/bias",
    }
    assert config["onnx"]["selected"] in {"int8", "fp32"}
    assert (folder / config["onnx"]["fp32"]).is_file() and (folder / config["onnx"]["int8"]).is_file()
    assert json.loads((folder / "metrics.json").read_text())["split"] == "test"
    suffixes = {path.suffix for path in folder.rglob("*") if path.is_file()}
    assert not suffixes & {".pkl", ".pickle", ".bin", ".pt", ".joblib"}


def test_pack_unpack_round_trip_gives_identical_predictions(head_result: TrainResult, tmp_path: Path) -> None:
    blob = artifact_pack(head_result.artifact_dir)
    with tarfile.open(fileobj=BytesIO(blob), mode="r:*") as archive:
        assert "config.json" in archive.getnames()
    unpacked = artifact_unpack(blob, tmp_path / "deployment")

    original = Predictor.load(head_result.artifact_dir, runtime="torch").predict(TEXTS)
    restored = Predictor.load(unpacked, runtime="torch").predict(TEXTS)
    assert restored == original


def test_predictions_have_the_documented_shape(head_result: TrainResult) -> None:
    predictions = Predictor.load(head_result.artifact_dir, runtime="torch").predict(TEXTS)
    toxic, sporty_safe, neutral_safe, both = predictions

    assert set(toxic) == {"toxicity", "topics"}
    assert set(toxic["toxicity"]) == {"label", "score", "labels", "label_scores", "flagged"}
    assert toxic["toxicity"]["label"] == "toxic" and toxic["toxicity"]["flagged"] is True
    assert toxic["toxicity"]["score"] == max(toxic["toxicity"]["label_scores"].values())
    assert sum(toxic["toxicity"]["label_scores"].values()) == pytest.approx(1.0, abs=1e-5)
    assert toxic["topics"]["labels"] == ["politics"]
    assert sporty_safe["toxicity"] | {"label_scores": None} == {
        "label": "safe",
        "score": sporty_safe["toxicity"]["score"],
        "labels": ["safe"],
        "label_scores": None,
        "flagged": False,
    }
    assert sporty_safe["topics"]["labels"] == ["sports"]
    # Neither topic reaches 0.5: no label, but the highest score is still reported.
    assert neutral_safe["topics"]["label"] is None and neutral_safe["topics"]["labels"] == []
    assert sorted(both["topics"]["labels"]) == ["politics", "sports"]


def test_onnx_runtimes_agree_with_torch(head_result: TrainResult) -> None:
    torch_scores = Predictor.load(head_result.artifact_dir, runtime="torch").probabilities(TEXTS)
    for precision, tolerance in (("fp32", 0.01), ("int8", 0.1)):
        predictor = Predictor.load(head_result.artifact_dir, runtime="onnx", precision=precision)
        assert predictor.runtime_name == "onnx"
        scores = predictor.probabilities(TEXTS)
        for head in ("toxicity", "topics"):
            np.testing.assert_allclose(scores[head], torch_scores[head], atol=tolerance)
        assert [p["toxicity"]["label"] for p in predictor.predict(TEXTS)] == [
            "toxic",
            "safe",
            "safe",
            "toxic",
        ]
    assert Predictor.load(head_result.artifact_dir).runtime_name == "onnx"


def test_onnx_runs_token_ids_as_it_runs_texts(head_result: TrainResult) -> None:
    """The micro-batcher tokenises on the caller's thread and runs ids: the same numbers, in input order."""
    runtime = Predictor.load(head_result.artifact_dir, runtime="onnx").runtime
    assert isinstance(runtime, TokenRuntime)
    texts = [*TEXTS, "a much longer text " * 40, "short"]
    ids = runtime.token_ids(texts)
    assert [len(row) for row in ids][-2:] == [128, 3]  # truncated at the artifact's max_tokens; [CLS] x [SEP]
    by_ids, by_texts = runtime.encoder_logits_ids(ids), runtime.encoder_logits(texts)
    assert set(by_ids) == set(by_texts) == {"toxicity", "topics"}
    for head in by_ids:
        np.testing.assert_array_equal(by_ids[head], by_texts[head])
    assert runtime.encoder_logits_ids([]) == {}


def test_flagged_follows_negative_labels_and_thresholds() -> None:
    def head(spec: HeadSpec, thresholds: dict[str, float]) -> HeadModel:
        component = LinearComponent(
            "tfidf-1", np.zeros((len(spec.labels), 1), np.float32), np.zeros(len(spec.labels), np.float32)
        )
        return HeadModel(spec=spec, components=[component], thresholds=thresholds)

    from arbiter.ml.predict import _head_result

    olid = head(HeadSpec(name="offensive", labels=("OFF", "NOT")), {"OFF": 0.0, "NOT": 0.0})
    assert _head_result(olid, np.array([0.7, 0.3]))["flagged"] is True
    assert _head_result(olid, np.array([0.3, 0.7]))["flagged"] is False
    strict = head(HeadSpec(name="offensive", labels=("OFF", "NOT")), {"OFF": 0.9, "NOT": 0.0})
    assert _head_result(strict, np.array([0.7, 0.3]))["flagged"] is False
    topic = head(HeadSpec(name="topic", labels=("sports", "politics")), {"sports": 0.0, "politics": 0.0})
    assert _head_result(topic, np.array([0.9, 0.1]))["flagged"] is False  # no negative label: never flags
    categories = head(
        HeadSpec(name="categories", labels=("hate", "none"), multi_label=True), {"hate": 0.5, "none": 0.5}
    )
    assert _head_result(categories, np.array([0.2, 0.9])) | {"label_scores": None} == {
        "label": "none",
        "score": 0.9,
        "labels": ["none"],
        "label_scores": None,
        "flagged": False,
    }
    assert _head_result(categories, np.array([0.6, 0.9]))["flagged"] is True


def test_broken_artifacts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="No config.json"):
        artifact_load(tmp_path)
    with pytest.raises(ArtifactError, match="could not be unpacked"):
        artifact_unpack(b"not a tarball", tmp_path / "x")
    (tmp_path / "config.json").write_text(json.dumps({"format": "arbiter.model", "format_version": 99}))
    with pytest.raises(ArtifactError, match="Upgrade Arbiter"):
        artifact_load(tmp_path)


def test_a_model_without_encoder_heads_needs_no_runtime() -> None:
    model = ClassifierModel(heads=[], tfidf={}, encoder=None)
    assert Predictor(model=model, runtime=None).predict([]) == []
