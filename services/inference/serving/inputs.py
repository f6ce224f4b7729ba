"""One input of a policy (a text, an image, or both) as the single string the classify pipeline carries.

The pipeline (validation, the model cache, usage, the request log, cascades) moves inputs as strings; an image
travels as its key (`sha256:<hex>`, its checked bytes held by `arbiter.ml.image_encoders`). A policy reads both
at once, so its input is the image key behind a NUL mark, then the text: `"\\x00image:sha256:<hex>\\x00text"`.
Texts sent to a policy may not hold NUL, so a text can never pass for an image.
"""

from __future__ import annotations

import re

MULTIMODAL = "multimodal"
_MARK = "\x00image:"
_ENCODED = re.compile(r"\x00image:(sha256:[0-9a-f]{64})\x00(.*)\Z", re.DOTALL)


def multimodal_input(*, text: str, image_key: str | None) -> str:
    return f"{_MARK}{image_key}\x00{text}" if image_key else text


def multimodal_parts(value: str) -> tuple[str, str | None]:
    """The text and the image key (or None) of an input made by `multimodal_input`."""
    found = _ENCODED.match(value)
    return (found[2], found[1]) if found else (value, None)
