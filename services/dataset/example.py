"""The example dataset ("No dataset yet? Use an example."): short moderation texts written by a generator.

Deterministic: the same rows every time. Three heads:
- `toxicity` (safe, toxic): every row;
- `category` (multi-label: insult, threat, spam, self_harm): only toxic rows; "does not apply" to safe ones;
- `sentiment` (positive, neutral, negative): every row.
"""

from __future__ import annotations

import random
from typing import Any

EXAMPLE_NAMES = {"moderation": "Example: comment moderation"}
EXAMPLE_MAPPING: dict[str, Any] = {
    "input_column": "text",
    "columns": [
        {"name": "text", "role": "text"},
        {
            "name": "toxicity",
            "role": "label",
            "head": "toxicity",
            "format": "single",
            "labels": ["safe", "toxic"],
        },
        {
            "name": "category",
            "role": "label",
            "head": "category",
            "format": "multi",
            "labels": ["insult", "threat", "spam", "self_harm"],
            "separator": "|",
        },
        {
            "name": "sentiment",
            "role": "label",
            "head": "sentiment",
            "format": "single",
            "labels": ["positive", "neutral", "negative"],
        },
    ],
}

_THINGS = [
    "this update",
    "the new layout",
    "your article",
    "the delivery",
    "this recipe",
    "the referee",
    "the app",
    "the last episode",
    "your photo",
    "the support team",
    "this thread",
    "the patch notes",
    "the concert",
]
_PEOPLE = ["you", "the mods", "this guy", "the author", "whoever wrote this", "the admins", "people like you"]

_POSITIVE = [
    "Thanks for sharing, {thing} made my day!",
    "Honestly {thing} is great, well done.",
    "Love {thing}, keep it up 👍",
    "Really helpful, {thing} answered my question.",
    "Great job on {thing}, can't wait for more.",
    "{thing} is exactly what I needed, thank you!",
]
_NEUTRAL = [
    "Does anyone know when {thing} comes out?",
    "I read about {thing} yesterday.",
    "Where can I find more about {thing}?",
    "Posting this here in case it helps: {thing} is now live.",
    "Can someone explain how {thing} works?",
    "Not sure what to think about {thing} yet.",
]
_NEGATIVE = [
    "{thing} was a bit disappointing, to be honest.",
    "I didn't enjoy {thing}, too slow for me.",
    "Meh, {thing} could have been better.",
    "{thing} broke again, this is frustrating.",
    "Not a fan of {thing}, sorry.",
]
_INSULT = [
    "{person} are a complete idiot",
    "only a moron would like {thing}",
    "{person} are pathetic and clueless",
    "what a useless clown, {person} should log off",
    "{person} write like a brainless troll",
]
_THREAT = [
    "{person} better watch your back",
    "I know where {person} live, keep talking",
    "say that again and {person} will regret it",
    "someone should hurt {person} for this",
]
_SPAM = [
    "CLICK HERE for free gift cards!!! bit.ly/fr33-gifts",
    "Make $500 a day from home, DM me now 💰",
    "Best crypto deals, join my channel today!!!",
    "Cheap followers and likes, visit my profile",
    "WIN a free phone, just enter your card details",
]
_SELF_HARM = [
    "I don't see the point of going on anymore",
    "nobody would notice if I just disappeared",
    "I keep thinking about hurting myself",
    "everything feels hopeless, I want it to end",
]
_COMBINED = [
    ("{person} are a worthless idiot and {person} better watch out", ["insult", "threat"]),
    ("idiots like {person} should buy my course, link in bio!!!", ["insult", "spam"]),
]


def example_rows(name: str = "moderation", *, rows: int = 360, seed: int = 7) -> list[dict[str, Any]]:
    """Rows for the example dataset `name`, as JSON objects with the columns of `EXAMPLE_MAPPING`."""
    if name not in EXAMPLE_NAMES:
        raise KeyError(name)
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []

    def fill(template: str) -> str:
        text = template.format(thing=rng.choice(_THINGS), person=rng.choice(_PEOPLE))
        text = text[0].upper() + text[1:] if rng.random() < 0.6 else text
        return text + rng.choice(["", "", "", " 🙄", " lol", " tbh"])

    for _ in range(rows):
        roll = rng.random()
        if roll < 0.62:
            sentiment, pool = rng.choice(
                [("positive", _POSITIVE), ("neutral", _NEUTRAL), ("negative", _NEGATIVE)]
            )
            out.append(
                {"text": fill(rng.choice(pool)), "toxicity": "safe", "category": None, "sentiment": sentiment}
            )
            continue
        if roll < 0.95:
            category, pool = rng.choice(
                [
                    ("insult", _INSULT),
                    ("insult", _INSULT),
                    ("threat", _THREAT),
                    ("spam", _SPAM),
                    ("self_harm", _SELF_HARM),
                ]
            )
            categories = [category]
            text = fill(rng.choice(pool))
        else:
            template, categories = rng.choice(_COMBINED)
            text = fill(template)
        sentiment = "neutral" if categories == ["spam"] else "negative"
        out.append(
            {"text": text, "toxicity": "toxic", "category": "|".join(categories), "sentiment": sentiment}
        )
    return out
