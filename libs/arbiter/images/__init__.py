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

__all__ = [
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
