"""Serving a model version: a `Predictor` turns texts into per-head labels, scores and a `flagged` flag.

Result for one input, one entry per head (the API's native classification shape)::

    {"toxicity": {"label": "toxic", "score": 0.97, "labels": ["toxic"],
                  "label_scores": {"toxic": 0.97, "safe": 0.03}, "flagged": true}}

- multi-class head: `label` is the most probable label and `score` its probability; `labels` is
  `[label]`.
- multi-label head: `labels` are the labels whose score reaches their threshold, `label` the highest
  scoring of them (null when none does) and `score` the highest label score.
- `flagged`: some label that is not one of the head's negative labels (safe, none, not, neutral, 0,
  no, ok, clean, ... see `arbiter.ml.specs.label_is_negative`) is decided and its score reaches the
  label's threshold. Multi-class thresholds default to 0 (the argmax label alone decides); multi-label
  ones to 0.5; training with `target_precision` raises them to reach that precision on the validation
  rows. A multi-class head without negative labels (a topic head, say) never flags.

Runtimes: eager torch (CUDA when available) and ONNX Runtime (the artifact's exported encoder+heads,
int8 or fp32 as chosen at training time). `runtime="auto"` takes torch on a GPU, else ONNX when the
artifact has it, else torch.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from arbiter.ml.artifacts import Artifact, artifact_load
from arbiter.ml.encoders import EmbeddingCache, Encoder, TokenIds, length_batches
from arbiter.ml.model import ClassifierModel, HeadModel

Runtime = Literal["auto", "torch", "onnx"]

# What one more ONNX Runtime run costs on a CPU, in padded tokens: for MiniLM int8 on one thread about 0.1 ms in
# the session and as much again padding and feeding it, against 0.045 ms a token at 32 tokens. Batches are
# cut where that saves padding (`length_batches`); measured best between 3 and 10.
RUN_COST_TOKENS = 6.0


def threads_default() -> int:
    """Intra-op threads: the cores we have, at most 4 (more rarely helps a small encoder)."""
    return max(1, min(4, os.cpu_count() or 1))


class EncoderRuntime(Protocol):
    name: str

    def encoder_logits(self, texts: Sequence[str]) -> dict[str, np.ndarray]: ...


@runtime_checkable
class TokenRuntime(EncoderRuntime, Protocol):
    """A runtime that also runs on token ids: a caller can tokenise first (and batch texts of like length)."""

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]: ...

    def encoder_logits_ids(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]: ...


class TorchRuntime:
    """Embeds with the torch encoder (bf16 autocast where the hardware makes it faster) and applies heads."""

    name = "torch"

    def __init__(
        self,
        *,
        encoder: Encoder,
        model: ClassifierModel,
        max_tokens: int,
        cache: EmbeddingCache | None = None,
    ) -> None:
        self.encoder = encoder
        self.model = model
        self.max_tokens = max_tokens
        self.cache = cache

    def encoder_logits(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        embeddings = self.encoder.embed(texts, max_tokens=self.max_tokens, cache=self.cache)
        return self.model.encoder_logits(embeddings)


def _onnx_session(path: Path, *, threads: int, spin: bool) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not spin:  # idle intra-op threads sleep instead of spinning: better where other work shares the cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntime:
    """Runs an exported graph (encoder+heads, or the encoder alone) with ONNX Runtime on CPU.

    Thread-safe: ONNX Runtime sessions run concurrently, and so does tokenizing (`TokenIds`).
    """

    name = "onnx"

    def __init__(
        self,
        *,
        path: Path,
        tokenizer: Any,
        outputs: dict[str, str],
        max_tokens: int,
        threads: int | None = None,
        batch_size: int = 32,
        spin: bool = True,
    ) -> None:
        self.session = _onnx_session(path, threads=threads or threads_default(), spin=spin)
        self.tokenizer = tokenizer
        self.tokens = TokenIds(tokenizer)
        self.outputs = outputs
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.path = path

    def sibling(self, *, threads: int, spin: bool = False) -> OnnxRuntime:
        """The same graph on a second session with `threads` intra-op threads, sharing this one's tokenizer."""
        twin = copy.copy(self)
        twin.session = _onnx_session(self.path, threads=threads, spin=spin)
        return twin

    def encoder_logits(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return self.run(texts)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self.tokens.ids(texts, max_tokens=self.max_tokens)

    def encoder_logits_ids(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        return self.run_ids(ids)

    def run(self, texts: Sequence[str], *, max_tokens: int | None = None) -> dict[str, np.ndarray]:
        """The graph's outputs `{key: [len(texts), width]}` for each key of `outputs`, in input order."""
        if not texts:
            return {}
        return self.run_ids(self.tokens.ids(texts, max_tokens=max_tokens or self.max_tokens))

    def run_ids(self, ids: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
        """As `run`, on token ids (`TokenIds.ids`)."""
        heads = list(self.outputs)
        names = [self.outputs[head] for head in heads]
        result: dict[str, np.ndarray] = {}
        for batch in length_batches(ids, batch_size=self.batch_size, run_cost_tokens=RUN_COST_TOKENS):
            input_ids, attention_mask = self.tokens.pad([ids[i] for i in batch])
            values = self.session.run(names, {"input_ids": input_ids, "attention_mask": attention_mask})
            for head, value in zip(heads, values, strict=True):
                if head not in result:
                    result[head] = np.zeros((len(ids), value.shape[1]), dtype=np.float32)
                result[head][batch] = value
        return result


def _head_result(head: HeadModel, scores: np.ndarray) -> dict[str, Any]:
    labels = head.spec.labels
    negative = head.spec.resolved_negative_labels
    # On Python floats: a handful of labels costs less than numpy's per-call overhead (this runs per input).
    values = scores.tolist()
    label_scores = {label: round(score, 6) for label, score in zip(labels, values, strict=True)}
    top = values.index(max(values))
    if head.spec.multi_label:
        decided = [label for i, label in enumerate(labels) if values[i] >= head.thresholds.get(label, 0.5)]
        label = max(decided, key=label_scores.__getitem__) if decided else None
    else:
        decided = [labels[top]]
        label = labels[top]
    # A multi-class head without a negative label sorts inputs into topics: none of them is a flag.
    flags = head.spec.multi_label or bool(negative)
    flagged = flags and any(
        name not in negative and label_scores[name] >= head.thresholds.get(name, 0.0) for name in decided
    )
    return {
        "label": label,
        "score": round(values[top], 6),
        "labels": decided,
        "label_scores": label_scores,
        "flagged": flagged,
    }


class Predictor:
    """Predictions for a model version; build it with `Predictor.load(artifact)`."""

    def __init__(self, *, model: ClassifierModel, runtime: EncoderRuntime | None) -> None:
        if model.uses_encoder and runtime is None:
            raise ValueError("This model's heads read the encoder: a runtime is needed.")
        self.model = model
        self.runtime = runtime

    @classmethod
    def load(
        cls,
        artifact: Artifact | Path,
        *,
        runtime: Runtime = "auto",
        precision: Literal["fp32", "int8"] | None = None,
        device: torch.device | None = None,
        threads: int | None = None,
    ) -> Predictor:
        """Load a predictor from an artifact (directory or loaded `Artifact`).

        `precision` picks the ONNX file (default: the one chosen at training time); `threads` sets ONNX
        Runtime's intra-op threads (default: the cores, at most 4).
        """
        if not isinstance(artifact, Artifact):
            artifact = artifact_load(Path(artifact))
        model = artifact.model
        if not model.uses_encoder:
            return cls(model=model, runtime=None)
        encoder_path = artifact.encoder_path
        assert encoder_path is not None
        onnx_path = artifact.onnx_path(precision)
        if model.encoder is not None and model.encoder.pooling == "image":
            from arbiter.ml.image_encoders import ImageRuntime

            use_image_onnx = runtime != "torch" and onnx_path is not None and not torch.cuda.is_available()
            return cls(
                model=model,
                runtime=ImageRuntime(
                    model=model,
                    onnx_path=onnx_path if use_image_onnx else None,
                    encoder_path=encoder_path,
                    threads=threads,
                    device=device,
                ),
            )
        use_onnx = runtime == "onnx" or (
            runtime == "auto" and onnx_path is not None and not torch.cuda.is_available()
        )
        if use_onnx:
            if onnx_path is None:
                raise ValueError("This artifact has no ONNX export; use runtime='torch'.")
            from transformers import AutoTokenizer

            return cls(
                model=model,
                runtime=OnnxRuntime(
                    path=onnx_path,
                    tokenizer=AutoTokenizer.from_pretrained(str(encoder_path)),
                    outputs=artifact.config["onnx"]["outputs"],
                    max_tokens=artifact.max_tokens,
                    threads=threads,
                ),
            )
        encoder = Encoder.load(str(encoder_path), device=device)
        return cls(
            model=model, runtime=TorchRuntime(encoder=encoder, model=model, max_tokens=artifact.max_tokens)
        )

    @property
    def runtime_name(self) -> str:
        return self.runtime.name if self.runtime is not None else "tfidf"

    def probabilities(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Per head, label probabilities `[len(texts), labels]` in the head's label order."""
        texts = list(texts)
        encoder_logits = self.runtime.encoder_logits(texts) if self.runtime is not None else None
        return self.model.probabilities(texts=texts, encoder_logits=encoder_logits)

    def predict(self, texts: Sequence[str]) -> list[dict[str, dict[str, Any]]]:
        """One `{head: {"label", "score", "labels", "label_scores", "flagged"}}` per input text."""
        probabilities = self.probabilities(texts)
        return [
            {
                head.spec.name: _head_result(head, probabilities[head.spec.name][i])
                for head in self.model.heads
            }
            for i in range(len(texts))
        ]

    @property
    def input_kind(self) -> str:
        """ "image" for a model on an image base (its inputs are image keys, `sha256:<hex>`), else "text"."""
        encoder = self.model.encoder
        return "image" if encoder is not None and encoder.pooling == "image" else "text"

    def warm_up(self) -> None:
        """Run one short input so the first real request does not pay for lazy initialisation."""
        if self.input_kind == "image":
            from arbiter.ml.image_encoders import warm_up_key

            self.predict([warm_up_key()])
            return
        self.predict(["warm up"])
