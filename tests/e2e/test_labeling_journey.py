"""Labeling, in a real browser, against Arbiter deployed as production deploys it (`arbiter up --split`).

A new user uploads an unlabeled CSV, describes two labels, tries the offline similarity labeler on 10 rows,
labels a few rows in the keyboard-first review queue, measures the labeler against those labels, edits a
description and measures again, then configures an OpenAI-compatible endpoint (a fake one on loopback that
answers as an LLM would and records the prompts), runs it over the unlabeled rows, accepts its suggestions,
snapshots the dataset and trains a model on the labels. Screenshots land in `test-artifacts/e2e/labeling-*`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.annotation import fake_llm
from tests.e2e.browser import console_browser
from tests.e2e.conftest import SAFE, TOXIC, RunningArbiter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROWS = 24


def text_of(i: int) -> str:
    return f"{(TOXIC if i % 2 == 0 else SAFE)[(i // 2) % 5]} ({i})"


def is_toxic(text: str) -> bool:
    return any(phrase in text for phrase in TOXIC)


@pytest.fixture
def llm() -> Iterator[fake_llm.FakeLlm]:
    """An OpenAI-compatible endpoint on loopback (the split fixture allows 127.0.0.0/8 for LLM calls)."""
    for fake in fake_llm.serve():
        # Answers for the row's text, the last user message (earlier ones may be few-shot examples).
        fake.script(
            lambda body: fake_llm.good("toxic" if is_toxic(fake_llm.last_user_text(body)) else "safe")(body)
        )
        yield fake


def test_a_user_labels_an_unlabeled_csv_in_the_console_and_trains_on_the_labels(
    split_arbiter: RunningArbiter, llm: fake_llm.FakeLlm, tmp_path: Path
) -> None:
    base = split_arbiter.base
    csv_file = tmp_path / "comments.csv"
    csv_file.write_text("comment\n" + "\n".join(text_of(i) for i in range(ROWS)) + "\n")

    with console_browser("labeling") as console:
        page, expect, shot, reload_until = console.page, console.expect, console.shot, console.reload_until

        def latest_job_state() -> str:
            return page.locator("#jobs tbody tr").first.locator("td").nth(2).inner_text().strip()

        def run_job(*, provider: str, rows: str, sample: int | None = None) -> str:
            page.select_option("#run-form select[name=provider]", provider)
            page.select_option("#run-form select[name=rows]", rows)
            if sample is not None:
                page.fill("#run-form input[name=sample]", str(sample))
            jobs_before = page.locator("#jobs tbody tr").count()
            page.click("#run-form button[value=run]")
            expect(page.locator("#jobs tbody tr")).to_have_count(jobs_before + 1)
            reload_until(lambda: latest_job_state() in ("completed", "failed"), "the labeling job finishing")
            assert latest_job_state() == "completed", page.locator("#jobs tbody tr").first.inner_text()
            return page.locator("#jobs tbody tr").first.inner_text()

        # 1. Sign up and upload a CSV with one text column and no labels.
        console.sign_up(base, email="labeler.user@example.com", org_name="Label Works")
        console.upload(csv_file)
        expect(page.locator("#role-0")).to_have_value("text")
        page.click("button:has-text('Confirm columns') >> nth=0")
        page.wait_for_url("**/snapshots")
        snapshots_url = page.url

        # 2. The dataset reaches the annotation service by event; describe two labels.
        page.click("nav.sidenav >> text=Labeling")
        reload_until(lambda: page.locator("#labeling-datasets a").count() > 0, "the dataset in Labeling")
        page.locator("#labeling-datasets a").first.click()
        page.fill("#schema-form input[name=head]", "toxicity")
        names = page.locator("#schema-form input[name=label_name]")
        descriptions = page.locator("#schema-form textarea[name=label_description]")
        names.nth(0).fill("toxic")
        descriptions.nth(0).fill("hostile: insults or name-calling aimed at a person")
        names.nth(1).fill("safe")
        descriptions.nth(1).fill("friendly, polite or neutral everyday conversation")
        shot("labels")
        page.click("#schema-form button:has-text('Save labels')")
        expect(page.locator(".msg.success")).to_contain_text("saved as version 1")

        # 3. Try 10 rows with the offline similarity labeler first.
        summary = run_job(provider="similarity", rows="sample", sample=10)
        assert "similarity" in summary and "10" in summary, summary
        shot("first-ten")

        # 4. The review queue: the suggestion is preselected; keys choose and save.
        page.click("a:has-text('Review one by one')")
        for reviewed in range(4):
            text = page.locator("#review-text").inner_text()
            row = page.locator("#review-form input[name=row]").get_attribute("value") or ""
            page.keyboard.press("1" if is_toxic(text) else "2")
            expected = "toxic" if is_toxic(text) else "safe"
            expect(page.locator(f"#review-form input[value={expected}]")).to_be_checked()
            if reviewed == 0:
                shot("review")
            page.keyboard.press("Enter")
            expect(page.locator("#review-form input[name=row]")).not_to_have_value(row)
        expect(page.locator(".page-head .sub")).to_contain_text(re.compile(r"\d+ of 24 rows labeled"))
        page.locator(".page-head .sub a").click()

        # 5. Measure the labeler against the people's labels, edit a description, measure again.
        before = run_job(provider="similarity", rows="labeled")
        assert re.search(r"accuracy [0-9.]+, κ [-0-9.]+ on 4 rows", before), before
        page.locator("#schema-form textarea[name=label_description]").nth(0).fill(
            "rude or hostile words: idiot, moron, loser, fool, jerk, calling someone names"
        )
        page.click("#schema-form button:has-text('Save labels')")
        expect(page.locator(".msg.success")).to_contain_text("saved as version 2")
        after = run_job(provider="similarity", rows="labeled")
        assert re.search(r"accuracy [0-9.]+, κ [-0-9.]+ on 4 rows", after), after
        assert "@v2" in after and "@v1" in before, (before, after)
        shot("agreement")

        # 6. An OpenAI-compatible endpoint labels the unlabeled rows; its suggestions are accepted.
        page.click("nav.sidenav >> text=Labeling")
        page.fill("#provider-name", "house model")
        page.fill("#provider-base-url", llm.base_url)
        page.fill("#provider-model", "fake-moderator")
        page.fill("#provider-key", "sk-test-secret")
        page.click("#provider-form button")
        expect(page.locator("#providers")).to_contain_text("house model")
        assert "sk-test-secret" not in page.content()
        page.locator("#labeling-datasets a").first.click()
        page.goto(page.url.split("?")[0] + "?head=toxicity")
        house = page.locator("#run-form select[name=provider] option", has_text="house model")
        run_job(provider=house.get_attribute("value") or "", rows="unlabeled")
        prompts = [str(messages) for messages in llm.prompts]
        assert prompts and all("calling someone names" in prompt for prompt in prompts)
        assert llm.requests[0]["headers"]["authorization"] == "Bearer sk-test-secret"
        job_row = page.locator("#jobs tbody tr").first
        job_row.locator("input[name=min_score]").fill("0")
        job_row.locator("button:has-text('Accept')").click()
        expect(page.locator(".msg.success")).to_contain_text("suggestions accepted")
        shot("accepted")

        # 7. The labels reach the dataset by event: every row labeled, snapshot, train.
        page.goto(snapshots_url.rsplit("/snapshots", 1)[0] + "?head=toxicity&label=toxic")
        reload_until(
            lambda: "of 12 matching" in page.locator("body").inner_text(),
            "the accepted labels in the dataset",
        )
        shot("labeled-rows")
        page.goto(snapshots_url)
        page.click("button:has-text('Create snapshot')")
        page.wait_for_url("**/snapshots/*")
        counts = page.locator(".class-counts[data-head=toxicity]")
        expect(counts.locator("canvas[role=img]")).to_have_attribute("aria-label", re.compile("toxic 12"))
        page.click("text=Train a model on this snapshot")
        expect(page.locator("input[name=snapshots]:checked")).to_have_count(1, timeout=60_000)
        page.fill("#name", "labeled-toxicity")
        page.select_option("#option-strategy", "head")
        page.fill("#option-max_epochs", "6")
        page.click("button:has-text('Train version 1')")
        page.wait_for_url("**/versions/1")
        expect(page.locator("#metrics")).to_be_visible(timeout=300_000)
        shot("trained")
