"""Image bases: EfficientNet-Lite0 embeddings (installed, offline), exported to ONNX; `head` training on an
image snapshot; `vision-moderation` keeps its built-in `nsfw` head beside the user's; `full` fine-tunes the
backbone, which the artifact saves and serves; `auto` weighs `head` against `full` and says why it skipped one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from arbiter.images import decode_image
from arbiter.ml import EmbeddingCache, HeadSpec, Predictor, TrainOptions, TrainResult, train_from_snapshot
from arbiter.ml.errors import MLError, TrainingCancelled
from arbiter.ml.heads import EpochProgress
from arbiter.ml.image_encoders import IMAGE_ENCODER_FILE, ImageEncoder, OpenNsfw, image_bytes, remember_image
from arbiter.ml.image_finetune import augment
from arbiter.ml.model import softmax
from arbiter.ml.plan import auto_plan
from arbiter.testing.images import make_image

TOBACCO = [HeadSpec(name="tobacco", labels=("no_tobacco", "yes_tobacco"))]


def image_rows(count: int = 36) -> list[dict[str, Any]]:
    """Red-dominated pictures are `yes_tobacco`, blue-dominated `no_tobacco`; every 4th row is a test row."""
    rows = []
    for i in range(count):
        yes = i % 2 == 0
        colour = (200 + i % 40, 30 + i % 32, 20) if yes else (20, 30 + i % 32, 200 + i % 40)
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


def _batch_norm_shift(encoder: ImageEncoder, pictures: np.ndarray) -> float:
    """How far (in running standard deviations, squared) the features entering each batch-norm layer sit from
    the means the weights were trained with, averaged over layers."""
    shifts: list[float] = []

    def seen(layer: torch.nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        mean = inputs[0].mean(dim=(0, 2, 3))
        shift = (mean - layer.running_mean) ** 2 / (layer.running_var + 1e-3)  # type: ignore[operator]
        shifts.append(float(shift.mean()))

    hooks = [
        layer.register_forward_hook(seen)
        for layer in encoder.model.modules()
        if isinstance(layer, torch.nn.BatchNorm2d)
    ]
    with torch.inference_mode():
        encoder.model(torch.from_numpy(pictures))
    for hook in hooks:
        hook.remove()
    return float(np.mean(shifts))


def test_efficientnet_lite0_runs_the_relu6_its_weights_were_trained_with_and_old_artifacts_keep_swish(
    tmp_path: Path,
) -> None:
    """EfficientNet-Lite drops swish for ReLU6; a network built with swish over Lite's weights feeds every
    batch-norm layer features far from the statistics it was trained on (and its embeddings are noise)."""
    encoder = ImageEncoder.load("efficientnet-lite0", device=torch.device("cpu"))
    pictures = np.stack(
        [
            encoder.preprocess(
                make_image("JPEG", size=(96, 64), color=(30 * i, 100, 200 - 20 * i), mark=(250, 250, 250))
            )
            for i in range(8)
        ]
    )
    right = _batch_norm_shift(encoder, pictures)
    encoder.save(tmp_path / "new")
    assert ImageEncoder.load(str(tmp_path / "new")).model.activation == "relu6"  # type: ignore[union-attr]
    # An artifact saved before the activation was recorded was trained on swish features: it keeps them.
    saved = tmp_path / "new" / IMAGE_ENCODER_FILE
    legacy = {key: value for key, value in json.loads(saved.read_text()).items() if key != "activation"}
    saved.write_text(json.dumps(legacy))
    old = ImageEncoder.load(str(tmp_path / "new"), device=torch.device("cpu"))
    assert old.model.activation == "swish"  # type: ignore[union-attr]
    assert old.fingerprint() != encoder.fingerprint()  # cached swish embeddings are never reused for ReLU6
    wrong = _batch_norm_shift(old, pictures)
    assert right < 0.5 and wrong > 4 * right, (right, wrong)


def test_a_vision_moderation_model_keeps_nsfw_and_learns_the_users_head(
    rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    result = train_from_snapshot(
        rows=rows,
        heads=TOBACCO,
        out_dir=tmp_path / "artifact",
        options=TrainOptions(strategy="head", max_epochs=40, seed=1),
        base_model="vision-moderation",
    )
    heads = {head.spec.name for head in result.artifact.model.heads}
    assert heads == {"tobacco", "nsfw"}
    assert result.metrics["training"]["strategy"] == "head"
    assert result.metrics["heads"]["tobacco"]["macro"]["balanced_accuracy"] >= 0.9
    export = result.artifact.config["onnx"]
    assert export["kind"] == "image"
    # The backbone is also quantised to int8, calibrated on the training pictures; it serves because it scores
    # as fp32 does on the validation rows (it would lose to fp32 if it dropped half a point).
    assert (export["selected"], export["drop"]) == ("int8", 0.0) and export["rows"] > 0, export
    assert (result.artifact.path / export["int8"]).is_file()

    onnx = Predictor.load(result.artifact, runtime="onnx")
    fp32 = Predictor.load(result.artifact, runtime="onnx", precision="fp32")
    torch_predictor = Predictor.load(result.artifact, runtime="torch")
    assert (onnx.runtime_name, torch_predictor.runtime_name, onnx.input_kind) == ("onnx", "torch", "image")
    # The backbone's worker threads sleep between loops rather than spin (1.5x the images/s on a loaded box).
    options = onnx.runtime.session.get_session_options()  # type: ignore[union-attr]
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    tests = [row for row in rows if row["split"] == "test"]
    answers = onnx.predict([row["input"] for row in tests])
    for row, answer in zip(tests, answers, strict=True):
        assert answer["tobacco"]["label"] == row["labels"]["tobacco"][0]
        assert answer["nsfw"]["label"] == "sfw" and not answer["nsfw"]["flagged"]
    keys = [row["input"] for row in tests]
    by_torch = torch_predictor.probabilities(keys)
    assert np.abs(by_torch["tobacco"] - fp32.probabilities(keys)["tobacco"]).max() < 1e-3
    assert np.abs(by_torch["tobacco"] - onnx.probabilities(keys)["tobacco"]).max() < 0.15
    # int8 embeddings of pictures it was not calibrated on stay close to fp32's.
    int8_vectors = onnx.runtime.embeddings(keys)  # type: ignore[union-attr]
    fp32_vectors = fp32.runtime.embeddings(keys)  # type: ignore[union-attr]
    assert np.sum(int8_vectors * fp32_vectors, axis=1).min() > 0.9


# Small and quick on a CPU: 24 pictures (16 fit, 2 validation, 6 test rows), batches of 8, 2 epochs.
FULL = {"max_epochs": 2, "batch_size": 8, "seed": 1}


@pytest.fixture(scope="module")
def small_rows() -> list[dict[str, Any]]:
    return image_rows(24)


@pytest.fixture(scope="module")
def fine_tuned(
    small_rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[TrainResult, EmbeddingCache]:
    """`full` on vision-moderation, and the cache its final evaluation put the test rows' embeddings in."""
    cache = EmbeddingCache()
    reported: list[EpochProgress] = []
    result = train_from_snapshot(
        rows=small_rows,
        heads=TOBACCO,
        out_dir=tmp_path_factory.mktemp("full") / "artifact",
        options=TrainOptions(strategy="full", **FULL),  # type: ignore[arg-type]
        base_model="vision-moderation",
        cache=cache,
        on_progress=reported.append,
    )
    assert reported == result.history  # each epoch was reported as it ended
    return result, cache


def test_augmentation_crops_and_flips_each_image_on_its_own() -> None:
    """Left half red, right half blue: a flipped crop has its blue on the left; values stay in range."""
    image = torch.zeros(3, 32, 32)
    image[0, :, :16], image[2, :, 16:] = 1.0, 1.0
    batch = image.expand(64, 3, 32, 32).contiguous()
    out = augment(batch, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    assert out.min() >= 0.0 and out.max() <= 1.0
    flipped = out[:, 2, :, :8].mean(dim=(1, 2)) > out[:, 0, :, :8].mean(dim=(1, 2))
    assert 16 <= int(flipped.sum()) <= 48  # about half
    assert not torch.equal(out[0], out[1])  # each image gets its own crop
    again = augment(batch, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # a seed repeats it


def test_a_cancelled_full_run_stops_before_its_first_step(
    small_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    with pytest.raises(TrainingCancelled):
        train_from_snapshot(
            rows=small_rows,
            heads=TOBACCO,
            out_dir=tmp_path / "artifact",
            options=TrainOptions(strategy="full", **FULL),  # type: ignore[arg-type]
            base_model="efficientnet-lite0",
            should_cancel=lambda: True,
        )


@pytest.mark.slow
def test_full_fine_tunes_the_backbone_and_the_artifact_serves_the_fine_tuned_weights(
    fine_tuned: tuple[TrainResult, EmbeddingCache], small_rows: list[dict[str, Any]]
) -> None:
    result, cache = fine_tuned
    assert result.selected == "full"
    assert [progress.candidate for progress in result.history] == ["full", "full"]
    assert result.artifact.config["encoder"]["fine_tuned"] is True
    assert result.metrics["heads"]["tobacco"]["macro"]["balanced_accuracy"] >= 0.8
    assert {head.spec.name for head in result.artifact.model.heads} == {"tobacco", "nsfw"}

    encoder_path = result.artifact.encoder_path
    assert encoder_path is not None
    saved = ImageEncoder.load(str(encoder_path), device=torch.device("cpu"))
    base = ImageEncoder.load("vision-moderation", device=torch.device("cpu"))
    assert saved.fine_tuned and not base.fine_tuned
    assert '"fine_tuned": true' in (encoder_path / IMAGE_ENCODER_FILE).read_text()
    changed = [
        name
        for name, tensor in saved.model.state_dict().items()
        if tensor.is_floating_point() and not torch.equal(tensor, base.model.state_dict()[name])
    ]
    assert len(changed) > 50  # convolutions throughout the backbone moved

    tests = [row["input"] for row in small_rows if row["split"] == "test"]
    # The final evaluation embedded the test rows with the in-process encoder, under its weights' fingerprint:
    # the reloaded backbone has the same fingerprint, so the same weights, bit for bit.
    in_process = cache.lookup(f"{saved.fingerprint()}:image", tests)
    assert len(in_process) == len(tests)
    embeddings = np.stack([in_process[key] for key in tests])
    assert np.abs(embeddings - base.embed(tests)).max() > 1e-3  # not the base's embeddings
    expected = softmax(result.artifact.model.encoder_logits(embeddings)["tobacco"])

    # The fp32 export is the fine-tuned backbone; the int8 one (quantised from it) stays close.
    onnx = Predictor.load(result.artifact, runtime="onnx", precision="fp32")
    torch_predictor = Predictor.load(result.artifact, runtime="torch")
    assert (onnx.runtime_name, torch_predictor.runtime_name) == ("onnx", "torch")
    assert np.abs(torch_predictor.probabilities(tests)["tobacco"] - expected).max() < 1e-5
    by_onnx = onnx.probabilities(tests)
    assert np.abs(by_onnx["tobacco"] - expected).max() < 1e-3
    served = Predictor.load(result.artifact, runtime="onnx").probabilities(tests)
    assert np.abs(served["tobacco"] - expected).max() < 0.05

    # The built-in nsfw head reads Open-NSFW, not the backbone: it answers exactly as the base's does.
    nsfw = np.exp(OpenNsfw().log_probabilities([image_bytes(key) for key in tests]))
    assert np.abs(by_onnx["nsfw"] - nsfw).max() < 1e-5
    for answer in onnx.predict(tests):
        assert answer["nsfw"]["label"] == "sfw" and not answer["nsfw"]["flagged"]


def colour_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same pictures labelled by a new head, `colour`."""
    return [
        {**row, "labels": {"colour": ["red" if row["labels"]["tobacco"] == ["yes_tobacco"] else "blue"]}}
        for row in rows
    ]


@pytest.mark.slow
def test_full_is_refused_while_a_kept_parent_head_reads_the_backbone_and_auto_skips_it_saying_why(
    fine_tuned: tuple[TrainResult, EmbeddingCache], small_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    parent, cache = fine_tuned
    colour = [HeadSpec(name="colour", labels=("blue", "red"))]
    with pytest.raises(MLError, match=r"image backbone that the kept heads \['tobacco'\] rely on") as refused:
        train_from_snapshot(
            rows=colour_rows(small_rows),
            heads=colour,
            out_dir=tmp_path / "full",
            options=TrainOptions(strategy="full", **FULL),  # type: ignore[arg-type]
            parent=parent.artifact,
        )
    assert "Include those heads in the training data, or use the 'head' or 'auto' strategy" in str(
        refused.value
    )

    result = train_from_snapshot(
        rows=colour_rows(small_rows),
        heads=colour,
        out_dir=tmp_path / "auto",
        options=TrainOptions(strategy="auto", export_onnx=False, **FULL),  # type: ignore[arg-type]
        parent=parent.artifact,
        cache=cache,
    )
    skipped = {c["name"]: c["skipped"] for c in result.candidates if "skipped" in c}
    assert skipped == {"full": "the parent's kept heads need its encoder unchanged"}
    assert result.selected == "head"
    assert {head.spec.name for head in result.artifact.model.heads} == {"colour", "tobacco", "nsfw"}
    # The kept heads still read the parent's fine-tuned backbone.
    assert result.artifact.config["encoder"]["fine_tuned"] is True


@pytest.mark.slow
def test_auto_on_an_image_base_weighs_head_against_full_and_keeps_the_better(
    small_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    result = train_from_snapshot(
        rows=small_rows,
        heads=TOBACCO,
        out_dir=tmp_path / "artifact",
        options=TrainOptions(strategy="auto", export_onnx=False, **{**FULL, "max_epochs": 1}),  # type: ignore[arg-type]
        base_model="efficientnet-lite0",
    )
    training = result.metrics["training"]
    assert training["strategy"] == "auto"
    assert (training["plan"]["head"], training["plan"]["full_epochs"]) == (True, 1)
    ran = {c["name"]: c for c in result.candidates}
    assert list(ran) == ["head", "full"]  # no TF-IDF candidates for images
    head, full = ran["head"]["selection_metric"], ran["full"]["selection_metric"]
    assert result.selected == ("full" if full > head else "head")  # a tie keeps the simpler `head`
    assert result.selection_metric == pytest.approx(max(head, full), abs=1e-6)
    assert result.artifact.config["encoder"]["fine_tuned"] is (result.selected == "full")
    encoder_path = result.artifact.encoder_path
    assert encoder_path is not None
    saved = ImageEncoder.load(str(encoder_path), device=torch.device("cpu")).fingerprint()
    base = ImageEncoder.load("efficientnet-lite0", device=torch.device("cpu")).fingerprint()
    # When `head` is kept, the backbone's weights are put back as they were.
    assert (saved == base) is (result.selected == "head")


def test_auto_on_an_image_base_records_why_full_did_not_run(
    small_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    result = train_from_snapshot(
        rows=small_rows,
        heads=TOBACCO,
        out_dir=tmp_path / "artifact",
        options=TrainOptions(strategy="auto", time_budget_minutes=0.001 / 60, export_onnx=False, seed=1),
        base_model="efficientnet-lite0",
    )
    assert result.selected == "head"
    (full,) = [c for c in result.candidates if c["name"] == "full"]
    assert full["skipped"] == "the time budget was spent loading the backbone and measuring its speed"
    plan = result.metrics["training"]["plan"]
    # Nothing fits such a budget; an image model has no cheaper candidate than `head`, which runs and says so.
    assert plan["head"] is True and "head runs although" in plan["over_budget"]
    assert [c["name"] for c in result.candidates if "skipped" not in c] == ["head"]


def test_the_console_estimate_for_an_image_model_has_no_tfidf_and_runs_head_when_nothing_fits() -> None:
    small = {
        step["name"]: step for step in auto_plan(rows=1000, time_budget_minutes=20, max_epochs=20, image=True)
    }
    assert list(small) == ["head", "full"]
    assert small["head"]["runs"] and small["full"]["runs"] and small["full"]["estimated_seconds"] > 0
    tight = {
        step["name"]: step for step in auto_plan(rows=1000, time_budget_minutes=1, max_epochs=20, image=True)
    }
    assert tight["head"]["runs"] and "an image model has no cheaper candidate" in tight["head"]["note"]
    assert not tight["full"]["runs"] and "does not fit" in tight["full"]["note"]
