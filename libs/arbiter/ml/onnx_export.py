"""Export encoder + heads to ONNX, quantise to int8, and choose which of the two to serve.

The graph takes `input_ids` and `attention_mask` (int64, dynamic batch and length) and returns one
`logits_<i>` output per head that reads the encoder. Dynamic int8 quantisation (onnxruntime) roughly
halves CPU latency; `onnx_precision_choose` keeps it only when the selection metric on the validation
rows drops by less than half a point (0.005) against fp32.

`encoder_onnx_export` writes the encoder alone, with one `embedding` output: the pooled, L2-normalised
sentence embedding exactly as `Encoder.embed` computes it (see `arbiter.ml.onnx_encoder`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from arbiter.ml.artifacts import ONNX_FOLDER, Artifact, config_write
from arbiter.ml.data import LabelledRows
from arbiter.ml.encoders import Encoder
from arbiter.ml.metrics import selection_score
from arbiter.ml.model import ENCODER, ClassifierModel
from arbiter.ml.predict import OnnxRuntime

QUALITY_DROP_LIMIT = 0.005
OPSET = 17
EMBEDDING_OUTPUT = "embedding"


class _Graph(nn.Module):
    def __init__(self, encoder: Encoder, model: ClassifierModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.transformer = encoder.model
        linears = []
        for head in model.heads:
            for component in head.components:
                if component.features == ENCODER:
                    linear = nn.Linear(component.weight.shape[1], component.weight.shape[0])
                    with torch.no_grad():
                        linear.weight.copy_(torch.from_numpy(component.weight))
                        linear.bias.copy_(torch.from_numpy(component.bias))
                    linears.append(linear)
        self.linears = nn.ModuleList(linears)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        embeddings = self.encoder.forward(input_ids, attention_mask)
        return tuple(linear(embeddings) for linear in self.linears)


class _EmbeddingGraph(nn.Module):
    """The encoder alone: `Encoder.forward`, i.e. the pooled, L2-normalised sentence embeddings."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.transformer = encoder.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward(input_ids, attention_mask)


def _export(graph: nn.Module, *, encoder: Encoder, path: Path, outputs: list[str]) -> None:
    """Trace `graph` (inputs `input_ids`, `attention_mask`; dynamic batch and length) to `path` on the CPU."""
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = graph.to("cpu").eval()
    device = encoder.device
    encoder.model.to("cpu")
    sample = encoder.tokenizer(
        ["an example input", "a second, longer example input"], padding=True, return_tensors="pt"
    )
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    axes.update({name: {0: "batch"} for name in outputs})
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # The TorchScript exporter handles these encoders in a second and writes a single file.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (sample["input_ids"], sample["attention_mask"]),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=OPSET,
                dynamo=False,
            )
    finally:
        encoder.model.to(device)


def onnx_export(*, encoder: Encoder, model: ClassifierModel, folder: Path) -> tuple[Path, dict[str, str]]:
    """Write `folder/model.onnx` (fp32); returns its path and the output name per head."""
    heads = [head.spec.name for head in model.heads if head.uses(ENCODER)]
    outputs = {head: f"logits_{i}" for i, head in enumerate(heads)}
    path = folder / "model.onnx"
    _export(_Graph(encoder, model), encoder=encoder, path=path, outputs=list(outputs.values()))
    return path, outputs


def encoder_onnx_export(*, encoder: Encoder, folder: Path) -> Path:
    """Write `folder/model.onnx` (fp32): the encoder alone, output `embedding` `[batch, dim]` (float32)."""
    path = folder / "model.onnx"
    _export(_EmbeddingGraph(encoder), encoder=encoder, path=path, outputs=[EMBEDDING_OUTPUT])
    return path


def onnx_quantize(fp32_path: Path, *, per_channel: bool = False, reduce_range: bool = False) -> Path:
    """Dynamic int8 quantisation of the weights; writes `model.int8.onnx` beside the fp32 file.

    `per_channel` gives each output channel of a weight its own scale: much closer to fp32 for a sentence
    embedding (MiniLM on tweets: mean cosine to fp32 0.99, against 0.95 with one scale per tensor).
    `reduce_range` keeps weights to 7 bits, which avoids the int16 saturation of the AVX2/AVX-512 kernels
    on CPUs without VNNI, so an export behaves alike on every x86 machine.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = fp32_path.with_name("model.int8.onnx")
    root = logging.getLogger()
    hint = _DropPreprocessingHint()
    root.addFilter(hint)
    try:
        quantize_dynamic(
            str(fp32_path),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            reduce_range=reduce_range,
        )
    finally:
        root.removeFilter(hint)
    return target


class _DropPreprocessingHint(logging.Filter):
    """onnxruntime logs a hint to run its shape-inference pre-processing, which fails on these graphs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


def onnx_precision_choose(
    *,
    model: ClassifierModel,
    runtimes: Mapping[str, Any],
    rows: LabelledRows,
    rule: str,
    head: str | None,
    shared: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Score each runtime ("fp32", "int8": anything with `encoder_logits(texts)`) on `rows` by the selection
    rule; int8 wins if it loses < 0.005. `shared` adds features that do not depend on the precision (an image
    base's built-in heads), computed once."""
    scores = {}
    for precision, runtime in runtimes.items():
        logits = {**runtime.encoder_logits(rows.texts), **(shared or {})}
        probabilities = model.probabilities(texts=rows.texts, encoder_logits=logits)
        scores[precision] = selection_score(probabilities=probabilities, rows=rows, rule=rule, head=head)[0]
    drop = scores["fp32"] - scores["int8"]
    return {
        "selected": "int8" if drop < QUALITY_DROP_LIMIT else "fp32",
        "rule": rule,
        "rows": len(rows),
        "scores": {precision: round(score, 6) for precision, score in scores.items()},
        "drop": round(drop, 6),
    }


def artifact_add_onnx(
    *, artifact: Artifact, encoder: Encoder, rows: LabelledRows, rule: str, head: str | None
) -> dict[str, Any]:
    """Export the artifact's encoder heads to ONNX (fp32 + int8), choose one on `rows`, update config.json."""
    model = artifact.model
    folder = artifact.path / ONNX_FOLDER
    fp32, outputs = onnx_export(encoder=encoder, model=model, folder=folder)
    int8 = onnx_quantize(fp32)
    if len(rows):
        runtimes = {
            precision: OnnxRuntime(
                path=path, tokenizer=encoder.tokenizer, outputs=outputs, max_tokens=artifact.max_tokens
            )
            for precision, path in (("fp32", fp32), ("int8", int8))
        }
        choice = onnx_precision_choose(model=model, runtimes=runtimes, rows=rows, rule=rule, head=head)
    else:
        choice = {"selected": "fp32", "rule": rule, "rows": 0, "scores": {}, "drop": None}
    artifact.config["onnx"] = {
        "fp32": f"{ONNX_FOLDER}/{fp32.name}",
        "int8": f"{ONNX_FOLDER}/{int8.name}",
        "outputs": outputs,
        "opset": OPSET,
        **choice,
    }
    config_write(artifact.path, artifact.config)
    return artifact.config["onnx"]
