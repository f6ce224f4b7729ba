"""A small synthetic moderation snapshot for the ML tests.

Two heads: `toxicity` (multi-class safe/toxic) and `topics` (multi-label sports/politics, null on every
7th row). The words that decide each label are distinct, so a good model separates them.
"""

from __future__ import annotations

import random
from typing import Any

from arbiter.ml import HeadSpec

HEADS = [
    HeadSpec(name="toxicity", labels=("safe", "toxic")),
    HeadSpec(name="topics", labels=("sports", "politics"), multi_label=True),
]

_TOXIC = ["idiot", "stupid moron", "pathetic loser", "disgusting trash", "worthless clown", "brainless fool"]
_SAFE = ["lovely", "so kind", "wonderful", "really great", "brilliant", "a delight"]
_SPORTS = ["the football match", "that last goal", "our hockey team", "the tennis final"]
_POLITICS = ["the election", "the senate vote", "the new tax policy", "parliament"]
_NEUTRAL = ["the weather", "my lunch", "this song", "the morning train"]


def synthetic_rows(count: int = 200, *, seed: int = 0) -> list[dict[str, Any]]:
    """Snapshot rows: every 5th row is a test row, every 7th has `topics: null` (does not apply)."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        toxic = rng.random() < 0.4
        topics = [topic for topic, share in (("sports", 0.45), ("politics", 0.35)) if rng.random() < share]
        subjects = [rng.choice(_SPORTS)] * ("sports" in topics) + [rng.choice(_POLITICS)] * (
            "politics" in topics
        )
        subject = " and ".join(subjects) or rng.choice(_NEUTRAL)
        text = f"you are a {rng.choice(_TOXIC)}, {subject}" if toxic else f"{subject} is {rng.choice(_SAFE)}"
        rows.append(
            {
                "row": i,
                "input": text,
                "labels": {
                    "toxicity": ["toxic" if toxic else "safe"],
                    "topics": None if i % 7 == 3 else topics,
                },
                "split": "test" if i % 5 == 0 else "train",
            }
        )
    return rows
