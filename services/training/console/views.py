"""Console pages of the training service: models, the create and "update model" forms, and the version page.

Forms go through the API's own serializers and `logic` functions, so a page accepts exactly what the API
accepts and says no in the same words. Live progress is an htmx partial of this service; the playground is
fetched by the browser from the JSON API (the inference service's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.utils.text import slugify
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRefresh

from arbiter.api.errors import ApiError
from arbiter.config.routes import page_path
from arbiter.console.forms import error_message
from arbiter.console.pages import org_page
from arbiter.ml.image_encoders import EFFICIENTNET_LITE0, VISION_MODERATION
from arbiter.ml.plan import auto_plan
from arbiter.tenancy.access import OrgAccess
from arbiter.tenancy.scopes import holds
from services.training import logic, selectors
from services.training.api.serializers import (
    DEFAULT_BASE_MODEL,
    ModelCreateSerializer,
    VersionCreateSerializer,
)
from services.training.models import Model, ModelVersion, RunState, Snapshot
from services.training.options import OPTION_DEFAULTS, SELECTION_RULES, STRATEGIES


@dataclass(frozen=True)
class OptionField:
    name: str
    label: str
    explain: str
    kind: str  # "choice", "int", "float" or "head"
    choices: tuple[str, ...] = ()
    step: str = "any"
    placeholder: str = ""


OPTION_FIELDS: tuple[OptionField, ...] = (
    OptionField(
        "strategy",
        "Strategy",
        "head: train small classifiers on a frozen encoder, seconds on a CPU. full: fine-tune the whole "
        "encoder, the best quality, made for a GPU. auto: plan the time budget (TF-IDF, heads, fine-tuning "
        "when an epoch fits, blends) and keep the best on the validation rows.",
        "choice",
        STRATEGIES,
    ),
    OptionField(
        "max_epochs",
        "Max epochs",
        "The most passes over the training rows. Early stopping usually ends training sooner.",
        "int",
        step="1",
    ),
    OptionField(
        "selection_rule",
        "Selection rule",
        "How the kept epoch (and, with auto, the kept candidate) is judged on the validation rows: balanced "
        "accuracy is fair to rare classes, f1 balances precision and recall, loss keeps the lowest loss.",
        "choice",
        SELECTION_RULES,
    ),
    OptionField(
        "selection_head",
        "Selection head",
        "With several heads, judge by this head alone. Leave it on “all heads” to average over every head.",
        "head",
    ),
    OptionField(
        "early_stopping",
        "Early stopping (patience)",
        "Stop after this many epochs without improvement of the selection rule. 0 turns early stopping off.",
        "int",
        step="1",
    ),
    OptionField(
        "max_invalid_row_percent",
        "Max invalid rows (%)",
        "Refuse to train when more than this share of a snapshot's rows is invalid, so a broken import never "
        "quietly becomes a bad model.",
        "float",
    ),
    OptionField(
        "learning_rate",
        "Learning rate",
        "Size of each optimiser step. Leave empty for the strategy's default (0.001 for heads, 0.00005 for "
        "fine-tuning).",
        "float",
        placeholder="strategy default",
    ),
    OptionField(
        "batch_size",
        "Batch size",
        "Rows per training step. Lower it if the trainer runs out of memory.",
        "int",
        step="1",
    ),
    OptionField(
        "max_tokens",
        "Max tokens",
        "Longer texts are cut to this many tokens. More is slower; most moderation texts fit in 128.",
        "int",
        step="1",
    ),
    OptionField(
        "target_precision",
        "Target precision",
        "Optional, e.g. 0.9: also find, per label, the threshold that reaches this precision with the most "
        "recall. The metrics page shows it.",
        "float",
        placeholder="none",
    ),
    OptionField(
        "time_budget_minutes",
        "Time budget (minutes)",
        "How long training may take, 1 minute to 24 hours. auto plans its candidates to use it (the estimate "
        "below says what will run); head and full stop their epochs at it. A trainer still running well past "
        "it is stopped.",
        "float",
    ),
)

# A first model should answer in seconds: the form starts on the `head` strategy (the API's default, `auto`,
# searches for up to its time budget). Everything else is the API's default.
FIRST_MODEL_OPTIONS: dict[str, Any] = {**OPTION_DEFAULTS, "strategy": "head"}

TEST_EXPLAIN = (
    "Metrics are measured on rows the model never trained on: hold out a share of the rows, or test on a "
    "separate snapshot with the same label columns."
)


def _options_from_post(data: QueryDict) -> dict[str, Any]:
    """The options a person filled in; empty fields are left out so the defaults (or the parent's) apply."""
    options: dict[str, Any] = {}
    for field in OPTION_FIELDS:
        raw = data.get(f"option_{field.name}", "").strip()
        if raw:
            options[field.name] = raw
    return options


def _test_from_post(data: QueryDict) -> dict[str, Any] | None:
    if data.get("test_kind") == "snapshot":
        return {"snapshot": data.get("test_snapshot", "")}
    raw = data.get("test_split_percent", "").strip()
    return {"split_percent": raw} if raw else None


def _test_values(form: QueryDict, current: dict[str, Any]) -> dict[str, str]:
    """What the test-data fields show: what was typed, else the current version's choice, else 20 %."""
    kind = form.get("test_kind") or ("snapshot" if current.get("snapshot") else "split")
    return {
        "kind": kind,
        "split_percent": form.get("test_split_percent") or f"{current.get('split_percent', 20.0):g}",
        "snapshot": form.get("test_snapshot") or str(current.get("snapshot", "")),
    }


def _base_model_choices(versions: list[ModelVersion]) -> list[tuple[str, str]]:
    choices = [
        (DEFAULT_BASE_MODEL, "all-MiniLM-L6-v2 (built in, fast; text)"),
        (VISION_MODERATION, "vision-moderation (built in; images, with an nsfw head kept beside yours)"),
        (EFFICIENTNET_LITE0, "EfficientNet-Lite0 (built in; images)"),
    ]
    choices += [
        (f"version:{v.model_id}:{v.number}", f"{v.model.name} v{v.number} (its encoder and heads)")
        for v in versions
    ]
    return [*choices, ("custom", "Another encoder (Hugging Face id or path)…")]


def _default_base(snapshots: list[Snapshot], selected: set[str]) -> str:
    """Images are read by an image encoder: an image snapshot starts from vision-moderation."""
    chosen = [s for s in snapshots if str(s.snapshot_id) in selected]
    if chosen and all(s.type == "image_classification" for s in chosen):
        return VISION_MODERATION
    return DEFAULT_BASE_MODEL


def _snapshot_ids(data: QueryDict) -> list[str]:
    return [value for value in data.getlist("snapshots") if value]


def _known_snapshots() -> list[Snapshot]:
    return list(Snapshot.objects.order_by("-recorded_at", "-id"))


def _trained_versions() -> list[ModelVersion]:
    return list(
        ModelVersion.objects.select_related("model")
        .filter(run__state=RunState.SUCCEEDED)
        .order_by("model__name", "-number")
    )


def _head_names(snapshots: list[Snapshot]) -> list[str]:
    return list(dict.fromkeys(head["name"] for snapshot in snapshots for head in snapshot.heads))


def _model(model_id: int) -> Model:
    model = selectors.model_list().filter(pk=model_id).first()
    if model is None:
        raise Http404
    return model


def _version(model: Model, number: int) -> ModelVersion:
    version = selectors.version_list(model_id=model.pk).filter(number=number).first()
    if version is None:
        raise Http404
    return version


@org_page("models:read")
def model_list(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    models = list(selectors.model_list())
    rows = []
    for model in models:
        versions = sorted(model.versions.all(), key=lambda v: v.number)
        latest = versions[-1] if versions else None
        trained = [v for v in versions if v.run.state == RunState.SUCCEEDED]
        rows.append({"model": model, "latest": latest, "trained": trained[-1] if trained else None})
    context = {
        "rows": rows,
        "has_snapshots": Snapshot.objects.exists(),
        "can_write": holds(access.scopes, "models:write"),
    }
    return render(request, "training/model_list.html", context)


@org_page("models:write")
@require_http_methods(["GET", "POST"])
def model_create(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    snapshots = _known_snapshots()
    error = None
    if request.method == "POST":
        base = request.POST.get("base_model", DEFAULT_BASE_MODEL)
        base_model: Any = base
        if base == "custom":
            base_model = request.POST.get("custom_base_model", "").strip()
        elif base.startswith("version:"):
            # "version:<model id>:<number>"; anything else is left for the serializer to refuse.
            parts = base.split(":")
            if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                base_model = {"model": int(parts[1]), "version": int(parts[2])}
        payload: dict[str, Any] = {
            "name": request.POST.get("name", "").strip(),
            "base_model": base_model,
            "snapshots": _snapshot_ids(request.POST),
            "options": _options_from_post(request.POST),
        }
        test = _test_from_post(request.POST)
        if test is not None:
            payload["test"] = test
        serializer = ModelCreateSerializer(data=payload)
        if not serializer.is_valid():
            error = error_message(serializer.errors)
        else:
            data = serializer.validated_data
            try:
                version = logic.model_create(
                    org_id=access.org_id,
                    name=data["name"],
                    type=data.get("type"),
                    base_model=data["base_model"],
                    snapshot_ids=data["snapshots"],
                    test=data.get("test"),
                    options=data.get("options", {}),
                )
            except ApiError as exc:
                error = exc.message
            else:
                return redirect(
                    page_path(
                        "console-model-version", org=org, model_id=version.model_id, number=version.number
                    )
                )
    form = request.POST if request.method == "POST" else QueryDict(mutable=True)
    wanted = request.GET.get("snapshot", "")
    selected = (
        set(_snapshot_ids(request.POST)) if request.method == "POST" else ({wanted} if wanted else set())
    )
    if not selected and snapshots:
        selected = {str(snapshots[0].snapshot_id)}
    context = {
        "snapshots": snapshots,
        "selected": selected,
        # The snapshot the dataset page sent us to, still travelling to this service as `snapshot.created`.
        "awaited_snapshot": wanted
        if wanted and not any(str(s.snapshot_id) == wanted for s in snapshots)
        else "",
        "base_models": _base_model_choices(_trained_versions()),
        "base_model": form.get("base_model", _default_base(snapshots, selected)),
        "test": _test_values(form, {}),
        "form": form,
        "values": _option_values(form, FIRST_MODEL_OPTIONS),
        "option_fields": OPTION_FIELDS,
        "heads": _head_names(snapshots),
        "test_explain": TEST_EXPLAIN,
        "suggested_name": _suggested_name(snapshots, selected),
        "plan": _plan(snapshots, selected, _option_values(form, FIRST_MODEL_OPTIONS), _test_values(form, {})),
        "error": error,
    }
    return render(request, "training/model_create.html", context, status=400 if error else 200)


def _suggested_name(snapshots: list[Snapshot], selected: set[str]) -> str:
    chosen = next((s for s in snapshots if str(s.snapshot_id) in selected), None)
    if chosen is None:
        return ""
    base = chosen.name or "model"
    name, n = base, 1
    while Model.objects.filter(name=name).exists():
        n += 1
        name = f"{base} {n}"
    return name


def _option_values(form: QueryDict, defaults: dict[str, Any]) -> dict[str, Any]:
    """What each option field shows: what was typed (after an error), else the default or inherited value."""
    values = {}
    for field in OPTION_FIELDS:
        typed = form.get(f"option_{field.name}")
        default = defaults.get(field.name)
        values[field.name] = typed if typed is not None else ("" if default is None else default)
    return values


@org_page("models:read")
def model_detail(request: HttpRequest, model_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    model = _model(model_id)
    versions = list(selectors.version_list(model_id=model.pk).order_by("-number"))
    context = {"model": model, "versions": versions, "can_write": holds(access.scopes, "models:write")}
    return render(request, "training/model_detail.html", context)


@org_page("models:write")
@require_http_methods(["GET", "POST"])
def version_create(request: HttpRequest, model_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    model = _model(model_id)
    versions = list(selectors.version_list(model_id=model.pk).order_by("-number"))
    trained = [v for v in versions if v.run.state == RunState.SUCCEEDED]
    latest = versions[0]
    snapshots = _known_snapshots()
    error = None
    if request.method == "POST":
        payload: dict[str, Any] = {
            "snapshots": _snapshot_ids(request.POST),
            "options": _options_from_post(request.POST),
        }
        parent = request.POST.get("parent", "")
        if parent:
            payload["parent"] = parent
        test = _test_from_post(request.POST)
        if test is not None:
            payload["test"] = test
        serializer = VersionCreateSerializer(data=payload)
        if not serializer.is_valid():
            error = error_message(serializer.errors)
        else:
            data = serializer.validated_data
            try:
                version = logic.version_create(
                    model=model,
                    parent_number=data.get("parent"),
                    snapshot_ids=data.get("snapshots"),
                    test=data.get("test"),
                    options=data.get("options", {}),
                )
            except ApiError as exc:
                error = exc.message
            else:
                return redirect(
                    page_path("console-model-version", org=org, model_id=model.pk, number=version.number)
                )
    form = request.POST if request.method == "POST" else QueryDict(mutable=True)
    if request.method == "POST":
        selected = set(_snapshot_ids(request.POST))
    else:
        # Newest snapshots first: a fresh snapshot of the same dataset is the usual reason to update a model.
        selected = {str(i) for i in latest.snapshot_ids}
        newer = [s for s in snapshots if s.dataset_id in _datasets_of(snapshots, latest.snapshot_ids)]
        if newer and str(newer[0].snapshot_id) not in selected:
            selected = {str(newer[0].snapshot_id)}
    inherited = {**OPTION_DEFAULTS, **(trained[0].options if trained else latest.options)}
    context = {
        "model": model,
        "trained": trained,
        "parent_default": request.GET.get("parent") or (str(trained[0].number) if trained else ""),
        "snapshots": snapshots,
        "selected": selected,
        "form": form,
        "values": _option_values(form, inherited),
        "option_fields": OPTION_FIELDS,
        "heads": _head_names(snapshots),
        "test": _test_values(form, latest.test),
        "test_explain": TEST_EXPLAIN,
        "plan": _plan(snapshots, selected, _option_values(form, inherited), _test_values(form, latest.test)),
        "error": error,
    }
    return render(request, "training/version_create.html", context, status=400 if error else 200)


def _number(raw: Any, default: float) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return default
    return value if value > 0 else default


def _plan(
    snapshots: list[Snapshot], selected: set[str], values: dict[str, Any], test: dict[str, str]
) -> dict[str, Any]:
    """What training is expected to run on the selected snapshots within the budget, before it starts.

    From the per-row cost model of `arbiter.ml.automl` (measured on a 2-core CPU): the trainer measures
    its own speed once it runs, so this is an estimate, and says so.
    """
    chosen = [s for s in snapshots if str(s.snapshot_id) in selected]
    rows = sum(s.rows for s in chosen)
    # Images have no TF-IDF candidate: their plan is head, then full (the image cost model).
    image = bool(chosen) and all(s.type == "image_classification" for s in chosen)
    budget = _number(values.get("time_budget_minutes"), OPTION_DEFAULTS["time_budget_minutes"])
    max_epochs = int(_number(values.get("max_epochs"), OPTION_DEFAULTS["max_epochs"]))
    split = _number(test.get("split_percent"), 20.0) if test.get("kind") != "snapshot" else 0.0
    steps = auto_plan(
        rows=rows, time_budget_minutes=budget, max_epochs=max_epochs, test_percent=split, image=image
    )
    return {
        "rows": rows,
        "budget_minutes": budget,
        "strategy": values.get("strategy") or OPTION_DEFAULTS["strategy"],
        "steps": {step["name"]: step for step in steps},
    }


@org_page("models:write")
def training_plan(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    """The form's estimate, recomputed by htmx when a snapshot, the strategy or the budget changes."""
    data = request.GET
    values = {
        field: data.get(f"option_{field}", "") for field in ("strategy", "time_budget_minutes", "max_epochs")
    }
    test = {"kind": data.get("test_kind", "split"), "split_percent": data.get("test_split_percent", "")}
    plan = _plan(_known_snapshots(), set(_snapshot_ids(data)), values, test)
    return render(request, "training/_plan.html", {"plan": plan})


def _datasets_of(snapshots: list[Snapshot], snapshot_ids: list[int]) -> set[int]:
    return {s.dataset_id for s in snapshots if s.snapshot_id in snapshot_ids}


def _candidate_detail(detail: dict[str, Any]) -> str:
    """A candidate's detail as the version page shows it: the blend's noise check in words, the rest as recorded."""
    parts = []
    for key, value in detail.items():
        if key == "noise":
            value = ", ".join(
                f"{head} kept {check['kept']} (gain {check['gain']:+.4f} ± {check['standard_error']:.4f})"
                for head, check in value.items()
            )
            key = "noise check"
        parts.append(f"{key}: {value}")
    return "; ".join(parts)


@org_page("models:read")
def version_detail(
    request: HttpRequest, model_id: int, number: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    model = _model(model_id)
    version = _version(model, number)
    run = version.run
    evaluation = version.evaluation or {}
    heads = []
    for head in version.heads:
        metrics = (evaluation.get("heads") or {}).get(head["name"])
        heads.append({"spec": head, "metrics": metrics})
    context = {
        "model": model,
        "version": version,
        "run": run,
        "outcome": selectors.run_outcome(run),
        "progress": selectors.run_progress(run),
        "time": selectors.version_time(version),
        "candidates": [
            {**candidate, "detail_text": _candidate_detail(candidate["detail"])}
            for candidate in selectors.version_candidates(version)
        ],
        "evaluation": evaluation,
        "heads": heads,
        "snapshots": {
            s.snapshot_id: s for s in Snapshot.objects.filter(snapshot_id__in=version.snapshot_ids)
        },
        "chart_data": {
            "epochs": run.epochs,
            "evaluation": evaluation,
            "thresholds": version.thresholds,
            "heads": version.heads,
        },
        "api": {
            "playground": f"/api/v1/orgs/{org}/models/{model.pk}/versions/{version.number}/playground",
        },
        "can_write": holds(access.scopes, "models:write"),
        "can_infer": holds(access.scopes, "inference"),
        "terminal": run.is_terminal,
        "deploy_url": _deploy_url(org=org, model=model, number=version.number),
    }
    return render(request, "training/version_detail.html", context)


@org_page("models:read")
def version_progress(
    request: HttpRequest, model_id: int, number: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    """The live part of the version page, polled by htmx while the run is queued or running. Once the run has
    ended, the whole page reloads (HX-Refresh) to show the metrics or the reason it failed."""
    run = _version(_model(model_id), number).run
    if run.is_terminal:
        return HttpResponseClientRefresh()
    context = {"run": run, "progress": selectors.run_progress(run), "swap_status": True}
    return render(request, "training/_progress.html", context)


def _deploy_url(*, org: str, model: Model, number: int) -> str:
    """The inference service's deploy page for this version, with a name to suggest."""
    url = page_path("console-deployment-create", org=org)
    name = f"{slugify(model.name)[:80] or 'model'}-v{number}"
    return f"{url}?{urlencode({'model': model.pk, 'version': number, 'name': name})}"


@org_page("models:write")
@require_POST
def version_cancel(
    request: HttpRequest, model_id: int, number: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    version = _version(_model(model_id), number)
    logic.run_cancel(run=version.run)
    return redirect(page_path("console-model-version", org=org, model_id=model_id, number=number))
