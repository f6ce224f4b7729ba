"""The snapshot read model's rows: read from the blob store by the trainer and by policy evaluations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from arbiter.storage import get_blob_store
from services.training.models import Snapshot


def snapshot_rows(snapshot: Snapshot, *, split: str | None) -> Iterator[dict[str, Any]]:
    """A snapshot's rows from its blob, each `row` made unique across snapshots (`<snapshot>:<row>`); `split`
    overrides the rows' own split."""
    with get_blob_store().open(snapshot.blob) as stream:
        for line in stream:
            if line.strip():
                row = json.loads(line)
                row["row"] = f"{snapshot.snapshot_id}:{row.get('row')}"
                if split is not None:
                    row["split"] = split
                yield row
