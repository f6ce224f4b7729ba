"""Images for tests, made with Pillow, and a real HTTP server on loopback that serves them (and the bad answers
an image column meets: 404s, HTML pages, cut-off files, redirects).

Tests run it inside an allowed network (`ARBITER_FETCH_ALLOWED_NETWORKS=127.0.0.1/32`), so the egress guard is
exercised exactly as in production, only with loopback allowed.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, ImageDraw


def make_image(
    fmt: str = "JPEG",
    *,
    size: tuple[int, int] = (64, 48),
    color: tuple[int, int, int] = (200, 30, 30),
    mark: tuple[int, int, int] | None = None,
    exif_orientation: int | None = None,
    frames: int = 1,
    alpha: bool = False,
    quality: int = 90,
    noise: bool = False,
) -> bytes:
    """An image in `fmt` (JPEG, PNG, WEBP, GIF): a solid colour, a rectangle of `mark` in its top-left quarter
    (so orientation is visible), optionally noisy (larger files), EXIF-oriented or animated."""
    mode = "RGBA" if alpha else "RGB"
    fill: tuple[int, ...] = (*color, 128) if alpha else color
    image = Image.new(mode, size, fill)
    if mark is not None:
        ImageDraw.Draw(image).rectangle((0, 0, size[0] // 2 - 1, size[1] // 2 - 1), fill=mark)
    if noise:
        import numpy as np

        rng = np.random.default_rng(sum(color) + size[0])
        pixels = np.asarray(image).astype(np.int16)
        pixels = np.clip(pixels + rng.integers(-40, 40, pixels.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode)
    out = io.BytesIO()
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        options["quality"] = quality
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        options["exif"] = exif.tobytes()
    if frames > 1:
        extra = [Image.new(mode, size, (0, 0, 255)) for _ in range(frames - 1)]
        options.update(save_all=True, append_images=extra, duration=100)
    image.save(out, format=fmt, **options)
    return out.getvalue()


def make_bomb_png(side: int = 20_000) -> bytes:
    """A PNG of side x side pixels (400 megapixels by default) that compresses to a few hundred kilobytes."""
    image = Image.new("1", (side, side), 0)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


# An answer: (status, headers, body).
Answer = tuple[int, dict[str, str], bytes]


@dataclass
class ImageServer:
    host: str
    port: int
    routes: dict[str, Answer] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def serve(self, path: str, body: bytes, content_type: str = "image/jpeg", status: int = 200) -> str:
        with self.lock:
            self.routes[path] = (status, {"Content-Type": content_type}, body)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        with self.lock:
            self.routes[path] = (status, {"Location": location}, b"")
        return self.url(path)


def _handler(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            with server.lock:
                server.hits.append(path)
                status, headers, body = server.routes.get(
                    path, (404, {"Content-Type": "text/html"}, b"<html><body>Not found</body></html>")
                )
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            # The client may stop reading (a size cap): expected.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    return Handler


@contextmanager
def running_image_server(host: str = "127.0.0.1") -> Iterator[ImageServer]:
    state = ImageServer(host, 0)
    httpd = ThreadingHTTPServer((host, 0), _handler(state))
    httpd.daemon_threads = True
    state.port = int(httpd.server_address[1])
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
