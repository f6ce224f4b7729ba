"""The similarity labeler embeds with an int8 ONNX export of the base encoder: it must choose the labels the torch
encoder chooses, with scores close to its scores, export once per model and version, and fall back to torch."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from arbiter.llm import LabelChoice, similarity  # noqa: E402
from arbiter.llm.similarity import MAX_TOKENS, SimilarityLabeler, similarity_encoder  # noqa: E402
from arbiter.ml import onnx_encoder  # noqa: E402
from arbiter.ml.encoders import DEFAULT_BASE_MODEL, Encoder  # noqa: E402
from arbiter.ml.onnx_encoder import OnnxEncoder, export_folder  # noqa: E402

TEXTS = [
    "you are an idiot and everyone knows it",
    "shut up, you pathetic loser",
    "I will find you and make you regret this",
    "what a stupid, worthless comment",
    "go to hell, moron",
    "thanks so much for your help yesterday!",
    "have a lovely weekend with your family",
    "the meeting is moved to 3pm on Thursday",
    "could you send me the report when you have a minute?",
    "I respectfully disagree with the referee's decision",
    "the striker scored twice in the second half and the crowd went wild",
    "the team lost the championship final on penalties",
    "the marathon starts at 8am near the stadium",
    "stocks fell sharply after the central bank raised interest rates",
    "the company reported record quarterly revenue and profit",
    "my mortgage payment went up again this month",
    "simmer the onions in butter until golden, then add the garlic",
    "this lasagna recipe needs fresh basil and ricotta",
    "bake the bread at 220 degrees for forty minutes",
    "heavy rain and strong winds are expected tomorrow",
    "it will be sunny and warm all week",
    "snow closed the mountain roads overnight",
    "the new phone has a faster chip and a better camera",
    "install the update to fix the bug in the app",
    "the laptop keeps crashing when I open the browser",
    "absolutely loved this film, the acting was superb",
    "worst purchase ever, it broke after two days",
    "the hotel room was clean and the staff were friendly",
    "terrible service, we waited an hour for cold food",
    "this is fine I guess",
    "LOL 😂😂 that's hilarious",
    "ok",
    "c'est vraiment nul, je déteste ce produit",
    "das Essen war ausgezeichnet, vielen Dank",
    "@user @user you people are a disgrace #MAGA",
    "RT this if you agree!!! 🔥🔥",
    "The quarterly earnings call is scheduled for next Tuesday; analysts expect growth in cloud services "
    "and a slowdown in hardware sales, while the CEO is expected to comment on the layoffs announced in spring.",
    "why does my code throw a null pointer exception?",
    "the referee is a blind idiot",
    "great game last night, well played everyone",
]

SCHEMAS = {
    "toxicity": [
        LabelChoice("toxic", "insults, threats, name-calling or hostility towards a person"),
        LabelChoice("safe", "friendly, polite or neutral everyday conversation"),
    ],
    "topic": [
        LabelChoice("sports", "games, teams, players, matches and competitions"),
        LabelChoice("finance", "money, markets, companies, banks and the economy"),
        LabelChoice("cooking", "recipes, food, ingredients and restaurants"),
        LabelChoice("weather", "rain, sun, snow, temperature and forecasts"),
        LabelChoice("technology", "phones, computers, software and apps"),
    ],
    "sentiment": [
        LabelChoice("positive", "the writer is pleased, happy or satisfied"),
        LabelChoice("negative", "the writer is angry, disappointed or unhappy"),
    ],
}


@pytest.fixture(scope="module")
def torch_encoder() -> Encoder:
    return Encoder.load(DEFAULT_BASE_MODEL, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def onnx() -> OnnxEncoder:
    encoder = similarity_encoder()
    assert isinstance(encoder, OnnxEncoder), "the default similarity encoder is the ONNX export"
    return encoder


def test_the_export_is_int8_and_cached_under_arbiter_home(onnx: OnnxEncoder) -> None:
    from arbiter.config.typed_settings import arbiter_settings

    assert onnx.path.name == "model.int8.onnx"
    assert onnx.path.parent == export_folder(DEFAULT_BASE_MODEL)
    assert onnx.path.is_relative_to(arbiter_settings().core.home / "cache" / "onnx")
    assert onnx.path.stat().st_size < 40_000_000  # int8 weights: about a quarter of the 90 MB in fp32
    assert similarity_encoder() is onnx, "loaded once per process"


def test_embeddings_stay_close_to_the_torch_encoder(onnx: OnnxEncoder, torch_encoder: Encoder) -> None:
    exact = torch_encoder.embed(TEXTS, max_tokens=MAX_TOKENS, bf16=False)
    quantised = onnx.embed(TEXTS, max_tokens=MAX_TOKENS)
    assert quantised.shape == exact.shape and quantised.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(quantised, axis=1), 1.0, atol=1e-4)
    cosines = (exact * quantised).sum(axis=1)
    assert cosines.min() > 0.95 and cosines.mean() > 0.98, cosines
    # The fp32 graph (label descriptions) is the torch encoder's arithmetic.
    np.testing.assert_allclose(onnx.embed_exact(TEXTS, max_tokens=MAX_TOKENS), exact, atol=1e-4)


def test_labels_and_scores_match_the_torch_labeler(onnx: OnnxEncoder, torch_encoder: Encoder) -> None:
    decided = same_decided = same_all = total = 0
    gaps: list[float] = []
    for labels in SCHEMAS.values():
        reference = SimilarityLabeler(labels, encoder=torch_encoder).rank(TEXTS)
        ranked = SimilarityLabeler(labels, encoder=onnx).rank(TEXTS)
        for a, b in zip(ranked, reference, strict=True):
            total += 1
            same_all += a.labels == b.labels
            # A decision, not a coin toss: torch's label leads the runner-up by 0.15 or more.
            runner_up = sorted(b.scores.values())[-2]
            if b.score - runner_up >= 0.15:
                decided += 1
                same_decided += a.labels == b.labels
            gaps.extend(abs(a.scores[name] - b.scores[name]) for name in a.scores)
    assert decided >= 0.5 * total, "most texts are clear cases"
    assert same_decided >= 0.95 * decided, f"{same_decided}/{decided} clear cases get torch's label"
    # Int8 noise (about 0.01 cosine) only flips near-ties, where a softmax at 0.05 is close to even.
    assert same_all >= 0.85 * total, f"{same_all}/{total} texts get torch's label"
    # Calibrated alike: the probabilities people see move little.
    assert np.mean(gaps) < 0.05 and max(gaps) < 0.2, (np.mean(gaps), max(gaps))


def test_repeated_texts_and_concurrent_callers_get_the_same_embeddings(onnx: OnnxEncoder) -> None:
    alone = onnx.embed(TEXTS, max_tokens=MAX_TOKENS)
    doubled = onnx.embed(TEXTS + TEXTS[::-1], max_tokens=MAX_TOKENS)
    np.testing.assert_allclose(doubled, np.concatenate([alone, alone[::-1]]), atol=1e-6)
    assert onnx.embed([], max_tokens=MAX_TOKENS).shape == (0, alone.shape[1])

    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(n: int, texts: Sequence[str]) -> None:
        try:
            results[n] = onnx.embed(texts, max_tokens=MAX_TOKENS - n)  # each caller truncates differently
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n, TEXTS[n:] + TEXTS[:n])) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for n in range(4):
        np.testing.assert_allclose(results[n], np.roll(alone, -n, axis=0), atol=1e-5)


def test_a_missing_export_is_built_once_then_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, onnx: OnnxEncoder
) -> None:
    built = OnnxEncoder.load(DEFAULT_BASE_MODEL, cache_dir=tmp_path)
    folder = export_folder(DEFAULT_BASE_MODEL, cache_dir=tmp_path)
    assert built.path == folder / "model.int8.onnx"
    assert (folder / "model.onnx").is_file(), "the fp32 graph is kept for label descriptions"
    assert [path.name for path in tmp_path.iterdir()] == [folder.name], "no partial folder is left behind"

    def no_build(*args: object) -> None:
        raise AssertionError("the cached export was built again")

    monkeypatch.setattr(onnx_encoder, "_build", no_build)
    again = OnnxEncoder.load(DEFAULT_BASE_MODEL, cache_dir=tmp_path)
    np.testing.assert_allclose(
        again.embed(TEXTS, max_tokens=MAX_TOKENS), onnx.embed(TEXTS, max_tokens=MAX_TOKENS), atol=1e-6
    )


def test_a_new_version_or_changed_model_files_get_a_fresh_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = export_folder(DEFAULT_BASE_MODEL, cache_dir=tmp_path)
    assert folder == export_folder(DEFAULT_BASE_MODEL, cache_dir=tmp_path), "the key is stable"
    assert folder.name.startswith(f"{DEFAULT_BASE_MODEL}-v{onnx_encoder.EXPORT_VERSION}-")

    monkeypatch.setattr(onnx_encoder, "EXPORT_VERSION", onnx_encoder.EXPORT_VERSION + 1)
    assert export_folder(DEFAULT_BASE_MODEL, cache_dir=tmp_path) != folder
    monkeypatch.undo()

    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    before = export_folder(str(model), cache_dir=tmp_path)
    (model / "config.json").write_text('{"changed": true}')
    assert export_folder(str(model), cache_dir=tmp_path) != before


def test_a_model_that_cannot_be_exported_is_embedded_with_torch(
    monkeypatch: pytest.MonkeyPatch, torch_encoder: Encoder, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> OnnxEncoder:
        raise RuntimeError("cannot trace this model")

    monkeypatch.setattr(OnnxEncoder, "load", classmethod(refuse))
    monkeypatch.setattr(similarity, "_encoders", {})
    with pytest.raises(RuntimeError):
        similarity_encoder(runtime="onnx")
    encoder = similarity_encoder()
    assert isinstance(encoder, Encoder)
    assert "embedding with torch" in caplog.text
    assert similarity_encoder(runtime="torch") is encoder, "one torch encoder per process"
    labeler = SimilarityLabeler(SCHEMAS["toxicity"])
    assert labeler.encoder is encoder
    expected = SimilarityLabeler(SCHEMAS["toxicity"], encoder=torch_encoder).cosines(TEXTS)
    np.testing.assert_allclose(labeler.cosines(TEXTS), expected, atol=1e-5)
