"""The whole journey of a new user, in a real browser, against a real Arbiter.

Arbiter runs as production deploys it (`arbiter up --split`, see conftest): each service in its own processes
(web, outbox relay, event consumers; the training operator) on PostgreSQL, one database per service, behind
nginx routing by the route table, with the embedded Kafka-compatible broker. Chromium, driven by Playwright,
signs up, uploads a CSV, confirms its columns, snapshots it, trains a model with the `head` strategy, reads
its metrics, uses the playground, deploys the model and creates an API key; the test then calls the
deployment over HTTP with that key, as the user's application would, and finds the call in the usage page;
the busiest pages are then checked at a phone's width. A crawl then visits every page the navigation
reaches and every link on those pages.

Screenshots of every step land in `test-artifacts/e2e/`.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from arbiter.config.routes import route_owner
from tests.e2e.conftest import ARTIFACTS, RunningArbiter

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PASSWORD = "correct horse battery staple"

TOXIC = [
    "you are an idiot",
    "shut up you moron",
    "i hate you loser",
    "you stupid fool",
    "get lost jerk",
    "nobody wants you here clown",
    "what a pathetic troll",
    "you are worthless trash",
]
SAFE = [
    "have a nice day",
    "thanks for the help",
    "the weather is lovely",
    "see you tomorrow",
    "great article",
    "i love this recipe",
    "nice photo of the lake",
    "happy birthday to you",
]


def comments_csv(path: Path) -> Path:
    """A small moderation dataset as people export it: an id, the text, and two label columns."""
    lines = ["id,comment,toxicity,topic"]
    for i in range(64):
        toxic = i % 2 == 0
        text = f"{(TOXIC if toxic else SAFE)[(i // 2) % 8]} ({i})"
        topic = "insult" if toxic else ("greeting" if i % 4 == 1 else "other")
        lines.append(f"{i + 1},{text},{'toxic' if toxic else 'safe'},{topic}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def arbiter(split_arbiter: RunningArbiter) -> str:
    """Arbiter as production deploys it: each service in its own processes behind nginx (see conftest)."""
    return split_arbiter.base


def classify(url: str, key: str, inputs: list[str]) -> dict:
    request = urllib.request.Request(
        url,
        data=json.dumps({"inputs": inputs}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_a_new_user_gets_from_an_empty_account_to_a_model_answering_over_http(
    arbiter: str, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (/usr/bin/chromium); `make browser` installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    expect = sync_api.expect
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    csv_file = comments_csv(tmp_path / "comments.csv")
    problems: list[str] = []

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda error: problems.append(f"script error on {page.url}: {error}"))
        page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 500 else None)
        shots = iter(range(1, 100))

        def shot(name: str) -> None:
            page.screenshot(path=str(ARTIFACTS / f"{next(shots):02d}-{name}.png"), full_page=True)

        # 1. Sign up: the new org's overview lists the journey.
        page.goto(f"{arbiter}/")
        page.click("text=Create an account")
        page.fill("#email", "new.user@example.com")
        page.fill("#password", PASSWORD)
        page.fill("#org_name", "Acme Trust & Safety")
        page.click("button:has-text('Create account')")
        expect(page.locator("h1")).to_have_text("Acme Trust & Safety")
        shot("signed-up")

        # 2. Upload a small CSV.
        page.click("a:has-text('Upload data')")
        expect(page.locator("text=No datasets yet")).to_be_visible()
        shot("no-datasets")
        page.click("text=Upload a file")
        page.set_input_files("#file", str(csv_file))
        shot("upload")
        page.click("#upload-button")
        page.wait_for_url("**/columns")

        # 3. Map the columns: Arbiter's guesses are shown with a preview; the user confirms them.
        expect(page.locator("#role-1")).to_have_value("text")
        expect(page.locator("#role-2")).to_have_value("label")
        expect(page.locator("#role-3")).to_have_value("label")
        expect(page.locator("#mapping-preview >> text=you are an idiot (0)")).to_be_visible()
        shot("columns")
        page.click("button:has-text('Confirm columns') >> nth=0")
        page.wait_for_url("**/snapshots")
        expect(page.locator(".msg.success")).to_contain_text("64 of 64 rows are valid")

        # 4. Snapshot it and read the report.
        shot("snapshot-form")
        page.click("button:has-text('Create snapshot')")
        page.wait_for_url("**/snapshots/*")
        # Class counts are a Chart.js canvas, with the numbers in a table for screen readers.
        counts = page.locator(".class-counts[data-head=toxicity]")
        expect(counts.locator("canvas[role=img]")).to_have_attribute("aria-label", re.compile("toxic 32"))
        expect(counts.locator("table.chart-data tbody tr")).to_have_count(2)
        shot("snapshot-report")

        # 5. Train with the `head` strategy; the snapshot reaches the training service by event.
        page.click("text=Train a model on this snapshot")
        expect(page.locator("input[name=snapshots]:checked")).to_have_count(1, timeout=60_000)
        page.fill("#name", "toxicity")
        page.select_option("#option-strategy", "head")
        page.fill("#option-max_epochs", "6")
        shot("model-form")
        page.click("button:has-text('Train version 1')")
        page.wait_for_url("**/versions/1")
        shot("training")

        # 6. The metrics page: numbers, a confusion matrix and a PR curve per head.
        expect(page.locator("#metrics")).to_be_visible(timeout=300_000)
        expect(page.locator(".confusion-matrix")).to_have_count(2)
        pr_curve = page.locator(".head-card[data-head=toxicity] .pr-chart canvas[role=img]")
        expect(pr_curve).to_have_count(1)
        expect(
            page.locator(".head-card[data-head=toxicity] .pr-chart table.chart-data tbody tr")
        ).not_to_have_count(0)
        expect(page.locator("#loss-chart canvas[role=img]")).to_have_count(1)
        expect(page.locator("#loss-chart table.chart-data")).to_contain_text("validation loss")
        page.fill(".head-card[data-head=toxicity] .threshold", "0.8")
        expect(page.locator(".head-card[data-head=toxicity] .threshold-readout")).to_contain_text("At 0.80")
        shot("metrics")
        page.click("button[data-metrics-view=per-class]")
        expect(page.locator("#per-class")).to_be_visible()

        # 7. The playground answers for every head (once the version reached the inference service).
        page.fill("#playground-input", "you are a pathetic idiot")
        for _ in range(30):
            page.click("#playground-form button")
            page.wait_for_timeout(1000)
            if page.locator("#playground-results .head-result").count() == 2:
                break
        expect(page.locator("#playground-results .head-result")).to_have_count(2)
        expect(page.locator("#free-queries")).to_contain_text("free queries left")
        shot("playground")

        # 8. Deploy it and watch it go live.
        page.click("text=Deploy this version")
        page.fill("#name", "toxicity-prod")
        shot("deploy-form")
        page.click("button:has-text('Deploy')")
        page.wait_for_url("**/deployments/*")
        shot("deploying")
        expect(page.locator("#deployment-status .pill")).to_have_text("live", timeout=120_000)
        curl = page.locator("#code-curl").inner_text()
        shot("live")

        # 9. Create an API key: the secret is shown once.
        page.click("nav.sidenav >> text=API keys")
        page.fill("#key-name", "moderation service")
        page.click("button:has-text('Create key')")
        secret = page.locator("#new-key-secret").inner_text()
        shot("api-key")

        # 10. The user's application calls the deployment with the key, as the console's snippet says.
        url = curl.split()[1]
        assert url.startswith(f"{arbiter}/api/v1/orgs/")
        try:
            answer = classify(url, secret, ["you are an idiot (0)", "have a nice day (1)"])
        except urllib.error.HTTPError as error:
            pytest.fail(f"classify answered {error.code}: {error.read()[:500]!r}")
        results = answer["results"]
        assert [sorted(result) for result in results] == [["topic", "toxicity"], ["topic", "toxicity"]]
        assert [result["toxicity"]["label"] for result in results] == ["toxic", "safe"]

        # 11. Usage shows that call, per deployment and day.
        page.click("nav.sidenav >> text=Usage")
        expect(page.locator("table >> tr:has-text('toxicity-prod') >> td.num").first).to_have_text("1")
        expect(page.locator("#usage-chart canvas[role=img]")).to_have_count(1)
        expect(page.locator("#usage-chart table.chart-data tbody tr")).not_to_have_count(0)
        expect(page.locator("#usage-chart table.chart-data")).to_contain_text("toxicity-prod")
        shot("usage")

        # 12. Phone width: the busiest pages work without sideways scrolling.
        phone = browser.new_page(viewport={"width": 390, "height": 844})
        phone.goto(f"{arbiter}/signin")
        phone.fill("#email", "new.user@example.com")
        phone.fill("#password", PASSWORD)
        phone.click("button:has-text('Sign in')")
        for name, path in [
            ("rows", ["Datasets", "comments"]),
            ("version", ["Models", "toxicity", "v1"]),
            ("deployment", ["Deployments", "toxicity-prod"]),
        ]:
            phone.click(f"nav.sidenav >> text={path[0]}")
            for link in path[1:]:
                phone.locator("main").get_by_role("link", name=link, exact=True).click()
            phone.wait_for_timeout(800)
            width = phone.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert width <= 1, f"the {name} page scrolls sideways by {width}px on a phone"
            phone.screenshot(path=str(ARTIFACTS / f"{next(shots):02d}-phone-{name}.png"), full_page=True)
        browser.close()
    assert not problems, problems


def test_every_page_the_navigation_reaches_and_every_link_on_it_answers(arbiter: str) -> None:
    """Signed in, through nginx: the navigation's pages, every link and asset on them, and the pages those
    links open (two levels deep) answer 2xx; none is a 404 of a path routed to the wrong service."""
    if not CHROMIUM.exists():
        pytest.skip("Chromium is not installed (/usr/bin/chromium); `make browser` installs it")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{arbiter}/signin")
        page.fill("#email", "new.user@example.com")
        page.fill("#password", PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_url("**/console/**")
        nav = page.eval_on_selector_all(
            "nav.sidenav a[href]", "links => links.map(a => a.getAttribute('href'))"
        )
        assert len(nav) >= 6, nav

        seen: dict[str, int] = {}
        broken: list[str] = []
        level = [href for href in nav if href.startswith("/")]
        for _ in range(2):
            found: list[str] = []
            for path in level:
                if path in seen:
                    continue
                response = page.request.get(f"{arbiter}{path}")
                seen[path] = response.status
                if not 200 <= response.status < 300:
                    broken.append(f"{response.status} {path}")
                    continue
                if "text/html" not in response.headers.get("content-type", "") or not path.startswith(
                    "/console/"
                ):
                    continue  # an asset, a download, JSON or the API docs: answering is all it must do
                page.goto(f"{arbiter}{path}")
                # The navigation is the same on every service's pages.
                here = page.eval_on_selector_all(
                    "nav.sidenav a[href]", "ls => ls.map(a => a.getAttribute('href'))"
                )
                assert here == nav, f"the navigation on {path} differs: {here}"
                found += page.eval_on_selector_all(
                    "a[href], script[src], link[href]",
                    "els => els.map(e => e.getAttribute('href') || e.getAttribute('src'))",
                )
            level = [
                href.split("#")[0]
                for href in dict.fromkeys(found)
                if href.startswith("/")
                and not href.startswith("//")
                and href.split("#")[0] not in seen
                and not href.startswith("/signout")
            ]
        for path in level:  # the third level is only checked, not followed
            status = page.request.get(f"{arbiter}{path}").status
            seen[path] = status
            if not 200 <= status < 300:
                broken.append(f"{status} {path}")
        browser.close()
    assert broken == [], broken
    assert len(seen) > 20, sorted(seen)
    owners = {route_owner(path) for path in seen}
    assert {"gateway", "dataset", "training", "inference"} <= owners, sorted(seen)
