"""Images in the blob store, content-addressed: `images/<ab>/<sha256>` holds the normalised bytes and
`images/thumbs/<ab>/<sha256>` a small preview. A key never changes what it holds, so snapshots and request logs
can reference an image by its hash for as long as it is kept."""

from __future__ import annotations

import io

from arbiter.images.fetch import FetchedImage, thumbnail
from arbiter.storage import BlobStore

THUMBNAIL_SIZE = 160


def image_blob_key(sha256: str) -> str:
    return f"images/{sha256[:2]}/{sha256}"


def thumbnail_blob_key(sha256: str) -> str:
    return f"images/thumbs/{sha256[:2]}/{sha256}"


def image_store(store: BlobStore, image: FetchedImage, *, with_thumbnail: bool = True) -> str:
    """Store the image (and its thumbnail) unless already there; returns the image's key."""
    key = image_blob_key(image.sha256)
    if not store.exists(key):
        store.put_file(key, io.BytesIO(image.data))
    if with_thumbnail:
        thumb_key = thumbnail_blob_key(image.sha256)
        if not store.exists(thumb_key):
            store.put_file(thumb_key, io.BytesIO(thumbnail(image.data, size=THUMBNAIL_SIZE)))
    return key


def image_load(store: BlobStore, sha256: str) -> bytes:
    """The normalised bytes of a stored image; raises `arbiter.storage.BlobNotFoundError`."""
    with store.open(image_blob_key(sha256)) as stream:
        return stream.read()
