"""Policy console pages: a policy written in the console, edited into a second version, evaluated on a labelled
snapshot (metrics and the disagreements with their reasons), and the diff of two versions."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from arbiter.testing.tenants import Tenant, assert_not_found
from services.training.models import PolicyEvaluation
from tests.annotation import fake_llm
from tests.annotation.fake_llm import FakeLlm
from tests.training.conftest import TOXICITY, snapshot_publish, toxicity_rows
from tests.training.test_policies import strict_judge

pytestmark = pytest.mark.django_db(databases="__all__")


@pytest.fixture
def fake(override_arbiter_settings: Any) -> Iterator[FakeLlm]:
    override_arbiter_settings(
        ARBITER_LLM_ALLOWED_NETWORKS="127.0.0.0/8",
        ARBITER_LLM_TIMEOUT_SECONDS="1",
        ARBITER_LLM_MAX_ATTEMPTS="1",
    )
    yield from fake_llm.serve()


def browser(tenant: Tenant) -> Client:
    client = Client()
    client.force_login(tenant.owner)
    return client


def form(fake: FakeLlm, **fields: str) -> dict[str, str]:
    return {
        "name": "civility",
        "base_url": fake.base_url,
        "model": "judge-1",
        "api_key": "sk-console-secret-9876",
        "prompt_style": "generic",
        "instructions": "Judge the message, not the person.",
        "category_count": "2",  # the form of a new policy has three empty blocks; two are sent
        "category-0-name": "insult",
        "category-0-definition": "Name-calling aimed at a person.",
        "category-0-violates": "idiot, moron",
        "category-0-safe": "small talk",
        "category-0-examples": "unsafe: you clown -- name-calling\nsafe: nice day",
        "category-1-name": "",
        "category-1-definition": "",
        **fields,
    }


def test_write_edit_evaluate_and_diff_a_policy_in_the_console(tenant: Tenant, fake: FakeLlm) -> None:
    client = browser(tenant)
    base = f"/console/{tenant.slug}/policies"
    assert "No policies yet" in client.get(base).content.decode()
    created = client.post(f"{base}/new", form(fake))
    assert created.status_code == 302, created.content.decode()[:2000]
    page_url = created["Location"]
    page = client.get(page_url).content.decode()
    assert "civility" in page and "Name-calling aimed at a person." in page  # the prompt preview
    assert "sk-console-secret-9876" not in page and "ends in 9876" in page
    assert (
        'value="unsafe: you clown -- name-calling\nsafe: nice day"' not in page
    )  # textarea, not an attribute
    assert "unsafe: you clown -- name-calling" in page

    snapshot = snapshot_publish(
        org_id=tenant.org.pk, rows=toxicity_rows(10, with_topic=False), heads=[TOXICITY]
    )
    fake.script(strict_judge(("idiot", "moron")))
    evaluated = client.post(f"{page_url}/evaluate", {"version": "1", "snapshot": str(snapshot)})
    assert evaluated.status_code == 302
    evaluation = client.get(evaluated["Location"]).content.decode()
    assert "Confusion matrix" in evaluation and "Any flagged category counts as" in evaluation
    # The disagreements: three insults the policy let pass ("loser", "fool", "jerk").
    assert evaluation.count('<span class="pill ok">safe</span>') == 3 and "you stupid fool" in evaluation

    assert 'class="chart pr-chart" data-label="toxic"' in evaluation and "evaluation-metrics" in evaluation

    edit = form(fake, **{"category-0-violates": "idiot, moron, loser, fool, jerk", "api_key": ""})
    saved = client.post(page_url, edit)
    assert saved.status_code == 302 and saved["Location"].endswith("?saved=2")
    fake.script(strict_judge())
    diff = client.get(f"{page_url}/diff", {"snapshot": snapshot, "from_version": 1, "to_version": 2})
    body = diff.content.decode()
    assert diff.status_code == 200 and "3 of 10 rows flipped" in body
    assert "Calls the person a jerk." in body and "Friendly small talk." in body
    assert PolicyEvaluation.objects.unscoped().filter(org_id=tenant.org.pk).count() == 2


def test_a_bad_form_says_what_is_wrong_and_keeps_the_input(tenant: Tenant, fake: FakeLlm) -> None:
    client = browser(tenant)
    response = client.post(
        f"/console/{tenant.slug}/policies/new", form(fake, **{"category-0-examples": "maybe: hmm"})
    )
    assert response.status_code == 400
    page = response.content.decode()
    assert "line 1: start an example with" in page and "Name-calling aimed at a person." in page
    response = client.post(f"/console/{tenant.slug}/policies/new", form(fake, **{"category-0-name": "safe"}))
    assert response.status_code == 400 and "reads as" in response.content.decode()


@pytest.mark.cross_tenant(
    "console-policies",
    "console-policy-create",
    "console-policy",
    "console-policy-evaluate",
    "console-policy-evaluation",
    "console-policy-diff",
)
def test_policy_pages_of_another_org_are_404(tenant: Tenant, victim: Tenant, fake: FakeLlm) -> None:
    victim_browser = browser(victim)
    created = victim_browser.post(f"/console/{victim.slug}/policies/new", form(fake))
    policy_url = created["Location"]
    snapshot = snapshot_publish(
        org_id=victim.org.pk, rows=toxicity_rows(4, with_topic=False), heads=[TOXICITY]
    )
    fake.script(strict_judge())
    evaluation_url = victim_browser.post(f"{policy_url}/evaluate", {"snapshot": str(snapshot)})["Location"]
    attacker = browser(tenant)
    for url in ["/policies", "/policies/new"]:
        assert_not_found(attacker.get(f"/console/{victim.slug}{url}"))
    policy_path = re.sub(rf"^/console/{victim.slug}", "", policy_url)
    evaluation_path = re.sub(rf"^/console/{victim.slug}", "", evaluation_url)
    for slug in (victim.slug, tenant.slug):
        assert_not_found(attacker.get(f"/console/{slug}{policy_path}"))
        assert_not_found(attacker.get(f"/console/{slug}{evaluation_path}"))
        assert_not_found(attacker.get(f"/console/{slug}{policy_path}/diff"))
        assert_not_found(attacker.post(f"/console/{slug}{policy_path}/evaluate", {"snapshot": str(snapshot)}))
