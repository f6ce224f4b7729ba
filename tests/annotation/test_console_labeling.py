"""The console's Labeling pages: describe labels, try a sample with the similarity labeler, review one row at a
time with the suggestion preselected, accept; another org's pages answer 404."""

from __future__ import annotations

import re

import pytest

from arbiter.config.routes import page_path
from arbiter.testing.tenants import Tenant, assert_not_found
from tests.annotation.conftest import AnnotationApi, comments_csv, labels_to_dataset

pytestmark = pytest.mark.django_db(databases="__all__")


def test_a_person_describes_labels_tries_ten_reviews_and_accepts(tenant: Tenant, api: AnnotationApi) -> None:
    dataset = api.dataset(comments_csv(12).replace(b"comment,toxicity", b"comment,note"))
    person = tenant.session_client()
    org = tenant.slug
    listing = person.get(page_path("console-labeling", org=org))
    assert listing.status_code == 200 and dataset["name"] in listing.content.decode()
    # The Labeling link in the navigation.
    assert f'href="/console/{org}/labeling"' in listing.content.decode()

    page = page_path("console-labeling-dataset", org=org, dataset_id=dataset["id"])
    saved = person.post(
        page,
        {
            "action": "schema",
            "head": "toxicity",
            "label_name": ["toxic", "safe", ""],
            "label_code": ["1", "0", ""],
            "label_description": [
                "insults and hostility towards a person",
                "friendly, polite conversation",
                "",
            ],
        },
    )
    assert saved.status_code == 302
    ran = person.post(
        page,
        {"action": "run", "head": "toxicity", "provider": "similarity", "rows": "sample", "sample": "10"},
        follow=True,
    )
    body = ran.content.decode()
    assert "10 of 10 rows labeled" in body and "insults and hostility" in body

    review = page_path("console-labeling-review", org=org, dataset_id=dataset["id"])
    shown = person.get(review, {"head": "toxicity"}).content.decode()
    checked = re.search(r'value="(\w+)" data-key="\d" checked', shown)
    assert checked is not None and "0 of 12 rows labeled" in shown
    number = int(re.search(r'name="row" value="(\d+)"', shown).group(1))
    person.post(f"{review}?head=toxicity", {"head": "toxicity", "row": number, "labels": [checked.group(1)]})
    labels_to_dataset()
    row = next(r for r in api.dataset_rows(dataset["id"]) if r["number"] == number)
    assert row["labels"]["toxicity"] == [checked.group(1)]
    job_id = int(re.search(r'data-job="(\d+)"', body).group(1))
    accepted = person.post(
        page, {"action": "accept", "head": "toxicity", "job": job_id, "min_score": "0"}, follow=True
    )
    assert "suggestions accepted" in accepted.content.decode()


@pytest.mark.cross_tenant("console-labeling", "console-labeling-dataset", "console-labeling-review")
def test_another_orgs_labeling_pages_are_404(tenant: Tenant, victim: Tenant) -> None:
    dataset = AnnotationApi(victim).dataset(comments_csv(4))
    attacker = tenant.session_client()
    for org in (victim.slug, tenant.slug):
        assert_not_found(
            attacker.get(page_path("console-labeling-dataset", org=org, dataset_id=dataset["id"]))
        )
        assert_not_found(
            attacker.get(page_path("console-labeling-review", org=org, dataset_id=dataset["id"]))
        )
    assert_not_found(attacker.get(page_path("console-labeling", org=victim.slug)))
    assert (
        dataset["name"] + "<"
        not in attacker.get(page_path("console-labeling", org=tenant.slug)).content.decode()
    )


def test_the_rows_grid_filters_by_label_source(tenant: Tenant, api: AnnotationApi) -> None:
    dataset = api.dataset(comments_csv(6, labeled=2))
    api.schema(dataset["id"])
    job = api.job(dataset["id"], rows={"sample": 2, "seed": 5})
    api.post(f"/annotation-jobs/{job['id']}/accept", {"min_score": 0})
    labels_to_dataset()
    grid = page_path("console-dataset", org=tenant.slug, dataset_id=dataset["id"])
    person = tenant.session_client()
    page = person.get(grid, {"head": "toxicity", "source": "llm"}).content.decode()
    assert 'id="filter-source"' in page and '<option value="llm" selected>' in page
    accepted = {s["row"] for s in api.get(f"/annotation-jobs/{job['id']}/suggestions").json()["results"]}
    shown = {int(n) for n in re.findall(r'<tr id="row-(\d+)"', page)}
    assert shown == accepted, page
    imported = person.get(grid, {"head": "toxicity", "source": "import"}).content.decode()
    assert {int(n) for n in re.findall(r'<tr id="row-(\d+)"', imported)} == {1, 2}
