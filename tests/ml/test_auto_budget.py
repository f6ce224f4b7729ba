"""`auto` and its time budget: the plan, rare classes on a skewed set, calibration, never below a candidate,
and candidates cut at the deadline (on a simulated clock)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from arbiter.ml import EmbeddingCache, HeadSpec, TrainOptions, train_from_snapshot
from arbiter.ml import automl as automl_module
from arbiter.ml.data import HeadLabels
from arbiter.ml.encoders import Encoder
from arbiter.ml.errors import MLError
from arbiter.ml.heads import EpochProgress
from arbiter.ml.plan import CPU_SPEEDS, Speeds, auto_plan, plan_make
from arbiter.ml.tfidf import logistic_fit

from .synthetic import HEADS, synthetic_rows

SKEWED = [HeadSpec(name="intent", labels=("safe", "insult", "threat"))]
SHARES = {"safe": 0.80, "insult": 0.15, "threat": 0.05}
_PLACES = ["the park", "the station", "school", "the game", "work", "the party", "the mall", "home"]
_FILLER = ["tonight", "tomorrow", "later", "soon", "on friday", "after lunch", "this week", "again"]
_INSULT = ["idiot", "clown", "loser", "fool", "moron"]
_THREAT = ["watch your back", "you will regret it", "i know where you live"]


def skewed_rows(count: int = 1500, *, seed: int = 0) -> list[dict[str, Any]]:
    """Three classes at 80 / 15 / 5 %. The rare class's phrases show in 70 % of its rows and in 8 % of the
    common class's, so about a third of the rows with them are threats: a model that goes by the odds
    alone calls them all `safe` and never says `threat`."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        label = rng.choices(list(SHARES), weights=list(SHARES.values()))[0]
        text = f"see you at {rng.choice(_PLACES)} {rng.choice(_FILLER)}"
        if label == "insult" or (label == "safe" and rng.random() < 0.03):
            text += f", {rng.choice(_INSULT)}"
        if (label == "threat" and rng.random() < 0.7) or (label == "safe" and rng.random() < 0.08):
            text += f", {rng.choice(_THREAT)}"
        rows.append(
            {
                "row": i,
                "input": f"{text} #{rng.randint(0, 99)}",
                "labels": {"intent": [label]},
                "split": "test" if i % 3 == 0 else "train",
            }
        )
    return rows


def tfidf_only(**options: Any) -> TrainOptions:
    """`auto` with a budget spent by TF-IDF: the encoder's candidates are skipped, calibration still runs."""
    return TrainOptions(strategy="auto", time_budget_minutes=0.001 / 60, export_onnx=False, **options)


def threat(result: Any) -> dict[str, Any]:
    return result.metrics["heads"]["intent"]["per_label"]["threat"]


def test_the_rare_class_is_not_traded_away_on_a_skewed_set(tmp_path: Path) -> None:
    result = train_from_snapshot(
        rows=skewed_rows(), heads=SKEWED, options=tfidf_only(), out_dir=tmp_path / "artifact"
    )
    head = result.metrics["heads"]["intent"]
    assert threat(result)["support"] >= 5
    assert threat(result)["recall"] >= 0.5, threat(result)
    # Weighted F1 is reported beside the macro numbers, which a rare class moves.
    assert head["weighted_f1"] is not None and result.metrics["weighted_f1"] == head["weighted_f1"]
    assert head["macro"]["balanced_accuracy"] >= 0.7 and head["macro"]["f1"] is not None


def test_calibration_on_the_validation_rows_brings_back_a_rare_class_without_class_weights(
    tmp_path: Path,
) -> None:
    """Without class weights the rare class loses every ambiguous row; the selection rule (balanced
    accuracy) calibrates the class priors on the validation rows and gets it back."""
    result = train_from_snapshot(
        rows=skewed_rows(),
        heads=SKEWED,
        options=tfidf_only(class_weighting=False, selection_rule="balanced_accuracy"),
        out_dir=tmp_path / "artifact",
    )
    calibration = next(c for c in result.candidates if c["name"] == "calibrate")
    tfidf = next(c for c in result.candidates if c["name"] == "tfidf")
    assert calibration["selection_metric"] > tfidf["selection_metric"]
    assert calibration["offsets"]["intent"]["threat"] > 0
    assert threat(result)["recall"] >= 0.5, threat(result)
    # The TF-IDF components are trained again on the fit and validation rows, offsets kept.
    refit = result.candidates[-1]
    training = result.metrics["training"]
    assert refit["name"] == "refit"
    assert refit["rows"] == training["rows"]["train"] + training["rows"]["validation"]


def test_the_loss_rule_is_not_calibrated_and_without_class_weights_loses_the_rare_class(
    tmp_path: Path,
) -> None:
    """The control for the two tests above: the skewed set does trade the rare class away when nothing
    guards it."""
    result = train_from_snapshot(
        rows=skewed_rows(),
        heads=SKEWED,
        options=tfidf_only(class_weighting=False, selection_rule="loss"),
        out_dir=tmp_path / "artifact",
    )
    assert "calibrate" not in [c["name"] for c in result.candidates]
    assert threat(result)["recall"] < 0.2


def test_the_time_budget_is_an_option_in_minutes_up_to_a_day() -> None:
    assert TrainOptions().time_budget_minutes == 20 and TrainOptions().time_budget_s == 1200
    assert TrainOptions(time_budget_minutes=1440).time_budget_s == 86400
    for bad in (0, -1, 1441):
        with pytest.raises(MLError, match="time_budget_minutes"):
            TrainOptions(time_budget_minutes=bad)


def plan(remaining: float, *, fit: int = 1000, allow_full: bool = True, max_epochs: int = 5) -> Any:
    return plan_make(
        speeds=Speeds(tfidf=0.0, embed=0.01, finetune=0.1),
        fit_rows=fit,
        valid_rows=100,
        test_rows=200,
        embed_rows=fit + 100,
        remaining=remaining,
        max_epochs=max_epochs,
        allow_full=allow_full,
    )


def test_the_plan_fine_tunes_when_an_epoch_fits_and_embeds_first_only_when_that_costs_no_epoch() -> None:
    # An epoch: 1000 x 0.1 + 100 x 0.01 = 101 s; embedding every row 11 s; the reserve 3 x 1.5 + 5 = 9.5 s.
    roomy = plan(1000)
    assert (roomy.head, roomy.full_epochs) == (True, 5)
    assert roomy.estimates["full_epoch"] == pytest.approx(101)
    two = plan(9.5 + 11 + 2 * 101 + 1)
    assert (two.head, two.full_epochs) == (True, 2)
    one = plan(9.5 + 101 + 5)  # one epoch fits, but not after embedding every row
    assert (one.head, one.full_epochs) == (False, 1)
    assert one.skipped["head"].startswith("fine-tuning gets the budget")


def test_the_plan_says_why_it_skips() -> None:
    frozen_only = plan(60)
    assert (frozen_only.head, frozen_only.full_epochs) == (True, 0)
    assert "does not fit" in frozen_only.skipped["full"]
    nothing = plan(15)
    assert (nothing.head, nothing.full_epochs) == (False, 0)
    assert "would overrun the time budget" in nothing.skipped["head"]
    kept = plan(10_000, allow_full=False)
    assert kept.head and kept.skipped["full"] == "the parent's kept heads need its encoder unchanged"


def test_the_estimate_before_a_run_grows_with_the_budget() -> None:
    rows = 25_000
    default = {step["name"]: step for step in auto_plan(rows=rows, time_budget_minutes=20, max_epochs=20)}
    assert default["tfidf"]["runs"] and default["tfidf"]["estimated_seconds"] == round(
        CPU_SPEEDS.tfidf * 20_000
    )
    assert not default["full"]["runs"] and "does not fit" in default["full"]["note"]
    day = {step["name"]: step for step in auto_plan(rows=rows, time_budget_minutes=1440, max_epochs=20)}
    assert day["full"]["runs"] and day["full"]["estimated_seconds"] > default["tfidf"]["estimated_seconds"]
    gpu = {
        step["name"]: step for step in auto_plan(rows=rows, time_budget_minutes=20, max_epochs=20, gpu=True)
    }
    assert gpu["full"]["runs"] and gpu["head"]["runs"]


@pytest.mark.slow
def test_auto_plans_fine_tuning_and_never_ends_below_its_best_candidate(
    tmp_path: Path, embedding_cache: EmbeddingCache
) -> None:
    result = train_from_snapshot(
        rows=synthetic_rows(120),
        heads=HEADS,
        options=TrainOptions(strategy="auto", time_budget_minutes=1.5, max_epochs=2, export_onnx=False),
        out_dir=tmp_path / "artifact",
        cache=embedding_cache,
    )
    training = result.metrics["training"]
    ran = {c["name"]: c for c in result.candidates if "skipped" not in c}
    assert {"tfidf", "blend"} <= set(ran) and ({"head", "full"} & set(ran))
    singles = [ran[name]["selection_metric"] for name in ("tfidf", "head", "full") if name in ran]
    assert result.selection_metric >= max(singles)
    # max_tokens from the data: these texts are short, so far below the option's 128.
    assert training["max_tokens"] < 128 and training["max_tokens"] % 8 == 0
    assert training["plan"]["budget_s"] <= 90 and training["seconds"] <= 90 + 30
    assert training["time_budget_s"] == 90
    # The TF-IDF components, when kept, are trained again on the fit and validation rows.
    if any(c.features.startswith("tfidf") for head in result.artifact.model.heads for c in head.components):
        assert result.candidates[-1]["name"] == "refit"
        assert result.candidates[-1]["rows"] == training["rows"]["train"] + training["rows"]["validation"]


class SimulatedClock:
    """Time that passes only where the work is said to cost it, so budget tests are exact and take seconds
    of real time for minutes of simulated time. Everything still runs for real; the clock is handed to
    `train_from_snapshot` and charged per logistic-regression fit (`fit_row` seconds per row), per row
    embedded (`embed_row`, then `slow_embed_row` once `fast_rows` rows were embedded: the machine got
    busier after the speed sample), per row of a fine-tuning forward pass (`step_row`) and per `head`
    epoch (`head_epoch`, through the progress callback)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.fit_row = 0.0
        self.embed_row = 0.01
        self.slow_embed_row: float | None = None
        self.fast_rows = 64
        self.step_row = 0.0
        self.head_epoch = 0.0
        self.embedded = 0

    def __call__(self) -> float:
        return self.now

    def embedding(self, rows: int) -> None:
        for _ in range(rows):
            slow = self.slow_embed_row is not None and self.embedded >= self.fast_rows
            self.now += self.slow_embed_row if slow else self.embed_row  # type: ignore[operator]
            self.embedded += 1

    def progress(self, progress: EpochProgress) -> None:
        if progress.candidate == "head":
            self.now += self.head_epoch


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedClock]:
    simulated = SimulatedClock()

    def fit(**kwargs: Any) -> Any:
        simulated.now += simulated.fit_row * int(kwargs["labels"].mask.sum())
        return logistic_fit(**kwargs)

    embed_uncached, forward = Encoder._embed_uncached, Encoder.forward

    def embedded(self: Encoder, texts: list[str], **kwargs: Any) -> Any:
        simulated.embedding(len(texts))
        return embed_uncached(self, texts, **kwargs)

    def forwarded(self: Encoder, input_ids: Any, attention_mask: Any) -> Any:
        if self.model.training:
            simulated.now += simulated.step_row * len(input_ids)
        return forward(self, input_ids, attention_mask)

    monkeypatch.setattr(automl_module, "logistic_fit", fit)
    monkeypatch.setattr(Encoder, "_embed_uncached", embedded)
    monkeypatch.setattr(Encoder, "forward", forwarded)
    yield simulated


def auto(minutes: float, **options: Any) -> TrainOptions:
    return TrainOptions(strategy="auto", time_budget_minutes=minutes, export_onnx=False, **options)


def candidate(result: Any, name: str) -> dict[str, Any]:
    (found,) = [c for c in result.candidates if c["name"] == name]
    return found


def test_the_tfidf_grid_stops_before_the_deadline_and_says_what_it_left_out(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    """A fit costs 0.1 s a row: a cross-validation round on 900 fit rows takes 3 minutes. In a 10-minute
    budget the second C fits but a third would leave no time for the final fit and the refit."""
    clock.fit_row, clock.embed_row = 0.1, 0.1
    result = train_from_snapshot(
        rows=skewed_rows(), heads=SKEWED, options=auto(10), out_dir=tmp_path / "artifact", clock=clock
    )
    tfidf = candidate(result, "tfidf")
    assert tfidf["c_tried"] == [1.0, 0.5]
    assert tfidf["c"]["intent"] in (1.0, 0.5)
    assert tfidf["stopped"].startswith("C 2, 4 not tried: a cross-validation round at C=2")
    assert "the best C of those tried is kept" in tfidf["stopped"]
    # The grid left the refit its time: the version, TF-IDF alone here, ends within the budget.
    assert result.selected == "tfidf" and candidate(result, "refit")["seconds"] > 0
    training = result.metrics["training"]
    assert training["plan"]["tfidf_refit_s"] == pytest.approx(100, abs=1)
    assert training["seconds"] <= training["time_budget_s"] == 600
    assert threat(result)["recall"] >= 0.5


def test_without_a_deadline_in_sight_the_whole_grid_runs(tmp_path: Path, clock: SimulatedClock) -> None:
    # The grid's four rounds take seconds; the encoder's candidates do not fit (and are not the point here).
    clock.fit_row, clock.embed_row, clock.step_row = 0.001, 1.0, 1.0
    result = train_from_snapshot(
        rows=skewed_rows(), heads=SKEWED, options=auto(10), out_dir=tmp_path / "artifact", clock=clock
    )
    tfidf = candidate(result, "tfidf")
    assert tfidf["c_tried"] == [1.0, 0.5, 2.0, 4.0] and "stopped" not in tfidf


def test_head_stops_at_the_deadline_and_keeps_its_best_epoch(tmp_path: Path, clock: SimulatedClock) -> None:
    """Fine-tuning costs 0.3 s a row (an epoch does not fit in 2 minutes), embedding 10 ms a row, a `head`
    epoch 10 s: of its 30 epochs only those that end before the deadline (less the evaluation's reserve)
    run, and the version is trained with the best of them."""
    clock.step_row, clock.head_epoch = 0.3, 10.0
    result = train_from_snapshot(
        rows=synthetic_rows(600),
        heads=HEADS,
        options=auto(2, max_epochs=30, early_stopping=0),
        out_dir=tmp_path / "artifact",
        clock=clock,
        on_progress=clock.progress,
    )
    assert "does not fit" in candidate(result, "full")["skipped"]
    head = candidate(result, "head")
    history = [p for p in result.history if p.candidate == "head"]
    assert 3 <= head["epochs"] == len(history) < 30
    assert head["stopped"] == (
        f"stopped at the time budget after {head['epochs']} of 30 epochs; the best epoch "
        f"({head['best_epoch']}) kept"
    )
    best = max(history, key=lambda p: (p.selection_metric, p.best))
    assert [p.epoch for p in history if p.best][-1] == head["best_epoch"]
    assert head["selection_metric"] == pytest.approx(best.selection_metric)
    training = result.metrics["training"]
    assert training["seconds"] <= training["time_budget_s"] == 120
    # Never below the best candidate that finished, on the validation rows.
    assert result.selection_metric >= max(candidate(result, n)["selection_metric"] for n in ("tfidf", "head"))
    assert result.metrics["heads"]["toxicity"]["macro"]["f1"] >= 0.9


def test_embedding_that_cannot_finish_skips_head_and_the_version_still_trains(
    tmp_path: Path, clock: SimulatedClock
) -> None:
    """The speed sample embeds at 50 ms a row, then the machine gets six times slower: after the first
    chunk (5 s at the sample's pace, 100 rows) the rows left would end after the deadline, so embedding
    stops there and `head` is skipped with the reason; TF-IDF, which finished, is the version."""
    clock.embed_row, clock.slow_embed_row, clock.step_row = 0.05, 0.3, 0.3
    result = train_from_snapshot(
        rows=skewed_rows(), heads=SKEWED, options=auto(3), out_dir=tmp_path / "artifact", clock=clock
    )
    assert result.metrics["training"]["plan"]["head"] is True  # planned at the sample's pace
    head = candidate(result, "head")
    assert head["skipped"].startswith("embedding the rows would overrun the time budget: 100 of ")
    assert "rows embedded in 30 s; the " in head["skipped"] and "at 300 ms a row" in head["skipped"]
    # Its time counts from loading the encoder: the speed sample (3.2 s), the fine-tuning step (19.2 s), then
    # the one chunk embedded.
    assert head["seconds"] == pytest.approx(3.2 + 19.2 + 30)
    assert result.selected == "tfidf" and "head" not in {p.candidate for p in result.history}
    assert not (result.artifact_dir / "encoder").exists()
    assert threat(result)["recall"] >= 0.5
    training = result.metrics["training"]
    assert training["seconds"] <= training["time_budget_s"]


def _shares_for(encoder_right: np.ndarray, tfidf_right: np.ndarray) -> Any:
    """A picked share of 1.0 for a two-label head whose encoder and TF-IDF are right on the given rows."""
    spec = HeadSpec(name="toxicity", labels=("safe", "toxic"))
    truth = np.arange(len(encoder_right)) % 2
    indicators = np.eye(2, dtype=np.float32)[truth]

    def probabilities(right: np.ndarray) -> np.ndarray:
        decided = np.where(right, truth, 1 - truth)
        return np.where(np.eye(2, dtype=bool)[decided], 0.8, 0.2)

    labels = HeadLabels(spec, indicators, np.ones(len(truth), dtype=bool))
    return automl_module._Shares(
        shares={"toxicity": 1.0},
        rows=SimpleNamespace(heads={"toxicity": labels}),  # type: ignore[arg-type]
        encoder={"toxicity": probabilities(encoder_right)},
        tfidf={"toxicity": probabilities(tfidf_right)},
    )


def test_the_encoder_stays_in_a_blend_only_when_its_gain_over_tfidf_is_beyond_the_noise():
    search = SimpleNamespace(options=TrainOptions(strategy="auto"))
    tfidf_right = np.arange(300) % 5 != 0  # right on 80 % of 300 rows
    # Right on 6 more rows and wrong on 4 others: 2 rows better, within the noise of 10 rows that disagree.
    close = tfidf_right.copy()
    close[np.flatnonzero(~tfidf_right)[:6]] = True
    close[np.flatnonzero(tfidf_right)[:4]] = False
    picked = _shares_for(close, tfidf_right)
    noise = automl_module._noise_check(search, picked)  # type: ignore[arg-type]
    assert picked.shares == {"toxicity": 0.0}
    assert noise["toxicity"]["kept"] == "tfidf"
    assert 0 < noise["toxicity"]["gain"] < noise["toxicity"]["standard_error"]
    # Right on 30 more rows and wrong on none: kept.
    clear = tfidf_right.copy()
    clear[np.flatnonzero(~tfidf_right)[:30]] = True
    picked = _shares_for(clear, tfidf_right)
    noise = automl_module._noise_check(search, picked)  # type: ignore[arg-type]
    assert picked.shares == {"toxicity": 1.0} and noise["toxicity"]["kept"] == "encoder"
    assert noise["toxicity"]["gain"] > 3 * noise["toxicity"]["standard_error"]
