"""The `auto` strategy's plan of its time budget, and the cost model that estimates it before a run.

`plan_make` decides from speeds (seconds per row) what fits in the budget left after TF-IDF: the trainer
calls it with speeds it measured on a sample, the console (`auto_plan`) with the cost model below. Kept free
of torch so the web processes can estimate without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# `head` runs before fine-tuning only when embedding every row still leaves this many epochs (or
# max_epochs, when lower): frozen heads rarely beat a fine-tuned encoder, a second epoch often does.
MIN_FULL_EPOCHS = 2


@dataclass(frozen=True)
class Speeds:
    """Seconds per row: TF-IDF (features, cross-validation, fit), embedding with the frozen encoder, and one
    fine-tuning epoch; plus seconds to load the encoder.

    `CPU_SPEEDS` is the cost model for estimates before a run (the console's plan): all-MiniLM-L6-v2 on
    OLID tweets (max_tokens 72, their 95th percentile) on a 2-core x86 CPU shared with other work (load
    about 2 per core): 27 ms per row to embed, 0.4 s per row of a fine-tuning step, 29 ms per row of
    TF-IDF on 2,000 rows (less per row on more). An idle CPU is two to three times faster, a GPU tens
    of times. A run measures its own speeds, so only the estimate is conservative.
    """

    tfidf: float
    embed: float
    finetune: float
    load: float = 5.0


CPU_SPEEDS = Speeds(tfidf=0.01, embed=0.025, finetune=0.35)
GPU_SPEEDS = Speeds(tfidf=0.01, embed=0.0005, finetune=0.005)
# Image bases (EfficientNet-Lite0 at 224 x 224, JPEGs of a few hundred pixels): on the same shared 2-core CPU,
# 0.02 to 0.06 s per image to decode and embed, and 0.12 s (idle) to 0.85 s (load above 2 per core) per image
# of a fine-tuning step. The GPU figures are not measured: decoding on the CPU bounds them.
IMAGE_CPU_SPEEDS = Speeds(tfidf=0.0, embed=0.05, finetune=0.5, load=3.0)
IMAGE_GPU_SPEEDS = Speeds(tfidf=0.0, embed=0.004, finetune=0.006, load=3.0)


@dataclass(frozen=True)
class Plan:
    """What `auto` will run: `head` or not, how many fine-tuning epochs, and why a step is skipped."""

    head: bool
    full_epochs: int
    estimates: dict[str, float]
    skipped: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "head": self.head,
            "full_epochs": self.full_epochs,
            "estimates": {name: round(value, 1) for name, value in self.estimates.items()},
            "skipped": dict(self.skipped),
        }


def duration_text(seconds: float) -> str:
    """Seconds as the candidates table words them: "45 s", "2.5 min"."""
    return f"{seconds / 60:.1f} min" if seconds >= 90 else f"{seconds:.0f} s"


def plan_make(
    *,
    speeds: Speeds,
    fit_rows: int,
    valid_rows: int,
    test_rows: int,
    embed_rows: int,
    remaining: float,
    max_epochs: int,
    allow_full: bool,
) -> Plan:
    """The plan for the budget left after `tfidf` (`remaining` seconds), from measured or modelled speeds.

    `embed_rows` are the rows the frozen encoder has not embedded yet (the cache may hold the others). A
    reserve covers the final evaluation (embedding the validation and test rows with the final encoder).
    """
    reserve = speeds.embed * (valid_rows + test_rows) * 1.5 + 5.0
    embed = speeds.embed * embed_rows
    epoch = speeds.finetune * fit_rows + speeds.embed * valid_rows
    left = remaining - reserve
    with_head = int(max(0.0, left - embed) // max(epoch, 1e-9))
    alone = int(max(0.0, left) // max(epoch, 1e-9))
    estimates = {"head": embed, "full_epoch": epoch, "reserve": reserve}
    skipped: dict[str, str] = {}
    if allow_full and alone >= 1:
        head = with_head >= min(max_epochs, MIN_FULL_EPOCHS)
        epochs = min(max_epochs, with_head if head else alone)
        if not head:
            skipped["head"] = (
                f"fine-tuning gets the budget: embedding every row (about {duration_text(embed)}) would leave "
                f"{with_head} of the {min(max_epochs, alone)} epochs that fit"
            )
        return Plan(head=head, full_epochs=epochs, estimates=estimates, skipped=skipped)
    if not allow_full:
        skipped["full"] = "the parent's kept heads need its encoder unchanged"
    else:
        skipped["full"] = (
            f"one fine-tuning epoch (about {duration_text(epoch)}) does not fit in the {duration_text(max(left, 0))} "
            "left of the time budget"
        )
    if embed <= left:
        return Plan(head=True, full_epochs=0, estimates=estimates, skipped=skipped)
    skipped["head"] = (
        f"embedding the rows (about {duration_text(embed)}) would overrun the time budget "
        f"({duration_text(max(left, 0))} left)"
    )
    return Plan(head=False, full_epochs=0, estimates=estimates, skipped=skipped)


def auto_plan(
    *,
    rows: int,
    time_budget_minutes: float,
    max_epochs: int,
    valid_percent: float = 10.0,
    test_percent: float = 20.0,
    gpu: bool = False,
    image: bool = False,
) -> list[dict[str, Any]]:
    """What `auto` is expected to run on `rows` rows within the budget, before it starts (the cost model).

    One entry per candidate: `{"name", "runs", "estimated_seconds", "note"}`. For an image base (`image`)
    only `head` and `full`, with the image speeds: TF-IDF and the blend mean nothing for images.
    """
    on_cpu, on_gpu = (IMAGE_CPU_SPEEDS, IMAGE_GPU_SPEEDS) if image else (CPU_SPEEDS, GPU_SPEEDS)
    speeds = on_gpu if gpu else on_cpu
    test_rows = int(rows * test_percent / 100)
    valid_rows = int((rows - test_rows) * valid_percent / 100)
    fit_rows = rows - test_rows - valid_rows
    budget = time_budget_minutes * 60
    tfidf = speeds.tfidf * (fit_rows + valid_rows)
    plan = plan_make(
        speeds=speeds,
        fit_rows=fit_rows,
        valid_rows=valid_rows,
        test_rows=test_rows,
        embed_rows=fit_rows + valid_rows,
        remaining=budget - tfidf - speeds.load,
        max_epochs=max_epochs,
        allow_full=True,
    )
    full_seconds = plan.estimates["full_epoch"] * plan.full_epochs
    head_runs = plan.head
    head_note = plan.skipped.get("head", "frozen-backbone heads" if image else "frozen-encoder heads")
    if image and not plan.head and plan.full_epochs < 1:
        # Nothing fits: an image model runs `head` all the same, having no cheaper candidate.
        head_runs, head_note = True, f"runs although {head_note}: an image model has no cheaper candidate"
    encoder_steps = [
        {
            "name": "head",
            "runs": head_runs,
            "estimated_seconds": round(plan.estimates["head"]) if head_runs else None,
            "note": head_note,
        },
        {
            "name": "full",
            "runs": plan.full_epochs > 0,
            "estimated_seconds": round(full_seconds) if plan.full_epochs else None,
            "note": plan.skipped.get(
                "full", f"fine-tuning, {plan.full_epochs} epoch{'s' if plan.full_epochs > 1 else ''}"
            ),
        },
    ]
    if image:
        return encoder_steps
    return [
        {"name": "tfidf", "runs": True, "estimated_seconds": round(tfidf), "note": "always runs first"},
        *encoder_steps,
        {
            "name": "blend",
            "runs": plan.head or plan.full_epochs > 0,
            "estimated_seconds": None,
            "note": "encoder and TF-IDF mixed per head, then calibrated on the validation rows",
        },
    ]
