"""Training benchmarks for `arbiter.ml`: speed of `head` and `full`, quality of `auto` against a baseline.

    python benchmarks/bench_training.py [--quick]

1. `head` on 10,000 training rows (OLID tweets from ../shared/data when present, else generated texts):
   wall time of `train_from_snapshot`, embeddings included (no warm cache). Aim: under 60 s on a 2-core box.
2. `full` fine-tuning throughput on CPU (training samples per second) over a short run.
3. `auto` against a TF-IDF + logistic regression baseline, macro-F1 per head on the test rows of a seeded
   80/20 split: OLID (three heads, `NULL` where a head does not apply) and the sentiment sentences
   (one `sentiment` head). Aim: `auto` never below the baseline.

`auto` runs with `selection_rule="f1"` and a 300 s budget (90 s with --quick); it reuses the embeddings
that the `head` benchmark computed (its quality is measured here, not its speed).

The baseline is a common strong one: word 1-2-gram and character 2-5-gram TF-IDF, logistic regression
with balanced class weights, one per head, trained on all training rows where the head applies.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from arbiter.ml import EmbeddingCache, HeadSpec, TrainOptions, train_from_snapshot  # noqa: E402
from arbiter.ml.metrics import head_evaluate  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
OLID_FILE = SHARED_DATA / "olid-training-v1.0.tsv"
SENTIMENT_FILES = [
    SHARED_DATA / f"sentiment-{name}_labelled.txt" for name in ("amazon_cells", "imdb", "yelp")
]

OLID_HEADS = [
    HeadSpec(name="subtask_a", labels=("NOT", "OFF")),
    HeadSpec(name="subtask_b", labels=("TIN", "UNT")),
    HeadSpec(name="subtask_c", labels=("IND", "GRP", "OTH")),
]
SENTIMENT_HEADS = [HeadSpec(name="sentiment", labels=("0", "1"))]
GENERATED_HEADS = [HeadSpec(name="toxicity", labels=("safe", "toxic"))]


def _split(rows: list[dict[str, Any]], *, seed: int, test_share: float = 0.2) -> list[dict[str, Any]]:
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    cut = int(len(shuffled) * (1 - test_share))
    return [{**row, "split": "train" if i < cut else "test"} for i, row in enumerate(shuffled)]


def olid_rows() -> list[dict[str, Any]]:
    lines = OLID_FILE.read_bytes().decode("utf-8", "replace").split("\n")[1:]
    rows = []
    for line in lines:
        parts = line.rstrip("\r").split("\t")
        if len(parts) != 5:
            continue
        labels = {
            head: None if value == "NULL" else [value]
            for head, value in zip(("subtask_a", "subtask_b", "subtask_c"), parts[2:], strict=True)
        }
        rows.append({"row": parts[0], "input": parts[1], "labels": labels})
    return rows


def sentiment_rows() -> list[dict[str, Any]]:
    rows = []
    for path in SENTIMENT_FILES:
        # Split on "\n" only: the IMDB file has other Unicode line-break characters inside sentences.
        for line in path.read_bytes().decode("utf-8", "replace").split("\n"):
            text, _, label = line.rstrip("\r").rpartition("\t")
            if label.strip() in {"0", "1"} and text.strip():
                rows.append(
                    {
                        "row": f"{path.stem}:{len(rows)}",
                        "input": text.strip(),
                        "labels": {"sentiment": [label.strip()]},
                    }
                )
    return rows


def generated_rows(count: int, *, seed: int = 0) -> list[dict[str, Any]]:
    """Short texts with a toxicity label, for machines without the shared data."""
    rng = random.Random(seed)
    subjects = ["the match", "your post", "this policy", "the movie", "our team", "that song", "the meeting"]
    toxic = ["is garbage", "you idiot", "what a moron", "shut up loser", "pathetic trash", "go away clown"]
    safe = ["was great", "thanks a lot", "is lovely", "made my day", "is interesting", "looks fine to me"]
    rows = []
    for i in range(count):
        is_toxic = rng.random() < 0.3
        words = " ".join(rng.choice(subjects) for _ in range(rng.randint(1, 3)))
        text = f"{words} {rng.choice(toxic if is_toxic else safe)} #{rng.randint(0, 999)}"
        rows.append({"row": i, "input": text, "labels": {"toxicity": ["toxic" if is_toxic else "safe"]}})
    return rows


def baseline_macro_f1(rows: list[dict[str, Any]], heads: list[HeadSpec]) -> dict[str, float]:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from arbiter.ml.data import rows_parse

    parsed = rows_parse(rows=rows, heads=heads)
    word = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    char = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True)
    x_train = hstack([word.fit_transform(parsed.train.texts), char.fit_transform(parsed.train.texts)]).tocsr()
    x_test = hstack([word.transform(parsed.test.texts), char.transform(parsed.test.texts)]).tocsr()
    scores = {}
    for spec in heads:
        train, test = parsed.train.heads[spec.name], parsed.test.heads[spec.name]
        model = LogisticRegression(max_iter=1000, class_weight="balanced")
        model.fit(x_train[train.mask], train.class_ids[train.mask])
        probabilities = np.zeros((len(parsed.test), len(spec.labels)))
        probabilities[:, model.classes_] = model.predict_proba(x_test)
        scores[spec.name] = head_evaluate(probabilities=probabilities, labels=test)["macro"]["f1"]
    return scores


def bench_head(
    rows: list[dict[str, Any]], heads: list[HeadSpec], train_count: int, cache: EmbeddingCache
) -> dict[str, Any]:
    sample = _split(rows, seed=0)
    train = [row for row in sample if row["split"] == "train"][:train_count]
    test = [row for row in sample if row["split"] == "test"][: max(1, train_count // 4)]
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = train_from_snapshot(
            rows=train + test,
            heads=heads,
            options=TrainOptions(strategy="head", export_onnx=False),
            out_dir=Path(folder) / "artifact",
            cache=cache,
        )
        seconds = time.perf_counter() - started
    return {
        "rows": len(train),
        "test_rows": len(test),
        "seconds": seconds,
        "epochs": len(result.history),
        "macro_f1": result.metrics["macro"]["f1"],
    }


def bench_full(rows: list[dict[str, Any]], heads: list[HeadSpec], count: int) -> dict[str, Any]:
    sample = [{**row, "split": "train"} for row in _split(rows, seed=1)[:count]]
    with tempfile.TemporaryDirectory() as folder:
        result = train_from_snapshot(
            rows=sample,
            heads=heads,
            options=TrainOptions(
                strategy="full", max_epochs=1, batch_size=16, max_tokens=64, export_onnx=False
            ),
            out_dir=Path(folder) / "artifact",
        )
    trained_rows = result.metrics["training"]["rows"]["train"]
    epoch_seconds = result.history[0].seconds
    return {"rows": trained_rows, "seconds": epoch_seconds, "samples_per_s": trained_rows / epoch_seconds}


def bench_auto(
    name: str, rows: list[dict[str, Any]], heads: list[HeadSpec], budget: float, cache: EmbeddingCache
) -> list[list[str]]:
    split = _split(rows, seed=42)
    started = time.perf_counter()
    baseline = baseline_macro_f1(split, heads)
    baseline_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = train_from_snapshot(
            rows=split,
            heads=heads,
            options=TrainOptions(
                strategy="auto", selection_rule="f1", time_budget_minutes=budget / 60, export_onnx=False
            ),
            out_dir=Path(folder) / "artifact",
            cache=cache,
        )
        auto_seconds = time.perf_counter() - started
    shares = next((c["encoder_share"] for c in result.candidates if c["name"] == "blend"), {})
    lines = []
    for spec in heads:
        auto = result.metrics["heads"][spec.name]["macro"]["f1"]
        lines.append(
            [
                name,
                spec.name,
                f"{baseline[spec.name]:.4f}",
                f"{auto:.4f}",
                f"{auto / baseline[spec.name]:.3f}",
                f"{shares.get(spec.name, '-')}",
            ]
        )
    tried = [(candidate["name"], candidate.get("selection_metric")) for candidate in result.candidates]
    print(
        f"  {name}: auto selected {result.selected!r} in {auto_seconds:.0f} s "
        f"(baseline {baseline_seconds:.0f} s); candidates: {tried}",
        flush=True,
    )
    return lines


def table(header: list[str], lines: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=True)]
    render = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [header, ["-" * width for width in widths], *lines]
    ]
    return "\n".join(render)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    have_data = OLID_FILE.is_file() and all(path.is_file() for path in SENTIMENT_FILES)
    head_rows = 2_000 if args.quick else 10_000
    full_rows = 64 if args.quick else 256
    budget = 90.0 if args.quick else 300.0
    cache = EmbeddingCache()
    print(
        f"data: {'OLID + sentiment from ../shared/data' if have_data else 'generated (no ../shared/data)'}; "
        f"cpus: {os.cpu_count()}",
        flush=True,
    )

    if have_data:
        speed_rows, speed_heads = olid_rows(), OLID_HEADS
    else:
        speed_rows, speed_heads = generated_rows(int(head_rows * 1.3)), GENERATED_HEADS
    head = bench_head(speed_rows, speed_heads, head_rows, cache)
    print(f"  head: {head}", flush=True)
    full = bench_full(speed_rows, speed_heads, full_rows)
    print(f"  full: {full}", flush=True)
    speed = table(
        ["benchmark", "rows", "seconds", "result", "aim"],
        [
            [
                "head (frozen encoder, embeddings included)",
                str(head["rows"]),
                f"{head['seconds']:.1f}",
                f"{head['epochs']} epochs, test macro-F1 {head['macro_f1']:.3f}",
                "< 60 s",
            ],
            [
                "full (fine-tune, CPU, max_tokens 64)",
                str(full["rows"]),
                f"{full['seconds']:.1f}",
                f"{full['samples_per_s']:.1f} samples/s",
                "-",
            ],
        ],
    )

    quality_lines: list[list[str]] = []
    if have_data:
        olid = olid_rows()
        if args.quick:
            olid = random.Random(0).sample(olid, 3_000)
        quality_lines += bench_auto("OLID", olid, OLID_HEADS, budget, cache)
        quality_lines += bench_auto("sentiment", sentiment_rows(), SENTIMENT_HEADS, budget, cache)
    else:
        quality_lines += bench_auto("generated", generated_rows(3_000), GENERATED_HEADS, budget, cache)

    print()
    print(speed)
    print()
    print(
        table(["dataset", "head", "baseline F1", "auto F1", "auto/baseline", "encoder share"], quality_lines)
    )
    worse = [line for line in quality_lines if float(line[4]) < 1.0]
    print()
    print(
        "auto >= baseline on every head"
        if not worse
        else f"auto below baseline on: {[line[:2] for line in worse]}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
