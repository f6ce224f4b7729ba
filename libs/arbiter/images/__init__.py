"""Image inputs shared by the dataset, training and inference services: fetch (through the egress guard),
sniff, check, normalise, hash and thumbnail. See `arbiter.images.fetch`."""

from arbiter.images.fetch import (
    ACCEPTED_FORMATS,
    ERROR_CODES,
    FetchedImage,
    ImageError,
    ImageLimits,
    decode_base64_image,
    decode_data_uri,
    decode_image,
    fetch_image,
    image_limits,
    image_policy,
    open_rgb,
    thumbnail,
)
from arbiter.images.store import (
    THUMBNAIL_SIZE,
    image_blob_key,
    image_load,
    image_store,
    thumbnail_blob_key,
)

__all__ = [
    "THUMBNAIL_SIZE",
    "image_blob_key",
    "image_load",
    "image_store",
    "thumbnail_blob_key",
    "ACCEPTED_FORMATS",
    "ERROR_CODES",
    "FetchedImage",
    "ImageError",
    "ImageLimits",
    "decode_base64_image",
    "decode_data_uri",
    "decode_image",
    "fetch_image",
    "image_limits",
    "image_policy",
    "open_rgb",
    "thumbnail",
]
