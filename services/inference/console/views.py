"""Console pages of the inference service: deployments (create, watch go live, stop, copy a ready snippet),
batch classify (a CSV or JSONL against a deployment, run by the batch worker, results as CSV or JSONL) and usage
per day and deployment.

Writes go through `logic`, reads through `selectors`. Going live happens in the background
(`deployment.requested`); the deployment page polls its status partial (htmx) until the status settles.
"""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRefresh

from arbiter.api.errors import ApiError
from arbiter.config.routes import page_path
from arbiter.console.pages import org_page
from arbiter.entitlements import entitlements_for
from arbiter.tenancy.access import OrgAccess
from arbiter.tenancy.scopes import holds
from services.inference import batches, logic, selectors
from services.inference.conf import inference_settings
from services.inference.models import (
    ACTIVE_STATUSES,
    Batch,
    BatchStatus,
    Deployment,
    DeploymentStatus,
    Entitlement,
    Meter,
)

USAGE_PERIODS = (7, 30, 90)
EXAMPLE_INPUTS = ["you are an idiot", "thanks, have a great day"]


def _deployment(deployment_id: int) -> Deployment:
    deployment = selectors.deployments_list().filter(pk=deployment_id).first()
    if deployment is None:
        raise Http404
    return deployment


def _version_url(org: str, model_id: int, version: int) -> str:
    """The training service's page of a version."""
    return page_path("console-model-version", org=org, model_id=model_id, number=version)


@org_page("models:read")
def deployment_list(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    deployments = list(selectors.deployments_list())
    context = {
        "active": [d for d in deployments if d.status in ACTIVE_STATUSES],
        "ended": [d for d in deployments if d.status not in ACTIVE_STATUSES],
        "has_versions": selectors.model_versions_list().exists(),
        "can_write": holds(access.scopes, "models:write"),
    }
    return render(request, "inference/deployment_list.html", context)


@org_page("models:write")
@require_http_methods(["GET", "POST"])
def deployment_create(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    versions = list(selectors.model_versions_list().order_by("model_name", "-version"))
    error = None
    if request.method == "POST":
        chosen = request.POST.get("version", "")
        model_id, _, number = chosen.partition(":")
        retention = request.POST.get("log_retention_days", "").strip()
        try:
            if not (model_id.isdigit() and number.isdigit()):
                raise ApiError(status=400, code="invalid", message="Choose the model version to deploy.")
            # The form offers the versions this service knows; unlike the API, it never waits for another.
            logic.version_resolve(model=int(model_id), version=int(number))
            deployment, _ = logic.deployment_create(
                org_id=access.org_id,
                model=int(model_id),
                version=int(number),
                actor=access.actor,
                name=request.POST.get("name", "").strip() or None,
                log_requests=request.POST.get("log_requests") == "on",
                log_retention_days=int(retention) if retention.isdigit() else None,
                cascade=_cascade_from_post(request.POST),
            )
        except ApiError as exc:
            error = exc.message
        else:
            return redirect(page_path("console-deployment", org=org, deployment_id=deployment.pk))
    wanted = request.POST.get("version") or f"{request.GET.get('model', '')}:{request.GET.get('version', '')}"
    context = {
        "versions": [
            (f"{v.model_id}:{v.version}", f"{v.model_name or f'model {v.model_id}'} v{v.version}")
            for v in versions
        ],
        "wanted": wanted,
        "form": request.POST,
        # The model's page suggests a name; the person may change it.
        "suggested_name": request.GET.get("name", ""),
        "error": error,
        "retention": inference_settings().log_retention_days,
        "max_retention": inference_settings().max_log_retention_days,
    }
    return render(request, "inference/deployment_create.html", context, status=400 if error else 200)


def _cascade_from_post(data: Any) -> dict[str, Any] | None:
    """The form's cascade (a policy version, the band, `head=category` lines) in the API's shape; the API's
    checks then name what is wrong, as for any request."""
    chosen = data.get("cascade_policy", "")
    if not chosen:
        return None
    model_id, _, number = chosen.partition(":")
    if not (model_id.isdigit() and number.isdigit()):
        raise ApiError(status=400, code="invalid", message="cascade.policy: choose the policy version.")
    band = []
    for field in ("cascade_low", "cascade_high"):
        try:
            band.append(float(data.get(field, "")))
        except ValueError:
            raise ApiError(
                status=400,
                code="invalid",
                message="cascade.band: give the band's bounds as numbers from 0 to 1.",
            ) from None
    heads: dict[str, str] = {}
    for line in re.split(r"[\n,]", data.get("cascade_heads", "")):
        head, sep, category = line.partition("=")
        if line.strip() and not sep:
            raise ApiError(
                status=400,
                code="invalid",
                message=f"cascade.heads: {line.strip()!r}: write each as <trained category>=<policy category>.",
            )
        if line.strip():
            heads[head.strip()] = category.strip()
    return {"policy": {"model": int(model_id), "version": int(number)}, "band": band, "heads": heads}


def _snippets(*, org: str, deployment: Deployment) -> dict[str, str]:
    base = (settings.ARBITER_PUBLIC_URL or "").rstrip("/")
    url = f"{base}/api/v1/orgs/{org}/deployments/{deployment.pk}/classify"
    inputs = ", ".join(f'"{text}"' for text in EXAMPLE_INPUTS)
    return {
        "curl": (
            f"curl {url} \\\n"
            '  -H "Authorization: Bearer $ARBITER_API_KEY" \\\n'
            '  -H "Content-Type: application/json" \\\n'
            f"  -d '{{\"inputs\": [{inputs}]}}'"
        ),
        "python": (
            "import os\n\nimport requests\n\n"
            "response = requests.post(\n"
            f'    "{url}",\n'
            '    headers={"Authorization": f"Bearer {os.environ[\'ARBITER_API_KEY\']}"},\n'
            f'    json={{"inputs": [{inputs}]}},\n'
            "    timeout=30,\n)\nresponse.raise_for_status()\n"
            'for result in response.json()["results"]:\n    print(result)'
        ),
        "openai": (
            "import os\n\nfrom openai import OpenAI\n\n"
            f'client = OpenAI(base_url="{base}/v1", api_key=os.environ["ARBITER_API_KEY"])\n'
            f'moderation = client.moderations.create(model="{deployment.name}", input=[{inputs}])\n'
            "for result in moderation.results:\n    print(result.flagged, result.categories)"
        ),
        "mistral": (
            "import os\n\nfrom mistralai import Mistral\n\n"
            f'client = Mistral(api_key=os.environ["ARBITER_API_KEY"], server_url="{base}")\n'
            f'response = client.classifiers.classify(model="{deployment.name}", inputs=[{inputs}])\n'
            "for result in response.results:\n    print(result)"
        ),
    }


@org_page("models:read")
def deployment_detail(
    request: HttpRequest, deployment_id: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    deployment = _deployment(deployment_id)
    end = timezone.now().date()
    days = _usage_by_day(start=end - timedelta(days=29), end=end, deployment_id=deployment.pk)
    context = {
        "deployment": deployment,
        "snippets": _snippets(org=org, deployment=deployment),
        "version_url": _version_url(org, deployment.model_id, deployment.version),
        "log": list(
            selectors.request_log_entries(deployment_id=deployment.pk).order_by("-created_at", "-id")[:20]
        )
        if deployment.log_requests
        else [],
        "usage": days,
        "usage_total": sum(v["requests"] for series in days["series"] for v in series["values"]),
        "cascade": _cascade(org, deployment),
        "api": {
            "classify": f"/api/v1/orgs/{org}/deployments/{deployment.pk}/classify",
        },
        "can_write": holds(access.scopes, "models:write"),
        "can_infer": holds(access.scopes, "inference"),
        "can_make_keys": holds(access.scopes, "admin"),
        "examples": "\n".join(EXAMPLE_INPUTS),
    }
    return render(request, "inference/deployment_detail.html", context)


def _cascade(org: str, deployment: Deployment) -> dict[str, Any] | None:
    """What the page shows of a cascade: its policy, band and handed-over categories, and who decided how much."""
    if not deployment.is_cascade:
        return None
    usage = selectors.cascade_usage(deployment_id=deployment.pk)
    share = usage["policy_share"]
    return {
        "policy_url": page_path("console-policy", org=org, policy_id=deployment.policy_model_id),
        "policy_model_id": deployment.policy_model_id,
        "policy_version": deployment.policy_version,
        "band": deployment.cascade.get("band") or [],
        "heads": sorted((deployment.cascade.get("heads") or {}).items()),
        "usage": usage,
        "policy_percent": None if share is None else round(100 * share, 1),
    }


@org_page("models:read")
def deployment_status(
    request: HttpRequest, deployment_id: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    """Polled by htmx while the deployment page waits for it to go live: 204 (nothing to swap) while it is
    pending, then a reload of the whole page (HX-Refresh), which shows it live or why it failed."""
    if _deployment(deployment_id).status == DeploymentStatus.PENDING:
        return HttpResponse(status=204)
    return HttpResponseClientRefresh()


@org_page("models:write")
@require_POST
def deployment_stop(request: HttpRequest, deployment_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    deployment = logic.deployment_stop(
        deployment=_deployment(deployment_id), reason=f"stopped by {access.actor}"
    )
    messages.success(request, f"“{deployment.name}” is stopped. Calls to it now answer 409.")
    return redirect(page_path("console-deployment", org=org, deployment_id=deployment.pk))


def _usage_by_day(*, start: date, end: date, deployment_id: int | None = None) -> dict[str, Any]:
    """Requests per day and deployment (classifications), plus playground queries, for a stacked chart."""
    rows = list(selectors.usage_days(start=start, end=end))
    names = selectors.deployment_names(ids={row.deployment_id for row in rows if row.deployment_id})
    days = [start + timedelta(days=i) for i in range((end - start).days + 1)]
    index = {day: i for i, day in enumerate(days)}
    series: dict[str, dict[str, Any]] = {}
    for row in rows:
        if deployment_id is not None and row.deployment_id != deployment_id:
            continue
        if row.meter == Meter.PLAYGROUND:
            key, name = "playground", "playground"
        else:
            key, name = (
                f"d{row.deployment_id}",
                names.get(row.deployment_id, f"deployment {row.deployment_id}"),
            )
        entry = series.setdefault(key, {"name": name, "values": [{"requests": 0, "units": 0} for _ in days]})
        cell = entry["values"][index[row.day]]
        cell["requests"] += row.requests
        cell["units"] += row.units
    ordered = sorted(series.values(), key=lambda s: (s["name"] == "playground", s["name"]))
    return {"days": [day.isoformat() for day in days], "series": ordered}


@org_page("billing:read")
def usage(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    period = int(request.GET["days"]) if request.GET.get("days", "").isdigit() else 30
    period = period if period in USAGE_PERIODS else 30
    end = timezone.now().date()
    data = _usage_by_day(start=end - timedelta(days=period - 1), end=end)
    totals = [
        {
            "name": s["name"],
            "requests": sum(v["requests"] for v in s["values"]),
            "units": sum(v["units"] for v in s["values"]),
        }
        for s in data["series"]
    ]
    context = {
        "usage": data,
        "totals": totals,
        "period": period,
        "periods": USAGE_PERIODS,
        # The org's plan, as billing last announced it.
        "free_playground": entitlements_for(model=Entitlement, org_id=access.org_id)
        .meters["playground"]
        .included,
    }
    return render(request, "inference/usage.html", context)


# --- batch classify ------------------------------------------------------------------------------------------

BATCH_RUNNING = (
    BatchStatus.VALIDATING,
    BatchStatus.IN_PROGRESS,
    BatchStatus.FINALIZING,
    BatchStatus.CANCELLING,
)


def _batch(batch_id: int) -> Batch:
    batch = Batch.objects.filter(pk=batch_id, api=Batch.CONSOLE).first()
    if batch is None:
        raise Http404
    return batch


@org_page("models:read")
@require_http_methods(["GET", "POST"])
def batch_list(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    """Upload a CSV or JSONL of texts and classify it with a live deployment in the background."""
    live = list(selectors.deployments_list().filter(status=DeploymentStatus.LIVE).order_by("name"))
    can_run = holds(access.scopes, "inference")
    error = None
    if request.method == "POST":
        if not can_run:
            raise PermissionDenied
        upload = request.FILES.get("file")
        name = request.POST.get("deployment", "")
        try:
            if upload is None:
                raise ApiError(status=400, code="invalid", message="Choose a CSV or JSONL file to classify.")
            if name not in {deployment.name for deployment in live}:
                raise ApiError(
                    status=400, code="invalid", message="Choose a live deployment to classify with."
                )
            batch = batches.batch_create(
                org_id=access.org_id,
                api_key_id=None,
                input_file_ids=None,
                endpoint="/v1/classifications",
                completion_window="24h",
                metadata={"filename": upload.name or "upload", "by": request.user.get_username()},
                api=Batch.CONSOLE,
                model=name,
                inline=batches.console_requests(upload.read(), filename=upload.name or ""),
            )
        except ApiError as problem:
            error = problem.message
        else:
            return redirect(page_path("console-batch", org=org, batch_id=batch.pk))
    context = {
        "deployments": live,
        "chosen": request.POST.get("deployment", ""),
        "batches": list(Batch.objects.filter(api=Batch.CONSOLE).order_by("-id")[:50]),
        "running": BATCH_RUNNING,
        "can_run": can_run,
        "error": error,
        "max_rows": f"{batches.INLINE_MAX:,}",
    }
    return render(request, "inference/batch_list.html", context, status=400 if error else 200)


@org_page("models:read")
def batch_detail(request: HttpRequest, batch_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    """The batch's progress (its part re-fetched by htmx while it runs), and its results as CSV or JSONL."""
    batch = _batch(batch_id)
    done = batch.status in (BatchStatus.COMPLETED, BatchStatus.CANCELLED) and batch.cursor > 0
    wanted = request.GET.get("download")
    if wanted in ("csv", "jsonl") and done:
        results = batches.console_results(batch)
        stem = (batch.metadata or {}).get("filename", "batch").rsplit(".", 1)[0]
        if wanted == "csv":
            response = HttpResponse(
                batches.console_results_csv(results), content_type="text/csv; charset=utf-8"
            )
        else:
            response = HttpResponse(batches.console_results_jsonl(results), content_type="application/jsonl")
        response["Content-Disposition"] = f'attachment; filename="{stem}-results.{wanted}"'
        return response
    context = {
        "batch": batch,
        "running": batch.status in BATCH_RUNNING,
        "done": done,
        "percent": round(100 * batch.cursor / batch.total) if batch.total else 0,
        "preview": batches.console_results(batch)[:20] if done else [],
        "can_run": holds(access.scopes, "inference"),
    }
    template = (
        "inference/_batch_progress.html"
        if request.GET.get("part") == "progress"
        else "inference/batch_detail.html"
    )
    return render(request, template, context)


@org_page("inference")
@require_POST
def batch_cancel(request: HttpRequest, batch_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    try:
        batches.batch_cancel(batch=_batch(batch_id))
    except ApiError as problem:
        messages.error(request, problem.message)
    else:
        messages.success(request, "Cancelling: the rows classified so far are kept as the results.")
    return redirect(page_path("console-batch", org=org, batch_id=batch_id))
