"""Annotation benchmark: the `similarity` labeler's speed and its agreement with people.

    python benchmarks/bench_annotation.py [--quick]

1. Speed, on 2 CPU threads: labels per second of `SimilarityLabeler.rank` over OLID tweets in batches (as a
   job runs it), beside the in-process ceiling (the encoder's `embed` alone on the same texts: ranking adds
   a matrix product and a softmax) and the naive alternative (one text per call). Aim: at least 200/s.
2. Agreement with the human labels of OLID subtask A (offensive or not), the two labels described in one
   sentence each, beside the majority-class baseline (every tweet "NOT"): accuracy, macro F1, Cohen's kappa.

The data is read from ../shared/data (beside the checkout); without it the benchmark says so and stops.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score  # noqa: E402

from arbiter.llm import LabelChoice  # noqa: E402
from arbiter.llm.similarity import MAX_TOKENS, SimilarityLabeler  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
OLID_FILE = REPO_ROOT.parent / "shared" / "data" / "olid-training-v1.0.tsv"
THREADS = 2

# One sentence each, as a person would write them in the console.
LABELS = [
    LabelChoice(
        name="OFF",
        description="Offensive: the post insults, threatens or swears at someone, or uses profane or abusive language.",
    ),
    LabelChoice(
        name="NOT",
        description="Not offensive: the post is an ordinary opinion, question or remark without insults, threats or swearing.",
    ),
]


def olid_subtask_a() -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for line in OLID_FILE.read_bytes().decode("utf-8", "replace").split("\n")[1:]:
        parts = line.rstrip("\r").split("\t")
        if len(parts) == 5 and parts[2] in ("OFF", "NOT"):
            texts.append(parts[1])
            labels.append(parts[2])
    return texts, labels


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:8.1f}/s"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rows (a smoke run)")
    args = parser.parse_args()
    if not OLID_FILE.is_file():
        print("skipped: OLID (olid-training-v1.0.tsv) is not in ../shared/data beside this checkout")
        return 0
    torch.set_num_threads(THREADS)
    texts, truth = olid_subtask_a()
    speed_rows = 500 if args.quick else 2000
    naive_rows = 50 if args.quick else 200
    agreement_rows = 2000 if args.quick else len(texts)

    labeler = SimilarityLabeler(LABELS)
    labeler.rank(texts[:64])  # warm the encoder
    sample = texts[:speed_rows]

    started = time.perf_counter()
    labeler.encoder.embed(sample, max_tokens=MAX_TOKENS)
    ceiling = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, len(sample), 256):  # the batch a job labels at once
        labeler.rank(sample[start : start + 256])
    batched = time.perf_counter() - started
    started = time.perf_counter()
    for text in sample[:naive_rows]:
        labeler.rank([text])
    naive = time.perf_counter() - started

    print(f"speed on {THREADS} CPU threads ({torch.get_num_threads()} in use), OLID tweets:")
    print(f"  encoder embed alone (ceiling)   {rate(len(sample), ceiling)}  ({len(sample)} texts)")
    print(
        f"  similarity labeler, batches     {rate(len(sample), batched)}  "
        f"{(len(sample) / batched) / (len(sample) / ceiling):.2f}x of the ceiling; aim >= 200/s: "
        f"{'met' if len(sample) / batched >= 200 else 'NOT met'}"
    )
    print(
        f"  one text per call (naive)       {rate(naive_rows, naive)}  "
        f"batches are {(len(sample) / batched) / (naive_rows / naive):.1f}x faster"
    )

    rows, wanted = texts[:agreement_rows], truth[:agreement_rows]
    started = time.perf_counter()
    predicted = [ranked.labels[0] for ranked in labeler.rank(rows)]
    seconds = time.perf_counter() - started
    majority = max(set(wanted), key=wanted.count)
    baseline = [majority] * len(wanted)
    print(
        f"\nagreement with OLID subtask A, {len(rows)} tweets ({wanted.count('OFF')} OFF), labeled in {seconds:.0f} s:"
    )
    print(f"  {'labeler':34} {'accuracy':>9} {'macro F1':>9} {'kappa':>7}")
    for name, answers in (
        ("similarity (two one-sentence labels)", predicted),
        (f"majority class ({majority})", baseline),
    ):
        print(
            f"  {name:34} {accuracy_score(wanted, answers):9.3f} "
            f"{f1_score(wanted, answers, average='macro', zero_division=0):9.3f} "
            f"{cohen_kappa_score(wanted, answers):7.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
