"""Console pages of the dataset service: the dataset list, the upload wizard, the column mapping with its
preview, the rows grid (search, filters, inline relabel, add, delete), snapshots and their reports.

Every write goes through `logic`, every read through `selectors`, exactly as the JSON API does; import
progress is a partial the page polls (htmx).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, cast
from urllib.parse import urlencode

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import models
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRefresh

from arbiter.api.errors import ApiError
from arbiter.config.routes import page_path
from arbiter.console.forms import error_message
from arbiter.console.pages import org_page
from arbiter.images import image_blob_key, thumbnail_blob_key
from arbiter.storage import BlobNotFoundError
from arbiter.tenancy.access import OrgAccess
from arbiter.tenancy.scopes import holds
from services.dataset import conf, logic, selectors
from services.dataset.api.serializers import UploadOptionsSerializer, dataset_state, heads_data, row_data
from services.dataset.example import EXAMPLE_NAMES
from services.dataset.importing import FILE_FORMATS, ImportFileError
from services.dataset.importing.labels import LABEL_FORMATS
from services.dataset.importing.mapping import ROLES
from services.dataset.models import Dataset, Row, Snapshot

ROWS_PER_PAGE = 50
# Rows read to offer label choices for heads whose mapping does not list its labels.
LABEL_SAMPLE_ROWS = 5000
MAPPING_PREVIEW_ROWS = 10
LISTED_INVALID_ROWS = 200

ROLE_HELP = {
    "text": "what gets classified",
    "image": "an image URL to classify",
    "json": "data kept as is",
    "label": "a head of the model",
    "ignore": "not used",
}
FORMAT_HELP = {
    "single": "one label per cell (toxic)",
    "multi": "several labels per cell (insult|threat)",
    "code": "numbers that stand for labels (0, 1)",
    "score": "a score, labelled by a threshold (0.83)",
}


@dataclass(frozen=True)
class Step:
    label: str
    state: str  # "done", "current" or ""


def _wizard(current: int) -> list[Step]:
    labels = ["Upload", "Columns", "Snapshot", "Train"]
    return [
        Step(label, "done" if i < current else ("current" if i == current else ""))
        for i, label in enumerate(labels)
    ]


def _dataset(dataset_id: int) -> Dataset:
    try:
        return selectors.dataset_get(dataset_id=dataset_id)
    except models.ObjectDoesNotExist:
        raise Http404 from None


def _row(dataset: Dataset, number: int) -> Row:
    try:
        return selectors.row_get(dataset=dataset, number=number)
    except models.ObjectDoesNotExist:
        raise Http404 from None


def _htmx(request: HttpRequest) -> bool:
    """A request htmx made to swap part of the page (it sends this header)."""
    return request.headers.get("HX-Request") == "true"


def _back(request: HttpRequest, fallback: str) -> str:
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return target
    return fallback


def _summary(dataset: Dataset, status: selectors.DatasetStatus | None = None) -> dict[str, Any]:
    """What the pages show of a dataset; list pages pass the statuses they read for all their datasets at once."""
    if status is None:
        job = selectors.job_latest(dataset=dataset)
        counts = selectors.dataset_row_counts(dataset=dataset)
    else:
        job, counts = status.job, status.counts
    summary: dict[str, Any] = {
        "dataset": dataset,
        "job": job,
        "counts": counts,
        "state": dataset_state(job, counts["rows"]),
        "heads": heads_data(dataset.mapping),
        "images": None,
    }
    if status is None and any(c.get("role") == "image" for c in dataset.mapping.get("columns", [])):
        fetch_job = selectors.image_fetch_latest(dataset=dataset)
        summary["images"] = {
            **selectors.image_counts(dataset=dataset),
            "job": fetch_job,
            "running": fetch_job is not None and not fetch_job.finished,
        }
    return summary


@org_page("datasets:read")
def dataset_list(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    datasets = list(selectors.dataset_list())
    statuses = selectors.dataset_statuses(datasets=datasets)
    summaries = [_summary(dataset, statuses[dataset.pk]) for dataset in datasets]
    context = {
        "summaries": summaries,
        "can_write": holds(access.scopes, "datasets:write"),
        "examples": EXAMPLE_NAMES,
    }
    return render(request, "dataset/dataset_list.html", context)


@org_page("datasets:write")
@require_http_methods(["GET", "POST"])
def dataset_upload(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    error = None
    if request.method == "POST":
        try:
            dataset = _create_dataset(request, access)
        except ImportFileError as exc:
            error = f"{exc}. Fix the file and upload it again; nothing of it was kept."
        except ApiError as exc:
            error = exc.message
        else:
            return redirect(page_path("console-dataset-columns", org=org, dataset_id=dataset.pk))
    context = {
        "error": error,
        "formats": FILE_FORMATS,
        "examples": EXAMPLE_NAMES,
        "max_upload_mb": conf.setting("ARBITER_MAX_UPLOAD_BYTES") // (1024 * 1024),
        "steps": _wizard(0),
        "form": request.POST,
    }
    return render(request, "dataset/upload.html", context, status=400 if error else 200)


def _create_dataset(request: HttpRequest, access: OrgAccess) -> Dataset:
    if request.POST.get("example"):
        dataset, _ = logic.dataset_create_example(
            org_id=access.org_id, actor=access.actor, example=request.POST["example"]
        )
        return dataset
    upload = request.FILES.get("file")
    if upload is None:
        raise ApiError(
            status=400, code="invalid", message="Choose a file to upload, or use the example dataset."
        )
    limit = conf.setting("ARBITER_MAX_UPLOAD_BYTES")
    if upload.size is not None and upload.size > limit:
        raise ApiError(
            status=413,
            code="payload_too_large",
            message=f"The file is {upload.size:,} bytes; the limit is {limit:,} bytes.",
        )
    fields = {
        key: value for key, value in request.POST.items() if value and key in UploadOptionsSerializer().fields
    }
    options = UploadOptionsSerializer(data=fields)
    if not options.is_valid():
        raise ApiError(status=400, code="invalid", message=error_message(options.errors))
    dataset, _ = logic.dataset_create_from_file(
        org_id=access.org_id,
        actor=access.actor,
        name=options.validated_data.get("name"),
        # An uploaded file reads and seeks like the binary file the importer wants.
        file=cast(BinaryIO, upload),
        file_name=upload.name or "upload",
        options=options.options(),
    )
    return dataset


# --- the column mapping -------------------------------------------------------------------------------------


def _mapping_from_post(dataset: Dataset, data: QueryDict) -> dict[str, Any]:
    """The mapping form as the API's mapping object (fields are numbered: column names are free text)."""
    columns = []
    for index, name in enumerate(dataset.columns):
        role = data.get(f"role_{index}", "ignore")
        entry: dict[str, Any] = {"name": name, "role": role}
        if role == "label":
            entry["head"] = data.get(f"head_{index}", "").strip() or name
            entry["format"] = data.get(f"format_{index}", "single")
            labels = [label.strip() for label in data.get(f"labels_{index}", "").split(",") if label.strip()]
            entry["labels"] = labels or None
            if entry["format"] == "multi" and data.get(f"separator_{index}"):
                entry["separator"] = data[f"separator_{index}"]
            threshold = data.get(f"threshold_{index}", "").strip()
            if entry["format"] == "score" and threshold:
                try:
                    entry["threshold"] = float(threshold)
                except ValueError:
                    raise ApiError(
                        status=400,
                        code="invalid_mapping",
                        message=f"mapping: column {name!r}: the threshold must be a number in 0..1",
                    ) from None
        columns.append(entry)
    input_index = data.get("input_column", "")
    input_column = (
        dataset.columns[int(input_index)]
        if input_index.isdigit() and int(input_index) < len(dataset.columns)
        else None
    )
    return {"input_column": input_column, "columns": columns}


@org_page("datasets:read")
def dataset_progress(request: HttpRequest, dataset_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    """Polled by htmx while a dataset page shows an import or re-mapping at work: how far it got; once the
    job has ended, a reload of the whole page (HX-Refresh), which shows the rows or why the job failed."""
    summary = _summary(_dataset(dataset_id))
    if request.GET.get("images"):
        # The image fetch job: nothing to swap while it runs (204); a reload once it is done.
        images = summary["images"]
        if images is not None and images["running"]:
            return HttpResponse(status=204)
        return HttpResponseClientRefresh()
    if summary["state"] not in ("importing", "updating"):
        return HttpResponseClientRefresh()
    return render(request, "dataset/_import_progress.html", summary)


@org_page("datasets:read")
def dataset_image(
    request: HttpRequest, dataset_id: int, sha256: str, *, org: str, access: OrgAccess
) -> HttpResponse:
    """A row's image (or with `?thumbnail=1` its preview), for the rows grid: only an image a row of this
    dataset names is served."""
    dataset = _dataset(dataset_id)
    found = selectors.row_image_by_hash(dataset=dataset, sha256=sha256)
    if found is None:
        raise Http404("no such image")
    thumbnail = request.GET.get("thumbnail") in ("1", "true")
    key = thumbnail_blob_key(sha256) if thumbnail else image_blob_key(sha256)
    try:
        with conf.blob_store().open(key) as stream:
            body = stream.read()
    except BlobNotFoundError:
        raise Http404("no such image") from None
    mime = ("image/png" if body.startswith(b"\x89PNG") else "image/jpeg") if thumbnail else found.mime
    response = HttpResponse(body, content_type=mime)
    response["Cache-Control"] = "private, max-age=31536000, immutable"
    response["X-Content-Type-Options"] = "nosniff"
    return response


@org_page("datasets:write")
@require_POST
def dataset_images_fetch(
    request: HttpRequest, dataset_id: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    """Fetch the dataset's failed (and new) images again."""
    dataset = _dataset(dataset_id)
    job = logic.images_fetch_queue(dataset=dataset, actor=access.actor, retry_failed=True)
    if job is None:
        messages.error(request, "This dataset has no image column.")
    else:
        messages.success(request, "Fetching the images again; the rows show each image as it arrives.")
    return redirect(_back(request, page_path("console-dataset", org=org, dataset_id=dataset.pk)))


@org_page("datasets:read")
@require_http_methods(["GET", "POST"])
def dataset_columns(request: HttpRequest, dataset_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    dataset = _dataset(dataset_id)
    error = None
    if request.method == "POST":
        _require_write(access)
        try:
            job = logic.dataset_update(
                dataset=dataset,
                actor=access.actor,
                name=request.POST.get("name", "").strip() or None,
                mapping=_mapping_from_post(dataset, request.POST),
            )
        except ApiError as exc:
            error = exc.message
        else:
            if job is not None and not job.finished:
                messages.info(
                    request, "The mapping is saved. Rows are being re-read under it; this takes a moment."
                )
            else:
                counts = selectors.dataset_row_counts(dataset=dataset)
                messages.success(
                    request,
                    f"Columns confirmed: {counts['valid_rows']:,} of {counts['rows']:,} rows are "
                    "valid. Next, snapshot the dataset to train on it.",
                )
            return redirect(page_path("console-dataset-snapshots", org=org, dataset_id=dataset.pk))
        dataset.refresh_from_db()
    summary = _summary(dataset)
    profiles = {profile["name"]: profile for profile in dataset.profiles}
    mapping_columns = {column["name"]: column for column in dataset.mapping.get("columns", [])}
    columns = [
        {
            "index": i,
            "name": name,
            "mapping": mapping_columns.get(name, {"role": "ignore"}),
            "profile": profiles.get(name),
        }
        for i, name in enumerate(dataset.columns)
    ]
    input_column = dataset.mapping.get("input_column")
    preview_rows = [
        row_data(row, dataset=dataset, input_column=input_column, heads=[h["name"] for h in summary["heads"]])
        for row in selectors.rows_visible(dataset=dataset).order_by("number")[:MAPPING_PREVIEW_ROWS]
    ]
    context = {
        **summary,
        "columns": columns,
        "input_column": input_column,
        "roles": [(role, ROLE_HELP[role]) for role in ROLES],
        "formats": [(name, FORMAT_HELP[name]) for name in LABEL_FORMATS],
        "preview_rows": preview_rows,
        "error": error,
        "steps": _wizard(1),
        "can_write": holds(access.scopes, "datasets:write"),
    }
    return render(request, "dataset/columns.html", context, status=400 if error else 200)


def _require_write(access: OrgAccess) -> None:
    """Pages that anyone may read but only writers may submit (viewers see them read-only)."""
    if not holds(access.scopes, "datasets:write"):
        raise PermissionDenied


# --- rows ---------------------------------------------------------------------------------------------------


def _head_labels(dataset: Dataset, heads: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Labels to offer per head: those the mapping names, else those seen in the dataset's first rows."""
    offered: dict[str, list[str]] = {}
    unknown = [head["name"] for head in heads if not head["labels"]]
    seen: dict[str, set[str]] = {name: set() for name in unknown}
    if unknown:
        for labels in selectors.rows_visible(dataset=dataset).values_list("labels", flat=True)[
            :LABEL_SAMPLE_ROWS
        ]:
            for name in unknown:
                seen[name].update((labels or {}).get(name, {}))
    for head in heads:
        offered[head["name"]] = list(head["labels"]) if head["labels"] else sorted(seen[head["name"]])
    return offered


def _labels_value(raw: str, *, multi: bool) -> list[str] | None:
    """A label field as the API takes it: empty means the head does not apply to the row."""
    raw = raw.strip()
    if raw == "":
        return None
    if not multi:
        return [raw]
    return [part.strip() for part in raw.replace(",", "|").split("|") if part.strip()]


def _grid_query(request: HttpRequest) -> dict[str, str]:
    return {key: request.GET.get(key, "") for key in ("q", "head", "label", "source", "validity")}


@org_page("datasets:read")
@require_http_methods(["GET", "POST"])
def dataset_rows(request: HttpRequest, dataset_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    dataset = _dataset(dataset_id)
    summary = _summary(dataset)
    heads = summary["heads"]
    grid_url = page_path("console-dataset", org=org, dataset_id=dataset.pk)
    if request.method == "POST":
        _require_write(access)
        labels = {
            head["name"]: _labels_value(
                request.POST.get(f"label_{head['name']}", ""), multi=head["multi_label"]
            )
            for head in heads
        }
        try:
            row = logic.row_create(
                dataset=dataset, actor=access.actor, text=request.POST.get("text", ""), labels=labels
            )
        except ApiError as exc:
            messages.error(request, exc.message)
        else:
            state = "valid" if row.is_valid else "invalid: " + "; ".join(p["message"] for p in row.problems)
            messages.success(request, f"Row {row.number} added ({state}).")
        return redirect(_back(request, grid_url))
    query = _grid_query(request)
    input_column = dataset.mapping.get("input_column")
    rows = selectors.rows_filtered(
        dataset=dataset,
        input_column=input_column,
        q=query["q"] or None,
        head=query["head"] or None,
        label=query["label"] or None,
        invalid={"invalid": True, "valid": False}.get(query["validity"]),
        # Where the labels came from needs a head; without one the choice is ignored.
        source=query["source"] or None,
    )
    page = Paginator(rows, ROWS_PER_PAGE).get_page(request.GET.get("page"))
    head_names = [head["name"] for head in heads]
    images = logic.row_images(dataset=dataset, numbers=[row.number for row in page])
    shown = [
        row_data(row, dataset=dataset, input_column=input_column, heads=head_names, images=images)
        for row in page
    ]
    filtered = {key: value for key, value in query.items() if value}
    context = {
        **summary,
        "rows": shown,
        "page": page,
        "query": query,
        "filtered": bool(filtered),
        "page_query": urlencode(filtered),
        "label_sources": [
            ("import", "from the import"),
            ("human", "people (review, edits)"),
            ("llm", "an LLM or similarity labeler"),
            ("model", "a trained model"),
        ],
        "head_labels": _head_labels(dataset, heads),
        "input_column": input_column,
        "here": request.get_full_path(),
        "can_write": holds(access.scopes, "datasets:write"),
    }
    return render(request, "dataset/rows.html", context)


@org_page("datasets:write")
@require_POST
def row_relabel(
    request: HttpRequest, dataset_id: int, number: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    dataset = _dataset(dataset_id)
    row = _row(dataset, number)
    heads = {head["name"]: head for head in heads_data(dataset.mapping)}
    head = heads.get(request.POST.get("head", ""))
    error = None
    if head is None:
        error = "Choose a head to relabel."
    else:
        try:
            row = logic.row_update(
                row=row,
                actor=access.actor,
                labels={
                    head["name"]: _labels_value(request.POST.get("labels", ""), multi=head["multi_label"])
                },
            )
        except ApiError as exc:
            error = exc.message
    if _htmx(request):
        # htmx swaps the row in place; an error is shown in the row rather than losing the person's place.
        input_column = dataset.mapping.get("input_column")
        context = {
            "row": row_data(
                row,
                dataset=dataset,
                input_column=input_column,
                heads=list(heads),
                images=logic.row_images(dataset=dataset, numbers=[row.number]),
            ),
            "heads": list(heads.values()),
            "head_labels": _head_labels(dataset, list(heads.values())),
            "can_write": True,
            "here": _back(request, ""),
            "row_error": error,
            "dataset": dataset,
            "input_column": input_column,
        }
        return render(request, "dataset/_row.html", context)
    if error:
        messages.error(request, error)
    return redirect(_back(request, page_path("console-dataset", org=org, dataset_id=dataset.pk)))


@org_page("datasets:write")
@require_POST
def row_delete(
    request: HttpRequest, dataset_id: int, number: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    dataset = _dataset(dataset_id)
    row = _row(dataset, number)
    try:
        logic.row_delete(row=row, actor=access.actor)
    except ApiError as exc:
        if _htmx(request):
            return HttpResponse(exc.message, status=409)
        messages.error(request, exc.message)
    else:
        if _htmx(request):
            return HttpResponse("")
        messages.success(request, f"Row {number} deleted.")
    return redirect(_back(request, page_path("console-dataset", org=org, dataset_id=dataset.pk)))


# --- snapshots ----------------------------------------------------------------------------------------------


@org_page("datasets:read")
@require_http_methods(["GET", "POST"])
def dataset_snapshots(request: HttpRequest, dataset_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    dataset = _dataset(dataset_id)
    error = None
    error_details: dict[str, Any] = {}
    if request.method == "POST":
        _require_write(access)
        test_percent = request.POST.get("test_percent", "").strip()
        try:
            snapshot = logic.snapshot_create(
                dataset=dataset,
                actor=access.actor,
                input_column=request.POST.get("input_column") or None,
                label_columns=request.POST.getlist("label_columns"),
                type=None,
                name=request.POST.get("name", "").strip(),
                test_percent=float(test_percent) if request.POST.get("split") and test_percent else None,
            )
        except ValueError:
            error = "The test share must be a number between 0 and 90."
        except ApiError as exc:
            error, error_details = exc.message, exc.details or {}
        else:
            return redirect(page_path("console-snapshot", org=org, snapshot_id=snapshot.pk))
    summary = _summary(dataset)
    mapping = dataset.mapping.get("columns", [])
    context = {
        **summary,
        "snapshots": list(selectors.snapshot_list(dataset_id=dataset.pk)),
        "text_columns": [c["name"] for c in mapping if c["role"] in ("text",)],
        "label_columns": [c for c in mapping if c["role"] == "label"],
        "input_column": dataset.mapping.get("input_column"),
        "error": error,
        "error_details": error_details,
        "steps": _wizard(2),
        "can_write": holds(access.scopes, "datasets:write"),
        "suggested_name": f"{dataset.name} v{selectors.snapshot_list(dataset_id=dataset.pk).count() + 1}",
    }
    return render(request, "dataset/snapshots.html", context, status=400 if error else 200)


def _train_url(org: str, snapshot: Snapshot) -> str:
    """The training service's create page for this snapshot."""
    return page_path("console-model-create", org=org) + f"?snapshot={snapshot.pk}"


@org_page("datasets:read")
def snapshot_detail(request: HttpRequest, snapshot_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    try:
        snapshot = selectors.snapshot_get(snapshot_id=snapshot_id)
    except models.ObjectDoesNotExist:
        raise Http404 from None
    report = snapshot.report or {}
    context = {
        "snapshot": snapshot,
        "dataset": snapshot.dataset,
        "report": report,
        "invalid_rows": snapshot.invalid_rows[:LISTED_INVALID_ROWS],
        "invalid_total": len(snapshot.invalid_rows),
        "charts": {"heads": report.get("heads", {}), "manifest": snapshot.heads},
        "train_url": _train_url(org, snapshot),
        "steps": _wizard(3),
    }
    return render(request, "dataset/snapshot.html", context)
