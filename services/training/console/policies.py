"""Console pages of policies: write one, edit it into new versions, evaluate a version on a labelled snapshot
(the metrics read like a trained version's), and diff two versions on one snapshot. Forms go through the same
`services.training.policies` functions as the API, so a page refuses exactly what the API refuses, in the same
words."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, QueryDict
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from arbiter.api.errors import ApiError
from arbiter.config.routes import page_path
from arbiter.console.pages import org_page
from arbiter.llm.policy import PROMPT_STYLES, PolicyDocument, policy_text
from arbiter.ml.specs import label_is_negative
from arbiter.tenancy.access import OrgAccess
from arbiter.tenancy.scopes import holds
from services.training import policies
from services.training.models import Model, ModelVersion, PolicyEvaluation, Snapshot

STYLE_HELP = {
    "generic": "Moderator instructions as the system message, the policy and the content in the user message.",
    "safeguard": "The policy itself is the system message (the format gpt-oss-safeguard is trained on).",
    "llama_guard": "Llama Guard's prompt: categories become S1, S2, … and its 'safe' / 'unsafe S2' answer is "
    "mapped back onto them.",
}


def _policy(policy_id: int) -> Model:
    model = Model.objects.filter(pk=policy_id, type=policies.POLICY).first()
    if model is None:
        raise Http404
    return model


def _examples_text(examples: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"{e['flag']}: {e['content']}" + (f" -- {e['note']}" if e.get("note") else "") for e in examples
    )


def _examples_parse(text: str, where: str) -> list[dict[str, Any]]:
    """One example per line: `unsafe: <content> -- <note>` or `safe: <content>`."""
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        flag, sep, rest = line.partition(":")
        if not sep or flag.strip() not in ("safe", "unsafe"):
            raise ApiError(
                status=400,
                code="invalid",
                message=f"{where}, line {number}: start an example with 'unsafe:' or 'safe:'.",
            )
        content, _, note = rest.partition(" -- ")
        examples.append({"flag": flag.strip(), "content": content.strip(), "note": note.strip()})
    return examples


def _data_from_post(post: QueryDict) -> dict[str, Any]:
    """The API body a form stands for; an empty API key keeps the stored one."""
    categories = []
    for i in range(int(post.get("category_count") or 0)):
        name = post.get(f"category-{i}-name", "").strip()
        definition = post.get(f"category-{i}-definition", "").strip()
        if not name and not definition:
            continue
        categories.append(
            {
                "name": name,
                "definition": definition,
                "violates": post.get(f"category-{i}-violates", ""),
                "safe": post.get(f"category-{i}-safe", ""),
                "examples": _examples_parse(
                    post.get(f"category-{i}-examples", ""), f"Category {name or i + 1}"
                ),
            }
        )
    provider: dict[str, Any] = {
        "base_url": post.get("base_url", "").strip(),
        "model": post.get("model", "").strip(),
        "logprobs": post.get("logprobs") == "on",
        "vision": post.get("vision") == "on",
    }
    if post.get("api_key"):
        provider["api_key"] = post["api_key"]
    data: dict[str, Any] = {
        "instructions": post.get("instructions", ""),
        "prompt_style": post.get("prompt_style", "generic"),
        "provider": provider,
        "categories": categories,
    }
    return data


def _form(document: dict[str, Any] | None, post: QueryDict | None) -> dict[str, Any]:
    """What the form shows: the posted values after an error, else the document, plus one empty category."""
    values: dict[str, Any]
    categories: list[dict[str, Any]]
    if post is not None:
        count = int(post.get("category_count") or 0)
        categories = [
            {
                "name": post.get(f"category-{i}-name", ""),
                "definition": post.get(f"category-{i}-definition", ""),
                "violates": post.get(f"category-{i}-violates", ""),
                "safe": post.get(f"category-{i}-safe", ""),
                "examples": post.get(f"category-{i}-examples", ""),
            }
            for i in range(count)
        ]
        values = {
            key: post.get(key, "") for key in ("name", "instructions", "prompt_style", "base_url", "model")
        }
        values.update(logprobs=post.get("logprobs") == "on", vision=post.get("vision") == "on", hint="")
    else:
        doc = document or {}
        provider = doc.get("provider") or {}
        categories = [
            {**c, "examples": _examples_text(c.get("examples") or [])} for c in doc.get("categories", [])
        ]
        values = {
            "name": doc.get("name", ""),
            "instructions": doc.get("instructions", ""),
            "prompt_style": doc.get("prompt_style", "generic"),
            "base_url": provider.get("base_url", ""),
            "model": provider.get("model", ""),
            "logprobs": bool(provider.get("logprobs")),
            "vision": bool(provider.get("vision")),
            "hint": provider.get("api_key_hint", ""),
        }
        # Room for one more category (three on a new policy); empty blocks are ignored when saved.
        empty = {"name": "", "definition": "", "violates": "", "safe": "", "examples": ""}
        categories += [dict(empty) for _ in range(1 if document else 3)]
    return {
        "values": values,
        "categories": categories,
        "category_count": len(categories),
        "styles": [(s, STYLE_HELP[s]) for s in PROMPT_STYLES],
    }


@org_page("models:read")
def policy_list(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    rows = []
    for model in Model.objects.filter(type=policies.POLICY).prefetch_related("versions").order_by("name"):
        latest = max(model.versions.all(), key=lambda v: v.number, default=None)
        rows.append({"model": model, "latest": latest})
    context = {"rows": rows, "can_write": holds(access.scopes, "models:write")}
    return render(request, "training/policy_list.html", context)


@org_page("models:write")
@require_http_methods(["GET", "POST"])
def policy_create(request: HttpRequest, *, org: str, access: OrgAccess) -> HttpResponse:
    error = None
    if request.method == "POST":
        try:
            version = policies.policy_create(
                org_id=access.org_id, name=request.POST.get("name", ""), data=_data_from_post(request.POST)
            )
        except ApiError as exc:
            error = exc.message
        else:
            return redirect(page_path("console-policy", org=org, policy_id=version.model_id))
    context = {**_form(None, request.POST if error else None), "error": error, "creating": True}
    return render(request, "training/policy_form.html", context, status=400 if error else 200)


@org_page("models:read")
@require_http_methods(["GET", "POST"])
def policy_detail(request: HttpRequest, policy_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    model = _policy(policy_id)
    versions = list(ModelVersion.objects.filter(model=model).order_by("-number"))
    latest = versions[0]
    error = None
    if request.method == "POST":
        if not holds(access.scopes, "models:write"):
            raise Http404
        try:
            version = policies.policy_version_create(model=model, data=_data_from_post(request.POST))
        except ApiError as exc:
            error = exc.message
        else:
            return redirect(
                page_path("console-policy", org=org, policy_id=model.pk) + f"?saved={version.number}"
            )
    evaluations = list(
        PolicyEvaluation.objects.filter(version__model=model)
        .select_related("version")
        .order_by("-created_at")[:50]
    )
    context = {
        **_form(latest.policy, request.POST if error else None),
        "model": model,
        "versions": versions,
        "latest": latest,
        "prompt_preview": policy_text(PolicyDocument.from_dict(latest.policy or {})) if latest.policy else "",
        "evaluations": evaluations,
        "snapshots": list(Snapshot.objects.order_by("-snapshot_id")[:100]),
        "saved": request.GET.get("saved"),
        "error": error,
        "can_write": holds(access.scopes, "models:write"),
    }
    return render(request, "training/policy_detail.html", context, status=400 if error else 200)


def _int(value: str | None) -> int | None:
    return int(value) if value and value.strip().isdigit() else None


@org_page("models:write")
@require_POST
def policy_evaluate(request: HttpRequest, policy_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    model = _policy(policy_id)
    try:
        version = policies.policy_version(model=model, number=_int(request.POST.get("version")))
        evaluation, _ = policies.evaluation_request(
            version=version,
            snapshot_id=_int(request.POST.get("snapshot")),
            head=request.POST.get("head") or None,
            limit=_int(request.POST.get("limit")) or 0,
        )
    except ApiError as exc:
        url = page_path("console-policy", org=org, policy_id=model.pk)
        return render(
            request,
            "training/policy_message.html",
            {"model": model, "error": exc.message, "back": url},
            status=exc.status_code,
        )
    return redirect(
        page_path("console-policy-evaluation", org=org, policy_id=model.pk, evaluation_id=evaluation.pk)
    )


@org_page("models:read")
@require_http_methods(["GET", "POST"])
def policy_evaluation(
    request: HttpRequest, policy_id: int, evaluation_id: int, *, org: str, access: OrgAccess
) -> HttpResponse:
    model = _policy(policy_id)
    evaluation = (
        PolicyEvaluation.objects.filter(pk=evaluation_id, version__model=model)
        .select_related("version", "version__model")
        .first()
    )
    if evaluation is None:
        raise Http404
    if request.method == "POST":
        # Send the rows the policy and their labels disagree on to the annotation service's review queue.
        if not holds(access.scopes, "models:write"):
            raise Http404
        try:
            sent = policies.evaluation_review(evaluation=evaluation)
        except ApiError as exc:
            messages.error(request, exc.message)
        else:
            messages.success(
                request,
                f"{sent} rows sent to the review queue: they appear under Labeling as a job of dataset "
                f"{Snapshot.objects.get(snapshot_id=evaluation.snapshot_id).dataset_id}, head "
                f"{evaluation.head!r}."
                if sent
                else "The policy agrees with every label: nothing to review.",
            )
        return redirect(request.path)
    metrics = ((evaluation.evaluation or {}).get("heads") or {}).get(evaluation.head)
    decisions = evaluation.decisions
    shown = request.GET.get("show", "disagree")
    if shown == "disagree":
        decisions = [d for d in decisions if "error" in d or _disagrees(d)]
    snapshot = Snapshot.objects.filter(snapshot_id=evaluation.snapshot_id).first()
    context = {
        "model": model,
        "evaluation": evaluation,
        "dataset_id": snapshot.dataset_id if snapshot else None,
        "can_write": holds(access.scopes, "models:write"),
        "metrics": metrics,
        "decisions": decisions[:500],
        "shown": shown,
        "running": evaluation.state in (PolicyEvaluation.QUEUED, PolicyEvaluation.RUNNING),
    }
    return render(request, "training/policy_evaluation.html", context)


def _disagrees(decision: dict[str, Any]) -> bool:
    """Whether the policy flagged a row its labels call safe, or let pass a row they flag."""
    truth = decision.get("truth")
    if truth is None:
        return False
    return (decision.get("flag") == "unsafe") != any(not label_is_negative(label) for label in truth)


@org_page("models:read")
def policy_diff(request: HttpRequest, policy_id: int, *, org: str, access: OrgAccess) -> HttpResponse:
    model = _policy(policy_id)
    numbers = list(
        ModelVersion.objects.filter(model=model).order_by("number").values_list("number", flat=True)
    )
    query = request.GET
    body = None
    error = None
    if query.get("snapshot"):
        if not holds(access.scopes, "models:write"):
            raise Http404
        try:
            body = policies.policy_diff(
                model=model,
                snapshot_id=_int(query.get("snapshot")),
                head=query.get("head") or None,
                from_version=_int(query.get("from_version")),
                to_version=_int(query.get("to_version")),
                limit=_int(query.get("limit")) or 0,
            )
        except ApiError as exc:
            error = exc.message
    context = {
        "model": model,
        "numbers": numbers,
        "snapshots": list(Snapshot.objects.order_by("-snapshot_id")[:100]),
        "query": {
            "snapshot": query.get("snapshot", ""),
            "head": query.get("head", ""),
            "from_version": query.get("from_version") or (str(numbers[-2]) if len(numbers) > 1 else ""),
            "to_version": query.get("to_version") or (str(numbers[-1]) if numbers else ""),
            "limit": query.get("limit", ""),
        },
        "diff": body,
        "error": error,
    }
    return render(request, "training/policy_diff.html", context, status=400 if error else 200)
