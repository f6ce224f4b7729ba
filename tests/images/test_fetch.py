"""`arbiter.images.fetch_image`: images served on loopback (inside an allowed network) come back checked and
normalised; every bad input fails with a code and a message a user can act on."""

from __future__ import annotations

import base64
import hashlib
import io
import socket
from collections.abc import Iterator

import pytest
from PIL import Image

from arbiter.egress import EgressPolicy
from arbiter.images import ImageError, ImageLimits, decode_base64_image, fetch_image, thumbnail
from arbiter.testing.images import ImageServer, make_bomb_png, make_image, running_image_server

LOOPBACK = EgressPolicy.build(use="image fetch", allowed_networks=["127.0.0.1/32"], production=False)
LIMITS = ImageLimits(timeout_s=5.0, max_bytes=20 * 1024 * 1024, max_pixels=40_000_000, max_redirects=3)


@pytest.fixture(scope="module")
def server() -> Iterator[ImageServer]:
    with running_image_server() as running:
        yield running


def fetch(url: str, **limits: object) -> object:
    return fetch_image(url, policy=LOOPBACK, limits=ImageLimits(**{**LIMITS.__dict__, **limits}))


def failure(url: str, **limits: object) -> ImageError:
    with pytest.raises(ImageError) as caught:
        fetch(url, **limits)
    return caught.value


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF"])
def test_each_accepted_format_is_fetched_and_normalised(server: ImageServer, fmt: str) -> None:
    url = server.serve(f"/ok.{fmt.lower()}", make_image(fmt, size=(80, 60)), content_type="image/x-anything")
    got = fetch(url)
    assert (got.width, got.height, got.source_format) == (80, 60, fmt)
    assert got.mime == ("image/jpeg" if fmt in ("JPEG", "WEBP") else "image/png")
    assert got.sha256 == hashlib.sha256(got.data).hexdigest()
    with Image.open(io.BytesIO(got.data)) as reread:
        assert reread.size == (80, 60)
        assert "exif" not in reread.info


def test_a_gif_gives_its_first_frame(server: ImageServer) -> None:
    url = server.serve("/anim.gif", make_image("GIF", color=(250, 0, 0), frames=3), content_type="image/gif")
    with Image.open(io.BytesIO(fetch(url).data)) as image:  # type: ignore[attr-defined]
        red, green, blue = image.convert("RGB").getpixel((5, 5))
    assert red > 200 and blue < 50


def test_exif_orientation_is_applied(server: ImageServer) -> None:
    # Orientation 6: the stored pixels are to be turned 90 degrees clockwise to be seen upright.
    url = server.serve("/rotated.jpg", make_image("JPEG", size=(80, 40), exif_orientation=6))
    got = fetch(url)
    assert (got.width, got.height) == (40, 80)


def test_the_same_picture_hashes_the_same_and_another_differently(server: ImageServer) -> None:
    a = fetch(server.serve("/a.png", make_image("PNG", color=(1, 2, 3))))
    again = fetch(server.serve("/a-again.png", make_image("PNG", color=(1, 2, 3))))
    other = fetch(server.serve("/b.png", make_image("PNG", color=(9, 9, 9))))
    assert a.sha256 == again.sha256 != other.sha256  # type: ignore[attr-defined]


def test_a_data_uri_and_base64_are_decoded_without_the_network() -> None:
    raw = make_image("PNG", size=(10, 12))
    encoded = base64.b64encode(raw).decode()
    from_uri = fetch_image(f"data:image/png;base64,{encoded}", policy=LOOPBACK, limits=LIMITS)
    assert (from_uri.width, from_uri.height) == (10, 12)
    assert decode_base64_image(encoded, limits=LIMITS).sha256 == from_uri.sha256


def test_a_redirect_inside_the_allowed_network_is_followed(server: ImageServer) -> None:
    target = server.serve("/target.jpg", make_image("JPEG"))
    url = server.redirect("/moved", target)
    assert fetch(url).width == 64  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("case", "code", "says"),
    [
        ("404", "http_status", "HTTP 404"),
        ("html", "not_an_image", "HTML page"),
        ("truncated", "truncated", "cut off"),
        ("bomb", "decompression_bomb", "pixels"),
        ("huge", "too_large", "larger than 20.0 MB"),
        ("private_redirect", "address", "redirected to http://10.1.2.3/x.jpg"),
        ("redirect_loop", "too_many_redirects", "more than 3 redirects"),
        ("unreachable", "connect", "refused or unreachable"),
        ("no_such_host", "dns", "does not resolve"),
        ("private", "address", "private"),
        ("ftp", "scheme", "ftp"),
        ("tiff", "unsupported_format", "TIFF"),
        ("bad_data_uri", "invalid_url", "base64"),
    ],
)
def test_bad_inputs_fail_with_a_code_and_a_reason(
    server: ImageServer, case: str, code: str, says: str
) -> None:
    if case == "404":
        url = server.url("/missing.jpg")
    elif case == "html":
        url = server.serve("/page", b"<!doctype html><html><body>hi</body></html>", content_type="text/html")
    elif case == "truncated":
        whole = make_image("JPEG", size=(400, 300), noise=True)
        url = server.serve("/cut.jpg", whole[: len(whole) // 2])
    elif case == "bomb":
        url = server.serve("/bomb.png", make_bomb_png(), content_type="image/png")
    elif case == "huge":
        url = server.serve("/huge.jpg", b"\xff\xd8\xff" + b"\0" * (50 * 1024 * 1024))
    elif case == "private_redirect":
        url = server.redirect("/to-private", "http://10.1.2.3/x.jpg?token=secret")
    elif case == "redirect_loop":
        url = server.redirect("/loop", "/loop")
    elif case == "unreachable":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}/x.jpg"
    elif case == "no_such_host":
        url = "http://no-such-host.invalid/x.jpg"
    elif case == "private":
        url = "http://192.168.0.10/x.jpg"
    elif case == "ftp":
        url = "ftp://example.com/x.jpg"
    elif case == "tiff":
        url = server.serve("/x.tiff", make_image("TIFF"), content_type="image/tiff")
    else:
        url = "data:image/png;base64,@@@not base64@@@"
    error = failure(url)
    assert error.code == code
    assert says in error.message
    assert "secret" not in error.message


def test_the_size_cap_is_a_setting(server: ImageServer) -> None:
    url = server.serve("/medium.jpg", make_image("JPEG", size=(300, 300), noise=True))
    assert failure(url, max_bytes=1000).code == "too_large"
    assert fetch(url).width == 300  # type: ignore[attr-defined]


def test_the_settings_give_the_allow_list(server: ImageServer, override_arbiter_settings: object) -> None:
    url = server.serve("/setting.jpg", make_image("JPEG"))
    override_arbiter_settings(ARBITER_FETCH_ALLOWED_NETWORKS="")  # type: ignore[operator]
    with pytest.raises(ImageError) as refused:
        fetch_image(url)
    assert refused.value.code == "address"
    override_arbiter_settings(ARBITER_FETCH_ALLOWED_NETWORKS="127.0.0.0/8")  # type: ignore[operator]
    assert fetch_image(url).width == 64


def test_a_thumbnail_is_small_and_keeps_the_aspect() -> None:
    got = decode_base64_image(base64.b64encode(make_image("JPEG", size=(800, 400))).decode(), limits=LIMITS)
    with Image.open(io.BytesIO(thumbnail(got.data, size=160))) as small:
        assert small.size == (160, 80)
