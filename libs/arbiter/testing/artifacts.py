"""A small trained model artifact for tests and benchmarks, trained once and cached on disk.

The cache key covers the training rows, heads and options and the ML core's source, so a change to any of
them trains again; older cached artifacts in the same folder (same prefix) are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ML_SOURCES = Path(__file__).resolve().parents[1] / "ml"


def cached_head_artifact(
    *,
    cache_dir: Path,
    prefix: str,
    rows: Sequence[Mapping[str, Any]],
    heads: Sequence[Mapping[str, Any]],
    max_epochs: int,
    base_model: str | None = None,
) -> bytes:
    """The packed artifact of a `head`-strategy model trained on `rows` (trained now only if not cached)."""
    from arbiter.ml import HeadSpec, TrainOptions, artifact_pack, train_from_snapshot

    digest = hashlib.sha256(json.dumps([list(rows), list(heads), max_epochs, base_model]).encode())
    for source in sorted(ML_SOURCES.glob("*.py")):
        digest.update(source.read_bytes())
    cache_dir.mkdir(parents=True, exist_ok=True)
    cached = cache_dir / f"{prefix}{digest.hexdigest()[:24]}.tar.gz"
    if cached.is_file():
        return cached.read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        result = train_from_snapshot(
            rows=rows,
            heads=[HeadSpec.from_dict(head) for head in heads],
            options=TrainOptions(
                strategy="head", max_epochs=max_epochs, learning_rate=0.01, early_stopping=0
            ),
            out_dir=Path(folder) / "artifact",
            base_model=base_model,
        )
        blob = artifact_pack(result.artifact_dir)
    for stale in cache_dir.glob(f"{prefix}*.tar.gz"):
        if stale != cached:
            stale.unlink(missing_ok=True)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.partial")
    partial.write_bytes(blob)
    partial.replace(cached)
    return blob
