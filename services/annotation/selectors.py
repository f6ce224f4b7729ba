"""Reads of the annotation service. Every query goes through the org-scoped managers."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from arbiter.api.errors import ApiError
from arbiter.entitlements import entitlements_for
from services.annotation.models import (
    Annotation,
    AnnotationJob,
    DatasetCopy,
    DeploymentCopy,
    Entitlement,
    LabelSchema,
    LlmProvider,
    ReviewSetting,
    RowCopy,
    Suggestion,
)


def provider_list() -> QuerySet[LlmProvider]:
    return LlmProvider.objects.all()


def label_schema_list(*, dataset_id: int | None = None, head: str | None = None) -> QuerySet[LabelSchema]:
    schemas = LabelSchema.objects.all()
    if dataset_id is not None:
        schemas = schemas.filter(dataset_id=dataset_id)
    if head is not None:
        schemas = schemas.filter(head=head)
    return schemas


def label_schema_current(*, dataset_id: int, head: str) -> LabelSchema | None:
    return label_schema_list(dataset_id=dataset_id, head=head).order_by("-version").first()


def dataset_copy(*, dataset_id: int) -> DatasetCopy | None:
    return DatasetCopy.objects.filter(dataset_id=dataset_id).first()


def dataset_copies() -> QuerySet[DatasetCopy]:
    return DatasetCopy.objects.all()


def deployment_list(*, live: bool | None = None) -> QuerySet[DeploymentCopy]:
    deployments = DeploymentCopy.objects.all()
    return deployments.filter(live=live) if live is not None else deployments


def job_list(*, dataset_id: int | None = None) -> QuerySet[AnnotationJob]:
    jobs = AnnotationJob.objects.select_related("schema", "provider")
    return jobs.filter(dataset_id=dataset_id) if dataset_id is not None else jobs


def review_job(value: str | None, *, dataset_id: int, head: str) -> AnnotationJob | None:
    """The job a review walks (`?job=`): one of this dataset's head, else None (the caller says why)."""
    if not value or not value.isdigit():
        return None
    return job_list(dataset_id=dataset_id).filter(head=head, pk=int(value)).first()


def job_suggestions(*, job: AnnotationJob, state: str | None = None) -> QuerySet[Suggestion]:
    suggestions = Suggestion.objects.filter(job=job)
    return suggestions.filter(state=state) if state else suggestions


def _labeled(head: str) -> Q:
    return Q(labels__has_key=head)


def rows_unlabeled(*, dataset_id: int, head: str) -> QuerySet[RowCopy]:
    return RowCopy.objects.filter(dataset_id=dataset_id).exclude(_labeled(head))


ROW_SETS = ("unlabeled", "labeled", "all")


def rows_selected(*, dataset_id: int, head: str, spec: Any) -> list[int]:
    """The row numbers a job's `rows` names (see `AnnotationJob.rows_spec`); raises ApiError on a bad spec."""
    rows = RowCopy.objects.filter(dataset_id=dataset_id)
    if isinstance(spec, str):
        spec = {"set": spec}
    if not isinstance(spec, Mapping):
        raise ApiError(
            status=400,
            code="invalid",
            message='rows: "unlabeled", "all", "labeled", {"sample": N} or {"filter": {...}}',
        )
    chosen = spec.get("set", spec.get("from", "unlabeled"))
    if chosen not in ROW_SETS:
        raise ApiError(
            status=400, code="invalid", message=f"rows: choose one of {', '.join(ROW_SETS)}, not {chosen!r}"
        )
    if chosen == "unlabeled":
        rows = rows.exclude(_labeled(head))
    elif chosen == "labeled":
        rows = rows.filter(_labeled(head))
    if "filter" in spec:
        wanted = spec["filter"]
        if not isinstance(wanted, Mapping) or not isinstance(wanted.get("q", ""), str):
            raise ApiError(
                status=400, code="invalid", message='rows.filter: {"q": "words the text contains"}'
            )
        if wanted.get("q"):
            rows = rows.filter(text__icontains=wanted["q"])
    numbers = list(rows.order_by("number").values_list("number", flat=True))
    if "sample" in spec:
        size = spec["sample"]
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ApiError(status=400, code="invalid", message="rows.sample: a number of rows, 1 or more")
        seed = spec.get("seed", 0)
        numbers = sorted(random.Random(seed).sample(numbers, min(size, len(numbers))))  # noqa: S311 - sampling
    return numbers


def auto_label_quota(*, org_id: int) -> dict[str, Any]:
    """The org's automated annotations this month, as billing last announced them."""
    now = timezone.now()
    entitlements = entitlements_for(model=Entitlement, org_id=org_id).effective(now)
    meter = entitlements.meters["auto_label"]
    return {
        "meter": "auto_label",
        "plan": entitlements.plan,
        "included": meter.included,
        "used": meter.used,
        "remaining": None if meter.included is None else max(meter.included - meter.used, 0),
        "overage": meter.overage and entitlements.payment_ok,
        "period_end": entitlements.period_end,
    }


def job_estimate(*, org_id: int, dataset_id: int, head: str, provider: Any, rows: Any) -> dict[str, Any]:
    """What a job would use before it starts: its rows (automated annotations), its LLM calls, the quota left
    this month, and whether it would be refused (and why)."""
    numbers = (
        rows_selected(dataset_id=dataset_id, head=head, spec=rows)
        if dataset_copy(dataset_id=dataset_id)
        else []
    )
    calls = 0
    if isinstance(provider, Mapping) and "id" in provider:
        calls = RowCopy.objects.filter(dataset_id=dataset_id, number__in=numbers).exclude(text=None).count()
    refusal: str | None = None
    try:
        entitlements_for(model=Entitlement, org_id=org_id).effective(timezone.now()).check(
            meter="auto_label", units=max(len(numbers), 1)
        )
    except ApiError as error:
        refusal = error.message
    return {
        "rows": len(numbers),
        "calls": calls,
        "quota": auto_label_quota(org_id=org_id),
        "allowed": refusal is None,
        "refusal": refusal,
    }


def review_overlap(*, dataset_id: int, head: str) -> int:
    """How many different people label each row of the head before it is done (1 unless set)."""
    setting = ReviewSetting.objects.filter(dataset_id=dataset_id, head=head).first()
    return setting.overlap if setting else 1


def head_annotations(*, dataset_id: int, head: str) -> QuerySet[Annotation]:
    return Annotation.objects.filter(dataset_id=dataset_id, head=head)


def rows_disputed(*, dataset_id: int, head: str, overlap: int) -> QuerySet[Any, Any]:
    """The numbers (a `values` query) of the head's rows not done although `overlap` people labeled them:
    their votes tie."""
    return (
        head_annotations(dataset_id=dataset_id, head=head)
        .filter(row_number__in=rows_unlabeled(dataset_id=dataset_id, head=head).values("number"))
        .values("row_number")
        .annotate(people=Count("annotator"))
        .filter(people__gte=overlap)
        .values("row_number")
    )


@dataclass(frozen=True)
class ReviewItem:
    row: RowCopy
    suggestion: Suggestion | None
    labeled: int
    total: int
    overlap: int = 1
    # How many people labeled the row so far, whether their votes tie, and the asking person's own labels:
    # never anyone else's (annotators are blind to each other until the row is done).
    annotators: int = 0
    disputed: bool = False
    mine: list[str] | None = None


def review_next(
    *,
    dataset_id: int,
    head: str,
    after: int = 0,
    annotator: str | None = None,
    job: AnnotationJob | None = None,
) -> ReviewItem | None:
    """The next row for `annotator` to review: the first row after `after` that is not done and that they have
    not labeled yet (or whose votes tie), with its newest suggestion. With a `job`, the rows of its suggestions
    still pending instead, labeled or not (rows sent for review: a label may be what is in doubt)."""
    overlap = review_overlap(dataset_id=dataset_id, head=head)
    if job is not None:
        pending = job_suggestions(job=job, state=Suggestion.PENDING).values("row_number")
        rows = RowCopy.objects.filter(dataset_id=dataset_id, number__in=pending, number__gt=after)
    else:
        rows = rows_unlabeled(dataset_id=dataset_id, head=head).filter(number__gt=after)
    if annotator is not None and job is None:
        mine = head_annotations(dataset_id=dataset_id, head=head).filter(annotator=annotator)
        disputed = rows_disputed(dataset_id=dataset_id, head=head, overlap=overlap)
        rows = rows.exclude(Q(number__in=mine.values("row_number")) & ~Q(number__in=disputed))
    row = rows.order_by("number").first()
    total = RowCopy.objects.filter(dataset_id=dataset_id).count()
    labeled = RowCopy.objects.filter(dataset_id=dataset_id).filter(_labeled(head)).count()
    if row is None:
        return None
    suggestions = Suggestion.objects.filter(
        dataset_id=dataset_id, head=head, row_number=row.number, state=Suggestion.PENDING
    )
    suggestion = (suggestions.filter(job=job) if job is not None else suggestions).order_by("-id").first()
    votes = dict(
        head_annotations(dataset_id=dataset_id, head=head)
        .filter(row_number=row.number)
        .values_list("annotator", "labels")
    )
    return ReviewItem(
        row=row,
        suggestion=suggestion,
        labeled=labeled,
        total=total,
        overlap=overlap,
        annotators=len(votes),
        disputed=bool(votes) and len(votes) >= overlap,
        mine=votes.get(annotator) if annotator is not None else None,
    )


def agreement(*, truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, Cohen's kappa, per-label precision/recall/F1 and the confusion matrix of `predicted` against
    `truth` (one label per row)."""
    from sklearn.metrics import (
        accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    names = list(labels)
    if not truth:
        return {
            "rows": 0,
            "accuracy": None,
            "kappa": None,
            "per_label": {},
            "confusion": {"labels": names, "matrix": []},
        }
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=names, zero_division=0
    )
    kappa = cohen_kappa_score(truth, predicted, labels=names) if len(set(truth) | set(predicted)) > 1 else 1.0
    return {
        "rows": len(truth),
        "accuracy": round(float(accuracy_score(truth, predicted)), 4),
        "kappa": round(float(kappa), 4),
        "per_label": {
            name: {
                "precision": round(float(p), 4),
                "recall": round(float(r), 4),
                "f1": round(float(f), 4),
                "support": int(s),
            }
            for name, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
        },
        "confusion": {"labels": names, "matrix": confusion_matrix(truth, predicted, labels=names).tolist()},
    }


def job_agreement(*, job: AnnotationJob) -> dict[str, Any]:
    """How the job's suggestions agree with the human labels of its rows that have them."""
    head = job.head
    human = {
        number: labels[head]
        for number, labels in RowCopy.objects.filter(dataset_id=job.dataset_id, number__in=job.row_numbers)
        .filter(_labeled(head))
        .values_list("number", "labels")
        if labels.get(head)
    }
    truth: list[str] = []
    predicted: list[str] = []
    for number, labels in (
        job_suggestions(job=job).exclude(state=Suggestion.FAILED).values_list("row_number", "labels")
    ):
        if number in human and labels:
            truth.append(human[number][0])
            predicted.append(labels[0])
    return agreement(truth=truth, predicted=predicted, labels=job.schema.label_names)


def jobs_compare(*, job: AnnotationJob, other: AnnotationJob) -> list[dict[str, Any]]:
    """Rows both jobs labeled whose labels differ ("flips"), by row number."""
    mine = dict(job_suggestions(job=job).exclude(state=Suggestion.FAILED).values_list("row_number", "labels"))
    theirs = dict(
        job_suggestions(job=other).exclude(state=Suggestion.FAILED).values_list("row_number", "labels")
    )
    return [
        {"row": number, "labels": mine[number], "other_labels": theirs[number]}
        for number in sorted(set(mine) & set(theirs))
        if mine[number] != theirs[number]
    ]


def head_agreement(*, dataset_id: int, head: str) -> dict[str, Any]:
    """Agreement per head between people's labels and the newest completed job's suggestions (Cohen's kappa)."""
    job = (
        job_list(dataset_id=dataset_id)
        .filter(head=head, state=AnnotationJob.COMPLETED)
        .order_by("-id")
        .first()
    )
    people = annotator_agreement(dataset_id=dataset_id, head=head)
    if job is None:
        return {"head": head, "job": None, "agent": None, "agreement": None, "annotators": people}
    return {
        "head": head,
        "job": job.pk,
        "agent": job.agent,
        "agreement": job_agreement(job=job),
        "annotators": people,
    }


def _vote(labels: Sequence[str]) -> str:
    """One person's answer for a row as one value: a multi-label head's set of labels counts as a whole."""
    return "|".join(sorted(labels))


def annotator_agreement(*, dataset_id: int, head: str) -> dict[str, Any]:
    """How people agree on the head's rows that several of them labeled: the raw percent of those rows where
    everyone gave the same answer, and chance-corrected, Cohen's kappa (two annotators) or Krippendorff's alpha
    (nominal, three or more; a row may miss some of them). None where it is undefined (no rows, or every answer
    the same)."""
    import krippendorff
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    votes: dict[int, dict[str, str]] = {}
    for number, annotator, labels in head_annotations(dataset_id=dataset_id, head=head).values_list(
        "row_number", "annotator", "labels"
    ):
        votes.setdefault(number, {})[annotator] = _vote(labels)
    shared = {number: answers for number, answers in sorted(votes.items()) if len(answers) >= 2}
    people = sorted({annotator for answers in shared.values() for annotator in answers})
    body: dict[str, Any] = {
        "overlap": review_overlap(dataset_id=dataset_id, head=head),
        "annotators": len(people),
        "rows": len(shared),
        "percent_agreement": None,
        "method": None,
        "value": None,
    }
    if not shared:
        return body
    agreed = sum(len(set(answers.values())) == 1 for answers in shared.values())
    body["percent_agreement"] = round(100 * agreed / len(shared), 2)
    values = sorted({answer for answers in shared.values() for answer in answers.values()})
    if len(people) == 2:
        first, second = people
        body["method"] = "cohen_kappa"
        if len(values) > 1:
            kappa = cohen_kappa_score(
                [answers[first] for answers in shared.values()],
                [answers[second] for answers in shared.values()],
            )
            body["value"] = None if np.isnan(kappa) else round(float(kappa), 4)
    else:
        body["method"] = "krippendorff_alpha"
        if len(values) > 1:
            code = {value: i for i, value in enumerate(values)}
            # Annotators by rows, NaN where a person did not label the row.
            matrix = [
                [code[answers[person]] if person in answers else np.nan for answers in shared.values()]
                for person in people
            ]
            alpha = krippendorff.alpha(
                reliability_data=np.array(matrix, dtype=float), level_of_measurement="nominal"
            )
            body["value"] = None if np.isnan(alpha) else round(float(alpha), 4)
    return body


def similarity_suggest(*, schema: LabelSchema, text: str) -> dict[str, Any]:
    """A suggestion computed now by the similarity labeler (the review queue's default without a job's)."""
    from arbiter.llm import LabelChoice
    from arbiter.llm.similarity import SimilarityLabeler

    labeler = SimilarityLabeler([LabelChoice(label["name"], label["description"]) for label in schema.labels])
    ranked = labeler.rank([text], multi_label=schema.multi_label)[0]
    return {
        "labels": ranked.labels,
        "score": ranked.score,
        "scores": ranked.scores,
        "agent": f"similarity:all-MiniLM-L6-v2@v{schema.version}",
    }
