"""Several annotators per row: a head's `overlap` says how many different people label each row; they label
blind to each other, the majority is accepted, a tie comes back in the queue; agreement per head is Cohen's
kappa for two people and Krippendorff's alpha for more (checked against numbers computed by hand)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from arbiter.config.routes import page_path
from arbiter.testing.tenants import Tenant, assert_not_found
from tests.annotation.conftest import AnnotationApi, comments_csv, labels_to_dataset

pytestmark = pytest.mark.django_db(databases="__all__")

T, S = "toxic", "safe"


class Person:
    """One member of the org, signed in to the console session the review queue is used from."""

    def __init__(self, tenant: Tenant, dataset_id: int, user: Any = None) -> None:
        self.tenant, self.dataset_id = tenant, dataset_id
        self.client = tenant.session_client(user)

    def next(self, after: int = 0) -> Any:
        response = self.client.get(
            self.tenant.url(f"/datasets/{self.dataset_id}/review/next"), {"head": "toxicity", "after": after}
        )
        assert response.status_code == 200, response.content
        return response.json()

    def label(self, row: int, label: str) -> Any:
        response = self.client.post(
            self.tenant.url(f"/datasets/{self.dataset_id}/review/{row}"),
            {"head": "toxicity", "labels": [label]},
            format="json",
        )
        assert response.status_code == 200, response.content
        return response.json()


def overlap(api: AnnotationApi, dataset_id: int, people: int) -> Any:
    return api.client.put(
        api.url(f"/datasets/{dataset_id}/review"), {"head": "toxicity", "overlap": people}, format="json"
    )


def labeled(api: AnnotationApi, dataset_id: int) -> dict[int, list[str]]:
    return {
        r["number"]: r["labels"]["toxicity"]
        for r in api.dataset_rows(dataset_id)
        if r["labels"].get("toxicity")
    }


def people_agreement(api: AnnotationApi, dataset_id: int) -> Any:
    response = api.get(f"/datasets/{dataset_id}/agreement", head="toxicity")
    assert response.status_code == 200, response.content
    return response.json()["annotators"]


def test_two_annotators_label_blind_agree_or_tie_and_kappa_is_what_the_hand_says(
    api: AnnotationApi, tenant: Tenant
) -> None:
    dataset = api.dataset(comments_csv(6))
    api.schema(dataset["id"])
    assert api.get(f"/datasets/{dataset['id']}/review", head="toxicity").json()["overlap"] == 1
    assert overlap(api, dataset["id"], 2).json() == {"head": "toxicity", "overlap": 2}
    assert api.get(f"/datasets/{dataset['id']}/review", head="toxicity").json()["overlap"] == 2
    bob, _ = tenant.add_member("member")
    alice, bobs = Person(tenant, dataset["id"]), Person(tenant, dataset["id"], bob)

    first = alice.label(1, T)
    assert (first["state"], first["annotators"], first["overlap"]) == ("pending", 1, 2)
    assert "toxicity" not in first["labels"]
    assert labels_to_dataset() == 0  # nothing reaches the dataset with one vote of two

    # Blind: Bob is asked about row 1 without a trace of Alice's label; Alice moves on to row 2.
    seen = bobs.next()
    assert seen["row"]["number"] == 1 and "toxicity" not in seen["row"]["labels"]
    assert seen["review"] == {"overlap": 2, "annotators": 1, "disputed": False, "mine": None}
    assert alice.next()["row"]["number"] == 2
    assert people_agreement(api, dataset["id"])["rows"] == 0

    alices = [T, T, S, S, T, S]
    bobs_ = [T, S, S, S, T, T]
    states = {}
    for row, label in enumerate(alices[1:], start=2):
        alice.label(row, label)
    for row, label in enumerate(bobs_, start=1):
        states[row] = bobs.label(row, label)["state"]
    assert states == {
        1: "accepted",
        2: "disputed",
        3: "accepted",
        4: "accepted",
        5: "accepted",
        6: "disputed",
    }
    labels_to_dataset()
    assert labeled(api, dataset["id"]) == {1: [T], 3: [S], 4: [S], 5: [T]}
    row = next(r for r in api.dataset_rows(dataset["id"]) if r["number"] == 1)
    assert row["label_sources"] == {"toxicity": "human:consensus"}

    # By hand: 4 of 6 rows agree (66.67%); p_o = 4/6, both said toxic 3 times of 6, p_e = .5*.5 + .5*.5 = .5,
    # kappa = (2/3 - 1/2) / (1 - 1/2) = 1/3.
    assert people_agreement(api, dataset["id"]) == {
        "overlap": 2,
        "annotators": 2,
        "rows": 6,
        "percent_agreement": 66.67,
        "method": "cohen_kappa",
        "value": 0.3333,
    }

    # The ties come back to both, each seeing only their own vote.
    again = alice.next()
    assert again["row"]["number"] == 2
    assert again["review"] == {"overlap": 2, "annotators": 2, "disputed": True, "mine": [T]}
    assert bobs.next()["review"]["mine"] == [S]
    # A third person settles row 2 (2 to 1); Alice changes her mind on row 6 and both now agree.
    carol, _ = tenant.add_member("member")
    carols = Person(tenant, dataset["id"], carol)
    assert carols.next()["row"]["number"] == 2
    assert carols.label(2, T)["state"] == "accepted"
    assert alice.label(6, T)["state"] == "accepted"
    labels_to_dataset()
    assert labeled(api, dataset["id"]) == {1: [T], 2: [T], 3: [S], 4: [S], 5: [T], 6: [T]}
    assert alice.next()["row"] is None and carols.next()["row"] is None


def test_three_annotators_majority_and_krippendorffs_alpha(api: AnnotationApi, tenant: Tenant) -> None:
    dataset = api.dataset(comments_csv(4))
    api.schema(dataset["id"])
    overlap(api, dataset["id"], 3)
    people = [Person(tenant, dataset["id"])] + [
        Person(tenant, dataset["id"], tenant.add_member("member")[0]) for _ in range(2)
    ]
    votes = {1: [T, T, T], 2: [T, T, S], 3: [S, S, S], 4: [T, S, S]}
    for row, answers in votes.items():
        states = [person.label(row, answer)["state"] for person, answer in zip(people, answers, strict=True)]
        assert states == ["pending", "pending", "accepted"]
    labels_to_dataset()
    assert labeled(api, dataset["id"]) == {1: [T], 2: [T], 3: [S], 4: [S]}
    # By hand (nominal alpha, 3 values per row, pairs weighted 1/(3-1)): o_tt = 3+1 = 4, o_ss = 3+1 = 4,
    # o_ts = o_st = 1+1 = 2; n = 12, n_t = n_s = 6. D_o = 4/12, D_e = 2*6*6/(12*11) = 6/11,
    # alpha = 1 - (1/3)/(6/11) = 7/18 = 0.3889. Rows 1 and 3 are unanimous: 50%.
    assert people_agreement(api, dataset["id"]) == {
        "overlap": 3,
        "annotators": 3,
        "rows": 4,
        "percent_agreement": 50.0,
        "method": "krippendorff_alpha",
        "value": 0.3889,
    }
    # The console's Labeling page shows the same numbers next to the overlap.
    page = (
        people[0]
        .client.get(
            page_path("console-labeling-dataset", org=tenant.slug, dataset_id=dataset["id"]),
            {"head": "toxicity"},
        )
        .content.decode()
    )
    shown = re.search(r'<p id="annotator-agreement">(.*?)</p>', page)
    assert (
        shown is not None and "4 rows labeled by several people (3 annotators): 50.0% agree" in shown.group(1)
    )
    assert "Krippendorff's α 0.3889" in shown.group(1) and 'name="overlap"' in page


def test_the_console_queue_keeps_votes_blind_and_lowering_the_overlap_decides(
    api: AnnotationApi, tenant: Tenant
) -> None:
    dataset = api.dataset(comments_csv(3))
    api.schema(dataset["id"])
    page = page_path("console-labeling-dataset", org=tenant.slug, dataset_id=dataset["id"])
    owner = tenant.session_client()
    saved = owner.post(page, {"action": "overlap", "head": "toxicity", "overlap": "3"}, follow=True)
    assert "done when 3 different people label it" in saved.content.decode()
    review = page_path("console-labeling-review", org=tenant.slug, dataset_id=dataset["id"])
    suggested = api.get(f"/datasets/{dataset['id']}/review/next", head="toxicity").json()["suggestion"][
        "label"
    ]
    vote = S if suggested == T else T  # the owner disagrees with the suggestion, so what is preselected tells
    voted = owner.post(
        f"{review}?head=toxicity", {"head": "toxicity", "row": 1, "labels": [vote]}, follow=True
    )
    assert "1 of 3 people labeled it" in voted.content.decode()
    other, _ = tenant.add_member("member")
    shown = tenant.session_client(other).get(review, {"head": "toxicity"}).content.decode()
    # The other person gets row 1 with the suggestion preselected, not the owner's vote.
    assert 'name="row" value="1"' in shown and "1 of 3 people labeled this row" in shown
    assert re.search(rf'value="{suggested}" data-key="\d" checked', shown), shown
    tenant.session_client(other).post(
        f"{review}?head=toxicity", {"head": "toxicity", "row": 1, "labels": [vote]}
    )
    assert labels_to_dataset() == 0
    # Two of two now suffice: the row already labeled by two people is decided at once.
    assert overlap(api, dataset["id"], 2).status_code == 200
    labels_to_dataset()
    assert labeled(api, dataset["id"]) == {1: [vote]}


def test_a_bad_overlap_is_refused_naming_the_field(api: AnnotationApi) -> None:
    dataset = api.dataset(comments_csv(2))
    no_schema = overlap(api, dataset["id"], 2)
    assert no_schema.status_code == 400 and no_schema.json()["error"]["code"] == "no_label_schema"
    api.schema(dataset["id"])
    for bad in (0, 21, "two"):
        response = overlap(api, dataset["id"], bad)  # type: ignore[arg-type]
        assert response.status_code == 400 and "overlap" in response.json()["error"]["message"], (
            response.content
        )
    assert api.get(f"/datasets/{dataset['id']}/review", head="toxicity").json()["overlap"] == 1
    assert api.get(f"/datasets/{dataset['id']}/review").status_code == 400


@pytest.mark.cross_tenant("dataset-review", "dataset-agreement")
def test_another_orgs_overlap_and_agreement_are_404(tenant: Tenant, victim: Tenant) -> None:
    owner = AnnotationApi(victim)
    dataset = owner.dataset(comments_csv(4))
    owner.schema(dataset["id"])
    overlap(owner, dataset["id"], 2)
    attacker = AnnotationApi(tenant, ["admin"])
    d = f"/datasets/{dataset['id']}"
    for org in (victim, tenant):
        c = attacker.client
        assert_not_found(c.get(org.url(f"{d}/review"), {"head": "toxicity"}))
        assert_not_found(c.put(org.url(f"{d}/review"), {"head": "toxicity", "overlap": 1}, format="json"))
        assert_not_found(c.get(org.url(f"{d}/agreement"), {"head": "toxicity"}))
    assert owner.get(f"{d}/review", head="toxicity").json()["overlap"] == 2
