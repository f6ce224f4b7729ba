"""The visual-moderation walkthrough, in a real browser, against Arbiter deployed as production deploys it
(`arbiter up --split`).

A new user uploads a CSV with a column of image URLs (served from loopback, inside the networks the split
fixture allows for fetching) and a `tobacco` head, confirms that the column is an image, watches the images
being fetched (one cannot be: the row says why), snapshots the images, trains a model on `vision-moderation`,
reads its metrics, asks the playground about an uploaded picture, deploys it, creates an API key, and the
official `openai` SDK asks `moderations.create` with an image URL. Screenshots land in `test-artifacts/e2e/visual-*`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from arbiter.testing.images import ImageServer, make_image, running_image_server
from tests.e2e.browser import console_browser
from tests.e2e.conftest import RunningArbiter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROWS = 24


def picture(i: int, *, yes: bool) -> bytes:
    """Reddish pictures are `yes_tobacco`, bluish ones `no_tobacco`: a head on image embeddings learns it."""
    colour = (200 + i % 40, 30 + i % 32, 20) if yes else (20, 30 + i % 32, 200 + i % 40)
    return make_image("JPEG", size=(96, 64), color=colour, noise=True)


@pytest.fixture
def images() -> Iterator[ImageServer]:
    with running_image_server() as server:
        yield server


def test_a_user_builds_a_visual_moderation_model_in_the_console_and_the_openai_sdk_asks_it(
    split_arbiter: RunningArbiter, images: ImageServer, tmp_path: Path
) -> None:
    base = split_arbiter.base
    lines = ["image,tobacco"]
    for i in range(ROWS):
        yes = i % 2 == 0
        lines.append(
            f"{images.serve(f'/img/{i}.jpg', picture(i, yes=yes))},{'yes_tobacco' if yes else 'no_tobacco'}"
        )
    lines.append(f"{images.url('/img/gone.jpg')},yes_tobacco")  # never served: a 404
    csv_file = tmp_path / "tobacco.csv"
    csv_file.write_text("\n".join(lines) + "\n")
    upload = tmp_path / "ask.jpg"
    upload.write_bytes(picture(5, yes=True))

    with console_browser("visual") as console:
        page, expect, shot, reload_until = console.page, console.expect, console.shot, console.reload_until
        # 1. Sign up; upload the CSV; the URL column is recognised as an image.
        console.sign_up(base, email="vision.user@example.com", org_name="Vision Works")
        console.upload(csv_file)
        expect(page.locator("#role-0")).to_have_value("image")
        shot("columns")
        page.click("button:has-text('Confirm columns') >> nth=0")
        page.wait_for_url("**/snapshots")
        snapshots_url = page.url

        # 2. The rows, with the images themselves; the one that could not be fetched says why.
        page.goto(snapshots_url.rsplit("/snapshots", 1)[0])
        reload_until(
            lambda: (
                f"Images: {ROWS} fetched" in page.locator(".image-status").inner_text()
                if page.locator(".image-status").count()
                else False
            ),
            "the image fetch",
        )
        expect(page.locator(".image-status")).to_contain_text("1 could not be fetched")
        thumbs = page.locator("img.thumb")
        expect(thumbs.first).to_be_visible()
        # Visible comes before loaded (the picture is fetched after the page): wait until it has drawn. An image
        # that failed to load is complete with no width, so this still fails on a broken thumbnail.
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=thumbs.first.element_handle(), timeout=30_000
        )
        failed = page.locator("tr:has(.pill.bad)")  # all 25 rows fit on the first page
        expect(failed).to_have_count(1)
        expect(failed).to_contain_text("HTTP 404")
        shot("rows-with-images")

        # 3. Snapshot the images and train on vision-moderation.
        page.goto(snapshots_url)
        page.click("button:has-text('Create snapshot')")
        page.wait_for_url("**/snapshots/*")
        counts = page.locator(".class-counts[data-head=tobacco]")
        expect(counts.locator("canvas[role=img]")).to_have_attribute(
            "aria-label", re.compile(f"yes_tobacco {ROWS // 2}")
        )
        shot("snapshot")
        page.click("text=Train a model on this snapshot")
        expect(page.locator("input[name=snapshots]:checked")).to_have_count(1, timeout=60_000)
        page.reload()  # the form chooses the base from the snapshot once the training service knows it
        expect(page.locator("#base_model")).to_have_value("vision-moderation")
        page.fill("#name", "tobacco-vision")
        page.select_option("#option-strategy", "head")
        page.fill("#option-max_epochs", "40")
        shot("train-form")
        page.click("button:has-text('Train version 1')")
        page.wait_for_url("**/versions/1")
        expect(page.locator("#metrics")).to_be_visible(timeout=300_000)
        expect(page.locator(".head-card[data-head=tobacco]")).to_be_visible()
        expect(page.locator("#version-summary, .card").first).to_contain_text("nsfw")
        shot("metrics")

        # 4. The playground takes an uploaded picture and answers for the user's head and the built-in nsfw.
        page.set_input_files("#playground-image", str(upload))
        expect(page.locator("#playground-preview")).to_be_visible()
        for _ in range(30):
            page.click("#playground-form button")
            page.wait_for_timeout(1000)
            if page.locator("#playground-results .head-result").count() == 2:
                break
        expect(page.locator("#playground-results .head-result")).to_have_count(2)
        expect(page.locator("#playground-results")).to_contain_text("yes_tobacco")
        expect(page.locator("#playground-results")).to_contain_text("nsfw")
        shot("playground")

        # 5. Deploy it, and create an API key.
        page.click("text=Deploy this version")
        page.fill("#name", "tobacco-eye")
        page.click("button:has-text('Deploy')")
        page.wait_for_url("**/deployments/*")
        expect(page.locator("#deployment-status .pill")).to_have_text("live", timeout=120_000)
        shot("live")
        page.click("nav.sidenav >> text=API keys")
        page.fill("#key-name", "vision service")
        page.click("button:has-text('Create key')")
        secret = page.locator("#new-key-secret").inner_text()

    # 6. The user's application asks with the official SDK, an image URL as OpenAI's multi-modal input.
    asked = images.serve("/ask/red.jpg", picture(77, yes=True))
    with OpenAI(base_url=f"{base}/v1", api_key=secret, max_retries=0) as sdk:
        answer = sdk.moderations.create(
            model="tobacco-eye", input=[{"type": "image_url", "image_url": {"url": asked}}]
        )
    (result,) = answer.results
    assert result.categories.to_dict()["tobacco"] is True and result.flagged is True
    assert result.category_applied_input_types.to_dict() == {"tobacco": ["image"], "nsfw": ["image"]}
