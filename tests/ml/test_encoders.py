"""Base encoders: name resolution, embeddings as sentence-transformers makes them, the embedding cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from arbiter.ml import BaseModelError, EmbeddingCache, Encoder, encoder_resolve
from arbiter.ml.encoders import TokenIds, length_batches

TEXTS = ["the football match is lovely", "you are a stupid moron", "the football match is lovely", "ok"]


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("minilm-l6")


@pytest.mark.parametrize("name", ["minilm-l6", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_minilm_names_resolve_to_the_installed_copy(name: str) -> None:
    folder = Path(encoder_resolve(name))
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()


def test_other_names_are_hub_ids_or_folders() -> None:
    assert encoder_resolve("intfloat/e5-small-v2") == "intfloat/e5-small-v2"
    with pytest.raises(BaseModelError, match="could not be loaded"):
        Encoder.load("arbiter-tests/no-such-model")


def test_embeddings_match_sentence_transformers(encoder: Encoder) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(encoder_resolve("minilm-l6"), device="cpu").encode(TEXTS)
    embeddings = encoder.embed(TEXTS, max_tokens=128, bf16=False)

    assert embeddings.shape == (4, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings, reference, atol=1e-4)
    # bf16 autocast (used where the CPU has native bf16) stays within 1e-3 cosine of fp32.
    fast = encoder.embed(TEXTS, max_tokens=128, bf16=True)
    assert (fast * embeddings).sum(axis=1).min() > 0.999


def test_truncation_to_max_tokens_changes_long_texts_only(encoder: Encoder) -> None:
    long_text = "the football match is lovely " * 20
    full = encoder.embed([long_text, "ok"], max_tokens=128, bf16=False)
    short = encoder.embed([long_text, "ok"], max_tokens=8, bf16=False)
    assert not np.allclose(full[0], short[0], atol=1e-3)
    np.testing.assert_allclose(full[1], short[1], atol=1e-5)


def test_cache_on_disk_is_reused_by_a_new_process(encoder: Encoder, tmp_path: Path) -> None:
    first = encoder.embed(TEXTS, max_tokens=64, cache=EmbeddingCache(tmp_path))
    shards = list(tmp_path.rglob("*.safetensors"))
    assert len(shards) == 1

    reopened = EmbeddingCache(tmp_path)
    key = f"{encoder.fingerprint()}:64"
    assert set(reopened.lookup(key, TEXTS)) == set(TEXTS)
    again = encoder.embed(TEXTS, max_tokens=64, cache=reopened)
    np.testing.assert_array_equal(again, first)
    assert list(tmp_path.rglob("*.safetensors")) == shards  # nothing new was computed
    assert reopened.lookup(f"{encoder.fingerprint()}:128", TEXTS) == {}


def test_length_batches_cut_where_a_run_costs_less_than_the_padding_it_saves() -> None:
    ids = [[0] * n for n in (34, 26, 26, 30, 26, 34)]

    def shapes(batches: list[list[int]]) -> list[list[int]]:
        return [[len(ids[i]) for i in batch] for batch in batches]

    # Fixed size: shortest first, padded to the longest of each batch.
    assert shapes(list(length_batches(ids, batch_size=4))) == [[26, 26, 26, 30], [34, 34]]
    # A cheap run: equal lengths run together (3 x 26, then 30 alone, then 2 x 34), each text exactly once.
    cheap = list(length_batches(ids, batch_size=32, run_cost_tokens=3))
    assert shapes(cheap) == [[26, 26, 26], [30], [34, 34]]
    assert sorted(i for batch in cheap for i in batch) == list(range(len(ids)))
    # A dear run: one padded batch beats three runs.
    assert shapes(list(length_batches(ids, batch_size=32, run_cost_tokens=100))) == [[26, 26, 26, 30, 34, 34]]
    # The batch size still caps a batch.
    assert max(map(len, length_batches(ids, batch_size=2, run_cost_tokens=100))) == 2


def test_token_ids_are_the_wrappers_ids_and_padding_without_its_lock_or_python(encoder: Encoder) -> None:
    """The serving tokenizer (the Rust backend, its truncation set once) gives exactly the ids and padded arrays
    the transformers wrapper gives, long texts truncated the same way, from several threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    tokens = TokenIds(encoder.tokenizer)
    texts = [
        "",
        "ok",
        "You are a 🤡, go away!!!",
        "Ünïcödé façade naïve café " * 3,
        "a very long text " * 200,
        "   spaces   and\ttabs\nand lines  ",
    ]
    for max_tokens in (8, 128):
        expected = encoder.tokenizer(texts, truncation=True, max_length=max_tokens)["input_ids"]
        assert tokens.ids(texts, max_tokens=max_tokens) == expected
        assert max(len(row) for row in expected) == max_tokens  # the long text was cut
        padded = encoder.tokenizer.pad({"input_ids": expected}, return_tensors="np")
        input_ids, mask = tokens.pad(expected)
        assert input_ids.dtype == mask.dtype == np.int64
        assert (input_ids == padded["input_ids"]).all()
        assert (mask == padded["attention_mask"]).all()
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: tokens.ids(texts, max_tokens=8 + n % 3), range(60)))
    for n, answer in enumerate(answers):
        assert answer == encoder.tokenizer(texts, truncation=True, max_length=8 + n % 3)["input_ids"]
