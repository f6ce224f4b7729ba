"""Image inputs at inference: `{"image_url": ...}` (an http(s) URL or a `data:` URI; OpenAI's `{"url": ...}`
object too) and `{"image_base64": ...}` items, for models on an image base.

Each image gets the checks of `arbiter.images` (the egress guard with `ARBITER_FETCH_*`, the size cap, type
sniffing, the decompression-bomb limit, EXIF orientation); a bad one is a 400 naming the input and the reason.
The checked image is handed to the encoders by its hash (`arbiter.ml.image_encoders.remember_image`) and
stored in the blob store only when the deployment logs its requests (the log then names it by hash).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from arbiter.api.errors import ApiError
from arbiter.images import (
    FetchedImage,
    ImageError,
    decode_base64_image,
    fetch_image,
    image_limits,
    image_policy,
    image_store,
)
from arbiter.ml.image_encoders import remember_image
from arbiter.storage import get_blob_store
from services.inference import logic
from services.inference.conf import inference_settings
from services.inference.serving.inputs import MULTIMODAL, multimodal_input

# Images fetched at once for one request.
FETCH_CONCURRENCY = 8


def model_input_kind(artifact: str) -> str:
    """ "image" or "text": what the model behind an artifact classifies."""
    return logic.loaded_or_unavailable(artifact).input_kind


def _is_image_item(item: Any) -> bool:
    return isinstance(item, dict) and ("image_url" in item or "image_base64" in item)


def _image_source(item: dict[str, Any], where: str) -> tuple[str, str]:
    """("url", value) or ("base64", value) of one image item; 400 when it is malformed."""
    if "image_base64" in item:
        value = item["image_base64"]
        kind = "base64"
    else:
        value = item["image_url"]
        if isinstance(value, dict):  # OpenAI's {"image_url": {"url": ...}}
            value = value.get("url")
        kind = "url"
    if not isinstance(value, str) or not value.strip():
        raise ApiError(
            status=400,
            code="invalid_image",
            message=f"{where}: give the image as a non-empty string (an http(s) URL, a data: URI or base64).",
            details={"reason": "invalid_url"},
        )
    return kind, value


def _checked(kind: str, value: str) -> FetchedImage:
    limits = image_limits()
    if kind == "base64":
        return decode_base64_image(value, limits=limits)
    return fetch_image(value, policy=image_policy(), limits=limits)


def images_resolve(items: Sequence[tuple[str, dict[str, Any]]], *, store: bool) -> list[str]:
    """Fetch or decode each `(where, item)`, concurrently; their image keys, in order. The first bad image
    (in input order) is the 400."""
    sources = [(where, *_image_source(item, where)) for where, item in items]
    with ThreadPoolExecutor(max_workers=min(FETCH_CONCURRENCY, max(1, len(sources)))) as pool:
        outcomes = list(pool.map(lambda s: _attempt(s[1], s[2]), sources))
    keys = []
    for (where, _, _), outcome in zip(sources, outcomes, strict=True):
        if isinstance(outcome, ImageError):
            raise ApiError(
                status=400,
                code="invalid_image",
                message=f"{where}: {outcome.message}",
                details={"reason": outcome.code},
            )
        if store:
            image_store(get_blob_store(), outcome)
        keys.append(remember_image(outcome.sha256, outcome.data))
    return keys


def _attempt(kind: str, value: str) -> FetchedImage | ImageError:
    try:
        return _checked(kind, value)
    except ImageError as error:
        return error


def classify_inputs(value: Any, *, field: str, kind: str, store: bool = False) -> list[str]:
    """The inputs of a classify request for a model of `kind`: texts as `logic.inputs_validate` checks them,
    image items as image keys. An input of the wrong kind is a 400 naming it."""
    if kind == MULTIMODAL:
        return _multimodal_inputs(value, field=field, store=store)
    items = value if isinstance(value, list) else [value]
    if kind == "text":
        for index, item in enumerate(items):
            if _is_image_item(item):
                where = f"{field}[{index}]" if isinstance(value, list) else field
                raise ApiError(
                    status=400,
                    code="unsupported_input",
                    message=f"{where}: this model classifies text, not images.",
                    details={"index": index},
                )
        return logic.inputs_validate(value, field=field)
    if not items or not isinstance(value, list | dict):
        if isinstance(value, str):
            raise ApiError(
                status=400,
                code="unsupported_input",
                message=f'{field}: this model classifies images; give {{"image_url": ...}} or '
                '{"image_base64": ...} items.',
            )
        return logic.inputs_validate(value, field=field)  # the same errors as for texts (empty, wrong type)
    max_inputs = inference_settings().max_inputs
    if len(items) > max_inputs:
        raise ApiError(
            status=413,
            code="too_many_inputs",
            message=f"{field}: at most {max_inputs} inputs per request, got {len(items)}; split them.",
            details={"max_inputs": max_inputs, "inputs": len(items)},
        )
    located = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]" if isinstance(value, list) else field
        if not _is_image_item(item):
            raise ApiError(
                status=400,
                code="unsupported_input",
                message=f'{where}: this model classifies images; give {{"image_url": ...}} or '
                '{"image_base64": ...}.',
                details={"index": index},
            )
        located.append((where, item))
    return images_resolve(located, store=store)


def _multimodal_inputs(value: Any, *, field: str, store: bool) -> list[str]:
    """A policy's inputs: each a text, an image item, or an image item with a `text` beside it (one input read
    together); see `services.inference.serving.inputs`."""
    items = value if isinstance(value, list) else [value]
    if not any(isinstance(item, dict) for item in items):
        plain = logic.inputs_validate(value, field=field)
        for index, text in enumerate(plain):
            _no_nul(text, f"{field}[{index}]" if isinstance(value, list) else field)
        return plain
    max_inputs = inference_settings().max_inputs
    if len(items) > max_inputs:
        raise ApiError(
            status=413,
            code="too_many_inputs",
            message=f"{field}: at most {max_inputs} inputs per request, got {len(items)}; split them.",
            details={"max_inputs": max_inputs, "inputs": len(items)},
        )
    texts: list[str] = []
    located: list[tuple[int, str, dict[str, Any]]] = []
    for index, item in enumerate(items):
        where = f"{field}[{index}]" if isinstance(value, list) else field
        if isinstance(item, dict) and not _is_image_item(item) and set(item) != {"text"}:
            raise ApiError(
                status=400,
                code="unsupported_input",
                message=f'{where}: give a text, {{"image_url": ...}} or {{"image_base64": ...}} (with an optional '
                '"text" read with it), or {"text": ...}.',
                details={"index": index},
            )
        image = isinstance(item, dict) and _is_image_item(item)
        text = item.get("text", "") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ApiError(
                status=400,
                code="invalid",
                message=f'{where}: "text" must be a string.',
                details={"index": index},
            )
        if text or not image:  # an image may come alone; a text is checked as any text is
            logic.inputs_validate(text, field=where)
            _no_nul(text, where)
        texts.append(text)
        if image:
            located.append((index, where, item))
    keys = images_resolve([(where, item) for _, where, item in located], store=store)
    images = {index: key for (index, _, _), key in zip(located, keys, strict=True)}
    return [multimodal_input(text=text, image_key=images.get(index)) for index, text in enumerate(texts)]


def _no_nul(text: str, where: str) -> None:
    if "\x00" in text:
        raise ApiError(
            status=400, code="invalid", message=f"{where}: the text holds a NUL character (\\u0000)."
        )


def openai_multimodal(value: Any) -> list[dict[str, Any]] | None:
    """OpenAI's multi-modal input (`[{"type": "text", "text": ...}, {"type": "image_url", "image_url":
    {"url": ...}}]`), which is ONE input, as our items; None when `value` is not of that form."""
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(p, dict) and "type" in p for p in value)
    ):
        return None
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(value):
        if part["type"] == "text":
            parts.append({"text": part.get("text")})
        elif part["type"] == "image_url":
            parts.append({"image_url": part.get("image_url")})
        else:
            raise ApiError(
                status=400,
                code="unsupported_input",
                message=f"input[{index}]: the type {part['type']!r} is not supported (text or image_url).",
                details={"index": index},
            )
    return parts
