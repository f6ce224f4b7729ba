"""Blobs in an S3 bucket (or any S3-compatible server: MinIO, Ceph, moto) through boto3."""

from __future__ import annotations

import io
from typing import IO, Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from arbiter.storage.base import BlobNotFoundError, BlobStore, validate_key

_MISSING = {"404", "NoSuchKey", "NotFound"}


class _BodyReader(io.RawIOBase):
    """Adapts botocore's StreamingBody to the io protocol, so callers can wrap it in TextIOWrapper etc."""

    def __init__(self, body: Any) -> None:
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._body.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)

    def close(self) -> None:
        self._body.close()
        super().close()


class S3BlobStore(BlobStore):
    def __init__(
        self,
        *,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}),
        )

    def _object_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, key: str, fileobj: IO[bytes]) -> None:
        # upload_fileobj streams in parts (multipart above 8 MiB); S3 makes the object visible only when done.
        self.client.upload_fileobj(fileobj, self.bucket, self._object_key(key))

    def open(self, key: str) -> BinaryIO:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._object_key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise BlobNotFoundError(key) from None
            raise
        return io.BufferedReader(_BodyReader(response["Body"]), buffer_size=1024 * 1024)  # type: ignore[return-value]

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._object_key(key))  # type: ignore[no-any-return]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise

    def exists(self, key: str) -> bool:
        return self._head(key) is not None

    def size(self, key: str) -> int:
        head = self._head(key)
        if head is None:
            raise BlobNotFoundError(key)
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"
