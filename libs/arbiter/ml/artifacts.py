"""Model artifacts: a directory (or a tar blob of it) that holds everything needed to serve a version.

Layout (no pickle anywhere)::

    config.json              format + version, base model, strategy, max_tokens, heads (labels, negative
                             labels, thresholds, components), TF-IDF featurizers, ONNX files, training info
    heads.safetensors        every component's weight `[labels, dim]` and bias `[labels]`
    encoder/                 the encoder (config.json, model.safetensors, tokenizer files, 1_Pooling/)
                             present only when a head reads the encoder
    tfidf/<name>.json        TF-IDF vocabulary per block;  tfidf/<name>.safetensors: idf weights
    onnx/model.onnx          encoder + heads exported to ONNX (fp32), and onnx/model.int8.onnx
                             (dynamic int8 quantisation); `config["onnx"]["selected"]` says which to serve
    metrics.json             the evaluation (see `arbiter.ml.metrics`) plus the training history

`config.json` head entry::

    {"name": "toxicity", "labels": ["safe", "toxic"], "multi_label": false, "negative_labels": ["safe"],
     "thresholds": {"safe": 0.0, "toxic": 0.0},
     "components": [
        {"features": "encoder", "share": 0.5, "weight": "toxicity/0/weight", "bias": "toxicity/0/bias"},
        {"features": "tfidf-1", "share": 0.5, "weight": "toxicity/1/weight", "bias": "toxicity/1/bias"}]}
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.numpy import load_file, save_file

from arbiter.ml.errors import ArtifactError
from arbiter.ml.model import ClassifierModel, EncoderInfo, HeadModel, LinearComponent
from arbiter.ml.specs import HeadSpec
from arbiter.ml.tfidf import TfidfFeatures

FORMAT = "arbiter.model"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "heads.safetensors"
METRICS_FILE = "metrics.json"
ENCODER_FOLDER = "encoder"
TFIDF_FOLDER = "tfidf"
ONNX_FOLDER = "onnx"


@dataclass
class Artifact:
    """A loaded artifact directory: its config, the in-memory model and its metrics."""

    path: Path
    config: dict[str, Any]
    model: ClassifierModel
    metrics: dict[str, Any] | None

    @property
    def encoder_path(self) -> Path | None:
        return self.path / ENCODER_FOLDER if self.model.encoder is not None else None

    @property
    def base_model(self) -> str:
        return str(self.config["base_model"])

    @property
    def max_tokens(self) -> int:
        return int(self.config["max_tokens"])

    def onnx_path(self, precision: str | None = None) -> Path | None:
        """The ONNX file for `precision` ("fp32" or "int8"; default: the selected one), if exported."""
        onnx = self.config.get("onnx")
        if not onnx:
            return None
        return self.path / onnx[precision or onnx["selected"]]


def _head_config(head: HeadModel, tensors: dict[str, Any]) -> dict[str, Any]:
    components = []
    for i, component in enumerate(head.components):
        prefix = f"{head.spec.name}/{i}"
        tensors[f"{prefix}/weight"] = component.weight
        tensors[f"{prefix}/bias"] = component.bias
        components.append(
            {
                "features": component.features,
                "share": component.share,
                "weight": f"{prefix}/weight",
                "bias": f"{prefix}/bias",
            }
        )
    return {**head.spec.to_dict(), "thresholds": dict(head.thresholds), "components": components}


def artifact_write_model(
    *, model: ClassifierModel, path: Path, base_model: str, extra: dict[str, Any]
) -> None:
    """Write config.json, heads.safetensors and the TF-IDF files of `model` into `path`.

    The encoder folder, ONNX files and metrics are written by their owners (training, export).
    """
    path.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Any] = {}
    heads = [_head_config(head, tensors) for head in model.heads]
    save_file(tensors, str(path / WEIGHTS_FILE))
    used_tfidf = sorted({c.features for head in model.heads for c in head.components} & set(model.tfidf))
    for name in used_tfidf:
        model.tfidf[name].save(path / TFIDF_FOLDER, name)
    encoder = model.encoder
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "base_model": base_model,
        "max_tokens": encoder.max_tokens if encoder else extra.get("max_tokens", 128),
        "encoder": None
        if encoder is None
        else {
            "path": ENCODER_FOLDER,
            "base_model": encoder.base_model,
            "pooling": encoder.pooling,
            "dim": encoder.dim,
            "fine_tuned": encoder.fine_tuned,
        },
        "tfidf": used_tfidf,
        "heads": heads,
        "onnx": None,
        **{key: value for key, value in extra.items() if key != "max_tokens"},
    }
    config_write(path, config)


def config_write(path: Path, config: dict[str, Any]) -> None:
    (path / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False))


def artifact_load(path: Path) -> Artifact:
    """Load an artifact directory written by `train_from_snapshot`."""
    path = Path(path)
    config_file = path / CONFIG_FILE
    if not config_file.is_file():
        raise ArtifactError(f"No {CONFIG_FILE} in the artifact directory {path.name!r}.")
    config = json.loads(config_file.read_text())
    if config.get("format") != FORMAT:
        raise ArtifactError(f"{path.name!r} is not an Arbiter model artifact.")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ArtifactError(
            f"The artifact has format version {config['format_version']}; this release reads up to "
            f"{FORMAT_VERSION}. Upgrade Arbiter to serve it."
        )
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
        tfidf = {name: TfidfFeatures.load(path / TFIDF_FOLDER, name) for name in config["tfidf"]}
    except (OSError, KeyError) as error:
        raise ArtifactError(f"The artifact is incomplete: {error}.") from error
    heads = []
    for entry in config["heads"]:
        spec = HeadSpec.from_dict(entry)
        components = [
            LinearComponent(
                features=c["features"],
                weight=tensors[c["weight"]],
                bias=tensors[c["bias"]],
                share=float(c["share"]),
            )
            for c in entry["components"]
        ]
        heads.append(
            HeadModel(
                spec=spec,
                components=components,
                thresholds={k: float(v) for k, v in entry["thresholds"].items()},
            )
        )
    encoder_config = config.get("encoder")
    encoder = None
    if encoder_config:
        encoder = EncoderInfo(
            base_model=encoder_config["base_model"],
            pooling=encoder_config["pooling"],
            dim=int(encoder_config["dim"]),
            max_tokens=int(config["max_tokens"]),
            fine_tuned=bool(encoder_config["fine_tuned"]),
        )
        if not (path / encoder_config["path"]).is_dir():
            raise ArtifactError("The artifact's config names an encoder but its encoder folder is missing.")
    metrics_file = path / METRICS_FILE
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    return Artifact(
        path=path,
        config=config,
        model=ClassifierModel(heads=heads, tfidf=tfidf, encoder=encoder),
        metrics=metrics,
    )


def artifact_pack(path: Path) -> bytes:
    """The artifact directory as one tar blob (for the blob store).

    Uncompressed: the weights are nearly all of it and gzip gains under 10% on them for ten times the
    time. `artifact_unpack` also reads gzip-compressed tars.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for item in sorted(Path(path).rglob("*")):
            if item.is_file():
                archive.add(item, arcname=item.relative_to(path).as_posix(), recursive=False)
    return buffer.getvalue()


def artifact_unpack(data: bytes, destination: Path) -> Artifact:
    """Extract a tar or tar.gz blob made by `artifact_pack` into `destination` (emptied first) and load it."""
    destination = Path(destination)
    if destination.exists():
        shutil.rmtree(destination)
    destination.mkdir(parents=True)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            # The "data" filter refuses absolute paths, links out of the folder and device files.
            archive.extractall(destination, filter="data")
    except (tarfile.TarError, OSError) as error:
        raise ArtifactError(f"The artifact blob could not be unpacked: {error}.") from error
    return artifact_load(destination)
