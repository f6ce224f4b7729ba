"""Image inputs: fetch an image a customer named (an http(s) URL or a `data:` URI) or decode one they sent, check
it, and normalise it.

Every URL goes through the egress guard (`arbiter.egress`) with the `ARBITER_FETCH_*` settings: public addresses
only unless inside `ARBITER_FETCH_ALLOWED_NETWORKS`, each redirect re-checked (at most
`ARBITER_FETCH_MAX_REDIRECTS`), the connection made to the checked address, one time limit for the whole chain,
and at most `ARBITER_FETCH_MAX_BYTES` read.

The bytes are then sniffed by Pillow, never trusted from `Content-Type` or a file name: JPEG, PNG, WebP and GIF
(its first frame) are accepted. The pixel count is checked from the header before anything is decoded (a
decompression bomb is refused without being expanded). The image is decoded fully (a truncated file fails here,
not later), its EXIF orientation applied, and re-encoded without metadata (no GPS position or camera serial
kept): PNG for lossless sources (PNG, GIF) and anything with transparency, JPEG otherwise. `FetchedImage.sha256`
is the hash of those normalised bytes, the key they are stored under.

Every failure is an `ImageError` whose `code` is one of `ERROR_CODES` and whose message is safe to show the
user (no query string, credentials or header values).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from PIL import Image, ImageOps, UnidentifiedImageError

from arbiter.egress import (
    EgressFailed,
    EgressPolicy,
    EgressRefused,
    egress_get_following,
    redact_url,
)

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
MIME_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}

# code: what it means (shown beside a failed row and in 400 answers).
ERROR_CODES: dict[str, str] = {
    "invalid_url": "not an http(s) URL or data: URI that can be read",
    "scheme": "a URL scheme that may not be fetched",
    "address": "the host is (or redirects to) a private, loopback, link-local or metadata address",
    "too_many_redirects": "more redirects than allowed",
    "dns": "the host name does not resolve",
    "connect": "the host refused or could not be reached",
    "connect_timeout": "timed out connecting",
    "timeout": "no complete answer within the time limit",
    "tls": "TLS failed (certificate or handshake)",
    "protocol": "the connection broke off",
    "network": "another network error",
    "http_status": "the server answered an error status",
    "too_large": "the file is larger than allowed",
    "empty": "the answer or data held no bytes",
    "not_an_image": "the bytes are not an image (an HTML page, text, ...)",
    "unsupported_format": "an image format other than JPEG, PNG, WebP or GIF",
    "decompression_bomb": "more pixels than allowed",
    "truncated": "the image file is cut off or corrupt",
    "not_in_archive": "a row of an uploaded zip names a file the zip does not hold (or a bare name several share)",
}


class ImageError(Exception):
    """An image could not be fetched or read; `code` is one of `ERROR_CODES`, the message is safe to show."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class ImageLimits:
    timeout_s: float = 15.0
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_redirects: int = 3


@dataclass(frozen=True)
class FetchedImage:
    """A checked image: `data` is the normalised encoding (`mime`), `sha256` its hex digest."""

    data: bytes
    mime: str
    sha256: str
    width: int
    height: int
    # The format the source was sniffed as (JPEG, PNG, WEBP, GIF).
    source_format: str

    @property
    def extension(self) -> str:
        return "png" if self.mime == "image/png" else "jpg"


def image_policy() -> EgressPolicy:
    """The egress policy for image fetches, from the process's settings."""
    from arbiter.config.typed_settings import arbiter_settings

    settings = arbiter_settings()
    return EgressPolicy.build(
        use="image fetch",
        allowed_networks=settings.fetch.allowed_networks,
        production=settings.core.env == "production",
    )


def image_limits() -> ImageLimits:
    from arbiter.config.typed_settings import arbiter_settings

    fetch = arbiter_settings().fetch
    return ImageLimits(
        timeout_s=fetch.timeout_s,
        max_bytes=fetch.max_bytes,
        max_pixels=fetch.max_pixels,
        max_redirects=fetch.max_redirects,
    )


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def decode_image(data: bytes, *, limits: ImageLimits | None = None, where: str = "the image") -> FetchedImage:
    """Check and normalise image bytes (see the module docstring); raises `ImageError`."""
    limits = limits or ImageLimits()
    if not data:
        raise ImageError("empty", f"{where} is empty")
    if len(data) > limits.max_bytes:
        raise ImageError("too_large", f"{where} is larger than {_mib(limits.max_bytes)}")
    try:
        # Opening reads the header only: the format and size are checked before any pixel is decoded.
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        head = data[:512].lstrip().lower()
        if head.startswith((b"<!doctype html", b"<html")) or b"<html" in head:
            raise ImageError("not_an_image", f"{where} is an HTML page, not an image") from None
        raise ImageError("not_an_image", f"{where} is not an image Arbiter can read") from None
    except Image.DecompressionBombError:
        raise ImageError("decompression_bomb", f"{where} has more pixels than allowed") from None
    except (OSError, ValueError, SyntaxError):
        raise ImageError("truncated", f"{where} is cut off or corrupt") from None
    with image:
        source_format = image.format or ""
        if source_format not in ACCEPTED_FORMATS:
            raise ImageError(
                "unsupported_format",
                f"{where} is {source_format or 'an unknown format'}; JPEG, PNG, WebP and GIF are accepted",
            )
        width, height = image.size
        if width * height > limits.max_pixels:
            raise ImageError(
                "decompression_bomb",
                f"{where} is {width}x{height} pixels, more than the {limits.max_pixels} allowed",
            )
        try:
            image.seek(0)  # a GIF's (or animated WebP's) first frame
            image.load()
            oriented = ImageOps.exif_transpose(image) or image
            return _normalise(oriented, source_format)
        except Image.DecompressionBombError:
            raise ImageError("decompression_bomb", f"{where} has more pixels than allowed") from None
        except (OSError, ValueError, SyntaxError, EOFError):
            raise ImageError("truncated", f"{where} is cut off or corrupt") from None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def _normalise(image: Image.Image, source_format: str) -> FetchedImage:
    lossless = source_format in ("PNG", "GIF") or _has_alpha(image)
    out = io.BytesIO()
    if lossless:
        converted = image.convert("RGBA" if _has_alpha(image) else "RGB")
        converted.save(out, format="PNG", optimize=False, compress_level=6)
        mime = "image/png"
    else:
        converted = image.convert("RGB")
        converted.save(out, format="JPEG", quality=92)
        mime = "image/jpeg"
    data = out.getvalue()
    return FetchedImage(
        data=data,
        mime=mime,
        sha256=hashlib.sha256(data).hexdigest(),
        width=converted.width,
        height=converted.height,
        source_format=source_format,
    )


def decode_data_uri(uri: str, *, limits: ImageLimits | None = None) -> FetchedImage:
    """A `data:[<mime>][;base64],<data>` URI; the declared type is ignored (the bytes are sniffed)."""
    limits = limits or ImageLimits()
    header, comma, payload = uri.partition(",")
    if not comma or not header.lower().startswith("data:"):
        raise ImageError("invalid_url", "the data: URI has no ',' before its data")
    if header.lower().endswith(";base64"):
        # 4 base64 characters carry 3 bytes: refuse an oversized payload before decoding it.
        if len(payload) * 3 // 4 > limits.max_bytes + 3:
            raise ImageError("too_large", f"the data: URI's image is larger than {_mib(limits.max_bytes)}")
        data = decode_base64(payload, where="the data: URI")
    else:
        if len(payload) > 3 * limits.max_bytes:
            raise ImageError("too_large", f"the data: URI's image is larger than {_mib(limits.max_bytes)}")
        data = unquote_to_bytes(payload)
    return decode_image(data, limits=limits, where="the data: URI's image")


def decode_base64(text: str, *, where: str = "the base64 image") -> bytes:
    cleaned = "".join(text.split())
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError):
        try:
            return base64.urlsafe_b64decode(cleaned + "=" * (-len(cleaned) % 4))
        except (binascii.Error, ValueError):
            raise ImageError("invalid_url", f"{where} is not valid base64") from None


def decode_base64_image(text: str, *, limits: ImageLimits | None = None) -> FetchedImage:
    """An image sent inline as base64 (a bare string or a `data:` URI)."""
    limits = limits or ImageLimits()
    if text.lstrip()[:5].lower() == "data:":
        return decode_data_uri(text.strip(), limits=limits)
    if len(text) * 3 // 4 > limits.max_bytes + 3:
        raise ImageError("too_large", f"the base64 image is larger than {_mib(limits.max_bytes)}")
    return decode_image(decode_base64(text), limits=limits, where="the base64 image")


ACCEPT = "image/webp,image/png,image/jpeg,image/gif;q=0.9,*/*;q=0.5"


def fetch_image(
    url: str,
    *,
    policy: EgressPolicy | None = None,
    limits: ImageLimits | None = None,
) -> FetchedImage:
    """Fetch and check the image at an http(s) URL or in a `data:` URI; raises `ImageError`.

    Without `policy`/`limits` the process's `ARBITER_FETCH_*` settings apply."""
    url = url.strip()
    limits = limits or image_limits()
    if url[:5].lower() == "data:":
        return decode_data_uri(url, limits=limits)
    policy = policy or image_policy()
    where = redact_url(url)
    try:
        answer = egress_get_following(
            url,
            policy=policy,
            max_redirects=limits.max_redirects,
            headers={"Accept": ACCEPT, "User-Agent": "Arbiter-ImageFetch/1"},
            timeout_s=limits.timeout_s,
            # One byte more than allowed tells "too large" from "exactly the limit".
            max_body_bytes=limits.max_bytes + 1,
        )
    except (EgressRefused, EgressFailed) as exc:
        raise ImageError(exc.reason if exc.reason in ERROR_CODES else "network", str(exc)) from None
    if answer.status != 200:
        raise ImageError("http_status", f"{where} answered HTTP {answer.status}")
    if len(answer.body) > limits.max_bytes:
        raise ImageError("too_large", f"{where} is larger than {_mib(limits.max_bytes)}")
    content_type = answer.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        return decode_image(answer.body, limits=limits, where=where)
    except ImageError as exc:
        if exc.code == "not_an_image" and content_type == "text/html":
            raise ImageError("not_an_image", f"{where} is an HTML page, not an image") from None
        raise


def thumbnail(data: bytes, *, size: int = 160) -> bytes:
    """A small JPEG (or PNG, when transparent) of normalised image bytes, at most `size` pixels a side."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale, much faster
        alpha = _has_alpha(image)
        small = image.convert("RGBA" if alpha else "RGB")
        small.thumbnail((size, size))
        out = io.BytesIO()
        if alpha:
            small.save(out, format="PNG")
        else:
            small.save(out, format="JPEG", quality=80)
        return out.getvalue()


def open_rgb(data: bytes) -> Image.Image:
    """Normalised image bytes as an RGB Pillow image (transparency flattened on white), for the encoders."""
    image = Image.open(io.BytesIO(data))
    image.load()
    if _has_alpha(image):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
