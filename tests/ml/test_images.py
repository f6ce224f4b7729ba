"""Image bases: EfficientNet-Lite0 embeddings (installed, offline), exported to ONNX; `head` training on an
image snapshot; `vision-moderation` keeps its built-in `nsfw` head beside the user's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from arbiter.images import decode_image
from arbiter.ml import HeadSpec, Predictor, TrainOptions, train_from_snapshot
from arbiter.ml.errors import MLError
from arbiter.ml.image_encoders import ImageEncoder, remember_image
from arbiter.testing.images import make_image

TOBACCO = [HeadSpec(name="tobacco", labels=("no_tobacco", "yes_tobacco"))]


def image_rows(count: int = 36) -> list[dict[str, Any]]:
    """Red-dominated pictures are `yes_tobacco`, blue-dominated `no_tobacco`; every 4th row is a test row."""
    rows = []
    for i in range(count):
        yes = i % 2 == 0
        colour = (200 + i % 40, 30 + i, 20) if yes else (20, 30 + i, 200 + i % 40)
        image = decode_image(make_image("JPEG", size=(96, 64), color=colour, noise=True))
        rows.append(
            {
                "row": i,
                "input": remember_image(image.sha256, image.data),
                "labels": {"tobacco": ["yes_tobacco" if yes else "no_tobacco"]},
                "split": "test" if i % 4 == 3 else "train",
            }
        )
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict[str, Any]]:
    torch.manual_seed(0)
    return image_rows()


def test_efficientnet_lite0_embeds_offline_and_its_onnx_export_agrees(
    rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    encoder = ImageEncoder.load("efficientnet-lite0", device=torch.device("cpu"))
    keys = [row["input"] for row in rows[:6]]
    vectors = encoder.embed(keys)
    assert vectors.shape == (6, 1280)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    # Same-colour pictures are closer than different-colour ones.
    assert vectors[0] @ vectors[2] > vectors[0] @ vectors[1]
    import onnxruntime

    path = encoder.onnx_export(tmp_path / "encoder.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {"pixel_values": encoder.pixel_batch(keys)})
    assert np.abs(exported - vectors).max() < 1e-4


def test_a_vision_moderation_model_keeps_nsfw_and_learns_the_users_head(
    rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    result = train_from_snapshot(
        rows=rows,
        heads=TOBACCO,
        out_dir=tmp_path / "artifact",
        options=TrainOptions(strategy="auto", max_epochs=40, seed=1),
        base_model="vision-moderation",
    )
    heads = {head.spec.name for head in result.artifact.model.heads}
    assert heads == {"tobacco", "nsfw"}
    assert result.metrics["training"]["strategy"] == "head"  # auto on an image base: heads on embeddings
    assert result.metrics["heads"]["tobacco"]["macro"]["balanced_accuracy"] >= 0.9
    assert result.artifact.config["onnx"]["kind"] == "image"

    onnx = Predictor.load(result.artifact, runtime="onnx")
    torch_predictor = Predictor.load(result.artifact, runtime="torch")
    assert (onnx.runtime_name, torch_predictor.runtime_name, onnx.input_kind) == ("onnx", "torch", "image")
    tests = [row for row in rows if row["split"] == "test"]
    answers = onnx.predict([row["input"] for row in tests])
    for row, answer in zip(tests, answers, strict=True):
        assert answer["tobacco"]["label"] == row["labels"]["tobacco"][0]
        assert answer["nsfw"]["label"] == "sfw" and not answer["nsfw"]["flagged"]
    by_torch = torch_predictor.probabilities([row["input"] for row in tests])
    by_onnx = onnx.probabilities([row["input"] for row in tests])
    assert np.abs(by_torch["tobacco"] - by_onnx["tobacco"]).max() < 1e-3


def test_full_fine_tuning_of_an_image_base_is_refused_with_the_way_out(
    rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    with pytest.raises(MLError, match="'head' or 'auto'"):
        train_from_snapshot(
            rows=rows,
            heads=TOBACCO,
            out_dir=tmp_path / "full",
            options=TrainOptions(strategy="full"),
            base_model="efficientnet-lite0",
        )
