"""Policy moderation, in a real browser, against Arbiter deployed as production deploys it (`arbiter up --split`).

A new user uploads a labeled CSV and snapshots it, writes a policy in the console (an OpenAI-compatible endpoint
that reads images: a fake one on loopback that decides as a policy model would, from the policy text it is
sent), evaluates it on the snapshot, sends the rows it disagrees on to the review queue, edits the policy and
sees which decisions flip, then asks the version's playground about a text and about an image and reads the
reasons. Screenshots land in `test-artifacts/e2e/policy-*`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from arbiter.testing.images import make_image
from tests.annotation import fake_llm
from tests.e2e.browser import console_browser
from tests.e2e.conftest import RunningArbiter, comments_csv

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

INSULTS = ("idiot", "moron", "loser", "fool", "jerk")


def decide(body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """A policy model: it flags the words the policy it was sent names as violating, and any picture."""
    users = [m for m in body["messages"] if m["role"] == "user"]
    if any(isinstance(m["content"], list) and "image_url" in str(m["content"]) for m in users):
        return fake_llm.decision("unsafe", "insult", "The picture shows a rude gesture.", confidence=0.9)(
            body
        )
    text = "\n".join(fake_llm.last_user_text({"messages": [m]}) for m in users)
    policy, _, content = text.rpartition("<<<")
    hit = next((w for w in INSULTS if w in content and w in policy), None)
    if hit:
        return fake_llm.decision("unsafe", "insult", f"Calls the person a {hit}.", confidence=0.9)(body)
    return fake_llm.decision("safe", None, "No insult: friendly or neutral.", confidence=0.8)(body)


@pytest.fixture
def llm() -> Iterator[fake_llm.FakeLlm]:
    """An OpenAI-compatible endpoint on loopback (the split fixture allows 127.0.0.0/8 for LLM calls)."""
    for fake in fake_llm.serve():
        fake.script(decide)
        yield fake


def test_a_user_writes_evaluates_edits_and_tries_a_policy_in_the_console(
    split_arbiter: RunningArbiter, llm: fake_llm.FakeLlm, tmp_path: Path
) -> None:
    base = split_arbiter.base
    csv_file = tmp_path / "comments.csv"
    csv_file.write_bytes(comments_csv())
    picture = tmp_path / "gesture.png"
    picture.write_bytes(make_image("PNG", size=(48, 32), color=(240, 20, 20)))

    with console_browser("policy") as console:
        page, expect, shot, reload_until = console.page, console.expect, console.shot, console.reload_until
        # 1. Sign up; a labeled CSV, snapshotted.
        console.sign_up(base, email="policy.user@example.com", org_name="Policy Works")
        console.upload(csv_file)
        page.click("button:has-text('Confirm columns') >> nth=0")
        page.wait_for_url("**/snapshots")
        page.click("button:has-text('Create snapshot')")
        page.wait_for_url("**/snapshots/*")

        # 2. Write the policy: one category whose violations name four insults (not "jerk").
        page.click("nav.sidenav >> text=Policies")
        page.click("a:has-text('Write your first policy')")
        page.fill("#name", "civility")
        page.fill("#base_url", llm.base_url)
        page.fill("#model", "judge-1")
        page.fill("#api_key", "sk-policy-secret")
        page.check("input[name=vision]")
        page.fill("#category-0-name", "insult")
        page.fill("#category-0-definition", "Name-calling or contempt aimed at a person.")
        page.fill("#category-0-violates", "Calling someone an idiot, moron, loser or fool.")
        page.fill("#category-0-safe", "Friendly small talk.")
        shot("write")
        page.click("button:has-text('Save version 1')")
        expect(page.locator("h1")).to_contain_text("civility")
        assert "sk-policy-secret" not in page.content()
        policy_url = page.url.split("?")[0]

        # 3. Evaluate version 1 on the snapshot: the metrics, and the rows it disagrees on with their reasons.
        reload_until(
            lambda: page.locator("select[name=snapshot] option").count() > 0, "the snapshot reaching training"
        )
        page.fill("input[name=limit]", "40")
        page.click("form button:has-text('Evaluate')")
        page.wait_for_url("**/evaluations/*")
        reload_until(lambda: "Confusion matrix" in page.content(), "the evaluation", 120)
        expect(page.locator("body")).to_contain_text("get lost jerk")
        expect(page.locator("body")).to_contain_text("No insult: friendly or neutral.")
        shot("evaluation")
        page.click("button:has-text('Send the disagreements to the review queue')")
        expect(page.locator(".msg.success")).to_contain_text("rows sent to the review queue")

        # 4. Edit the policy ("jerk" now violates) and see which decisions flip.
        page.goto(policy_url)
        page.fill("#category-0-violates", "Calling someone an idiot, moron, loser, fool or jerk.")
        page.fill("#api_key", "")
        page.click("button:has-text('Save as version 2')")
        page.click("a:has-text('Compare two versions on a snapshot')")
        page.select_option("select[name=from_version]", "1")
        page.select_option("select[name=to_version]", "2")
        page.fill("input[name=limit]", "40")
        page.click("button:has-text('Compare')")
        expect(page.locator("h2", has_text="rows flipped")).to_contain_text(
            re.compile(r"[1-9]\d* of 40 rows flipped")
        )
        expect(page.locator("body")).to_contain_text("Calls the person a jerk.")
        shot("diff")

        # 5. The playground of version 2: a text, then an image, each answered with the reason.
        page.goto(policy_url)
        page.click("a:has-text('Version page and playground')")
        page.wait_for_url("**/versions/2")
        expect(page.locator("#policy-version")).to_contain_text("A written policy")
        expect(page.locator("h2", has_text="Training history")).to_have_count(0)
        page.fill("#playground-input", "you are a jerk")
        for _ in range(30):
            page.click("#playground-form button")
            page.wait_for_timeout(1000)
            if "Calls the person a jerk." in page.locator("#playground-results").inner_text():
                break
        expect(page.locator("#playground-results")).to_contain_text("Calls the person a jerk.")
        page.fill("#playground-input", "")
        page.set_input_files("#playground-image", str(picture))
        expect(page.locator("#playground-preview")).to_be_visible()
        page.click("#playground-form button")
        expect(page.locator("#playground-results")).to_contain_text("The picture shows a rude gesture.")
        shot("playground")
        assert any(url.startswith("data:image/png;base64,") for url in llm.images())

        # 6. The disagreements wait in the review queue with the policy's reason.
        page.click("nav.sidenav >> text=Labeling")
        reload_until(lambda: page.locator("#labeling-datasets a").count() > 0, "the dataset in Labeling")
        page.locator("#labeling-datasets a").first.click()
        page.goto(page.url.split("?")[0] + "?head=toxicity")
        page.click("a:has-text('Review these rows')")
        expect(page.locator("#suggestion-reason")).to_contain_text("Why: No insult")
        expect(page.locator("#review-request")).to_contain_text("disagrees with the labels")
        shot("review")
