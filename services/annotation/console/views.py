"""The console's Labeling pages: the datasets to label and the org's LLM providers; one dataset's label
descriptions, auto-labeling jobs (try 10 first), agreement and accepting; and the keyboard-first review queue."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from arbiter.api.errors import ApiError
from arbiter.config.routes import page_path
from arbiter.console.pages import org_page
from arbiter.tenancy.access import OrgAccess
from arbiter.tenancy.scopes import holds
from services.annotation import logic, selectors
from services.annotation.models import AnnotationJob, DatasetCopy


def _dataset(dataset_id: int) -> DatasetCopy:
    dataset = selectors.dataset_copy(dataset_id=dataset_id)
    if dataset is None:
        raise Http404
    return dataset


@org_page("datasets:read")
@require_http_methods(["GET", "POST"])
def labeling(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    if request.method == "POST":
        if not holds(access.scopes, "admin"):
            raise Http404
        try:
            provider = logic.provider_create(
                org_id=access.org_id,
                actor=access.actor,
                name=request.POST.get("name", "").strip(),
                base_url=request.POST.get("base_url", "").strip(),
                model=request.POST.get("model", "").strip(),
                api_key=request.POST.get("api_key", "").strip(),
            )
        except ApiError as error:
            messages.error(request, error.message)
        else:
            messages.success(request, f"LLM provider {provider.name!r} added; its key is stored encrypted.")
        return redirect(page_path("console-labeling", org=org))
    context = {
        "datasets": list(selectors.dataset_copies()),
        "providers": list(selectors.provider_list()),
        "deployments": list(selectors.deployment_list(live=True)),
        "quota": selectors.auto_label_quota(org_id=access.org_id),
        "is_admin": holds(access.scopes, "admin"),
    }
    return render(request, "annotation/labeling.html", context)


def _labels_from(post: Any) -> list[dict[str, Any]]:
    labels = []
    for name, code, description in zip(
        post.getlist("label_name"),
        post.getlist("label_code"),
        post.getlist("label_description"),
        strict=False,
    ):
        if name.strip():
            labels.append(
                {
                    "name": name,
                    "code": int(code) if code.strip().isdigit() else None,
                    "description": description,
                }
            )
    return labels


def _provider_from(post: Any) -> Any:
    """The labeler the run form names: `similarity`, `llm:<id>` or `deployment:<id>`."""
    chosen = str(post.get("provider", "similarity"))
    kind, _, number = chosen.partition(":")
    if kind == "llm":
        return {"id": int(number)}
    if kind == "deployment":
        return {"deployment": int(number)}
    return "similarity"


def _rows_from(post: Any) -> Any:
    rows: Any = post.get("rows", "unlabeled")
    return {"sample": int(post.get("sample") or 10)} if rows == "sample" else rows


def _estimate_text(estimate: dict[str, Any]) -> str:
    quota = estimate["quota"]
    left = (
        "no monthly limit"
        if quota["remaining"] is None
        else f"{quota['remaining']:,} of {quota['included']:,} automated annotations left this month "
        f"({quota['plan']} plan)"
    )
    calls = f", {estimate['calls']:,} LLM calls" if estimate["calls"] else ""
    verdict = "" if estimate["allowed"] else f" It would be refused: {estimate['refusal']}"
    return f"This job would label {estimate['rows']:,} rows{calls}; {left}.{verdict}"


@org_page("datasets:read")
@require_http_methods(["GET", "POST"])
def labeling_dataset(request: HttpRequest, dataset_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    dataset = _dataset(dataset_id)
    heads = [head["name"] for head in dataset.heads]
    head = request.GET.get("head") or request.POST.get("head") or (heads[0] if heads else "")
    here = page_path("console-labeling-dataset", org=org, dataset_id=dataset_id) + f"?head={head}"
    if request.method == "POST":
        if not holds(access.scopes, "datasets:write"):
            raise Http404
        action = request.POST.get("action")
        try:
            if action == "schema":
                saved = logic.label_schema_create(
                    org_id=access.org_id,
                    actor=access.actor,
                    dataset_id=dataset_id,
                    head=request.POST.get("head", "").strip(),
                    labels=_labels_from(request.POST),
                    multi_label=bool(request.POST.get("multi_label")),
                )
                here = (
                    page_path("console-labeling-dataset", org=org, dataset_id=dataset_id)
                    + f"?head={saved.head}"
                )
                messages.success(request, f"Labels of {saved.head!r} saved as version {saved.version}.")
            elif action == "estimate":
                estimate = selectors.job_estimate(
                    org_id=access.org_id,
                    dataset_id=dataset_id,
                    head=head,
                    provider=_provider_from(request.POST),
                    rows=_rows_from(request.POST),
                )
                messages.info(request, _estimate_text(estimate))
            elif action == "run":
                provider = _provider_from(request.POST)
                rows = _rows_from(request.POST)
                job = logic.job_create(
                    org_id=access.org_id,
                    actor=access.actor,
                    dataset_id=dataset_id,
                    head=head,
                    provider=provider,
                    rows=rows,
                )
                messages.success(
                    request, f"Job {job.pk} is {job.state}: {job.done} of {job.total} rows labeled."
                )
            elif action == "accept":
                job = selectors.job_list(dataset_id=dataset_id).get(pk=int(request.POST.get("job", "0")))
                result = logic.suggestions_accept(
                    job=job, actor=access.actor, min_score=float(request.POST.get("min_score") or 0)
                )
                messages.success(
                    request,
                    f"{result['accepted']} suggestions accepted; {result['kept_labels']} rows kept the labels they had.",
                )
            elif action == "overlap":
                overlap = logic.review_overlap_set(
                    org_id=access.org_id,
                    actor=access.actor,
                    dataset_id=dataset_id,
                    head=head,
                    overlap=int(request.POST.get("overlap") or 1),
                )
                messages.success(
                    request,
                    f"Each row of {head!r} is done when {overlap} "
                    + ("person labels it." if overlap == 1 else "different people label it."),
                )
            elif action == "cancel":
                logic.job_cancel(
                    job=selectors.job_list(dataset_id=dataset_id).get(pk=int(request.POST.get("job", "0")))
                )
        except ApiError as error:
            messages.error(request, error.message)
        except (AnnotationJob.DoesNotExist, ValueError):
            messages.error(request, "That job or number is not valid.")
        return redirect(here)
    schema = selectors.label_schema_current(dataset_id=dataset_id, head=head) if head else None
    jobs = list(selectors.job_list(dataset_id=dataset_id).filter(head=head)[:20])
    context = {
        "dataset": dataset,
        "heads": heads,
        "head": head,
        "schema": schema,
        # A new head gets room for two labels (the fewest a classifier needs), an existing one for one more.
        "labels": (schema.labels if schema else [])
        + [{"name": "", "code": None, "description": ""}] * (1 if schema else 2),
        "versions": list(selectors.label_schema_list(dataset_id=dataset_id, head=head)) if head else [],
        "jobs": jobs,
        "people": selectors.annotator_agreement(dataset_id=dataset_id, head=head) if schema else None,
        "providers": list(selectors.provider_list()),
        "deployments": list(selectors.deployment_list(live=True)),
        "quota": selectors.auto_label_quota(org_id=access.org_id),
        "can_write": holds(access.scopes, "datasets:write"),
    }
    return render(request, "annotation/dataset.html", context)


@org_page("datasets:read")
@require_http_methods(["GET", "POST"])
def review(request: HttpRequest, dataset_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    dataset = _dataset(dataset_id)
    head = request.GET.get("head") or request.POST.get("head") or ""
    after = int(request.GET.get("after") or 0) if (request.GET.get("after") or "0").isdigit() else 0
    job_id = request.GET.get("job") or request.POST.get("job") or ""
    # Rows sent for review (a policy's disagreements) are walked as one job's pending suggestions.
    job = selectors.review_job(job_id, dataset_id=dataset_id, head=head)
    base = page_path("console-labeling-review", org=org, dataset_id=dataset_id)
    base = f"{base}?job={job.pk}&" if job is not None else f"{base}?"
    if request.method == "POST":
        if not holds(access.scopes, "datasets:write"):
            raise Http404
        number = int(request.POST.get("row", "0") or 0)
        try:
            saved = logic.review_save(
                org_id=access.org_id,
                actor=access.actor,
                user_source=f"human:user:{access.user_id}",
                dataset_id=dataset_id,
                row_number=number,
                head=head,
                labels=request.POST.getlist("labels"),
                text=request.POST.get("text") or None,
            )
        except ApiError as error:
            messages.error(request, error.message)
            return redirect(f"{base}head={head}&after={max(number - 1, 0)}")
        if saved.state == "pending":
            messages.info(
                request,
                f"Row {number}: your vote is kept; {saved.annotators} of {saved.overlap} people labeled it.",
            )
        elif saved.state == "disputed":
            messages.warning(request, f"Row {number}: the votes tie; it stays in the queue until they agree.")
        return redirect(f"{base}head={head}&after={number}")
    schema = selectors.label_schema_current(dataset_id=dataset_id, head=head) if head else None
    item = (
        selectors.review_next(
            dataset_id=dataset_id, head=head, after=after, annotator=f"human:user:{access.user_id}", job=job
        )
        if schema
        else None
    )
    suggestion: dict[str, Any] | None = None
    if item is not None and schema is not None:
        if item.suggestion is not None:
            found = item.suggestion
            suggestion = {
                "labels": found.labels,
                "score": found.score,
                "scores": found.scores,
                "agent": found.agent,
                "reason": found.message,
            }
        elif item.row.text:
            suggestion = selectors.similarity_suggest(schema=schema, text=item.row.text)
    choices = [
        {
            "index": i + 1,
            "name": label["name"],
            "description": label["description"],
            "score": (suggestion or {}).get("scores", {}).get(label["name"]),
            # Your own earlier vote (a disputed row) comes first; never another person's.
            "suggested": label["name"] in item.mine
            if item is not None and item.mine
            else bool(suggestion and label["name"] in suggestion["labels"]),
        }
        for i, label in enumerate(schema.labels if schema else [])
    ]
    context = {
        "dataset": dataset,
        "head": head,
        "schema": schema,
        "item": item,
        "job": job,
        "suggestion": suggestion,
        "choices": choices,
        "percent": (100 * item.labeled // item.total) if item and item.total else 100,
        "can_write": holds(access.scopes, "datasets:write"),
    }
    return render(request, "annotation/review.html", context)
