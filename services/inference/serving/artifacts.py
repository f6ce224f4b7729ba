"""Model artifacts from the blob store: unpacked once per machine into a local cache, read by every process.

The training service writes an artifact as one tar.gz blob (`arbiter.ml.artifacts.artifact_pack`). Serving
needs it unpacked on local disk (ONNX Runtime and the tokenizer read files), so each blob is unpacked into
`<artifact cache>/<hash of the key>/`. Several processes (web workers, the event consumer) may fetch the
same artifact at once: each unpacks into a private folder and renames it into place; the first rename
wins and the others throw their copy away. A version's artifact never changes under its key.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import uuid
from pathlib import Path
from typing import Any

from arbiter.llm.policy import PolicyInvalid, is_policy_artifact, policy_artifact_load, policy_heads
from arbiter.ml.artifacts import CONFIG_FILE, Artifact, artifact_load, artifact_unpack
from arbiter.ml.errors import ArtifactError
from arbiter.storage import get_blob_store
from services.inference.conf import inference_settings


def artifact_folder(key: str) -> Path:
    return inference_settings().artifact_cache / hashlib.sha256(key.encode()).hexdigest()[:32]


def artifact_fetch(key: str) -> Artifact:
    """The artifact stored under `key`, from the local cache or else the blob store.

    Raises `BlobNotFoundError` when no blob has that key and `ArtifactError` when it is not an artifact.
    """
    folder = artifact_folder(key)
    if (folder / CONFIG_FILE).is_file():
        try:
            return artifact_load(folder)
        except ArtifactError:
            # A copy damaged on disk (a full disk, a manual edit): fetch it again.
            shutil.rmtree(folder, ignore_errors=True)
    data = get_blob_store().get_bytes(key)
    folder.parent.mkdir(parents=True, exist_ok=True)
    private = folder.with_name(f".{folder.name}.{uuid.uuid4().hex}.partial")
    try:
        artifact_unpack(data, private)
        try:
            private.rename(folder)
        except OSError:
            if not (folder / CONFIG_FILE).is_file():
                raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return artifact_load(folder)


def artifact_config_read(key: str) -> dict[str, Any]:
    """An artifact's config.json, read from the blob without unpacking the rest.

    The tar is streamed member by member up to the config, which `artifact_pack` writes first: reading
    the heads of a version costs kilobytes, not the whole blob. Raises `BlobNotFoundError` or `ArtifactError`.
    A policy version's artifact is its document: its heads are its categories.
    """
    if is_policy_artifact(key):
        try:
            document, _ = policy_artifact_load(get_blob_store().get_bytes(key))
        except PolicyInvalid as error:
            raise ArtifactError(str(error)) from error
        return {"heads": policy_heads(document)}
    with get_blob_store().open(key) as stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as archive:
                for member in archive:
                    if member.name == CONFIG_FILE and member.isfile():
                        extracted = archive.extractfile(member)
                        assert extracted is not None
                        return dict(json.loads(extracted.read()))
        except (tarfile.TarError, OSError, ValueError) as error:
            raise ArtifactError(f"The artifact blob {key!r} could not be read: {error}.") from error
    raise ArtifactError(f"The artifact blob {key!r} has no {CONFIG_FILE}.")
