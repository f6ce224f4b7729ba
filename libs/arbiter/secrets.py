"""Secrets Arbiter keeps for an org (an LLM endpoint's API key, a webhook endpoint's signing secret): encrypted at
rest with Fernet (AES-128-CBC with an HMAC-SHA256), keyed from the deployment's secret key, so a database dump
alone does not reveal them.

Rotating `ARBITER_SECRET_KEY` makes stored keys unreadable: `secret_decrypt` then raises `SecretUnreadable` and
the org enters its keys again.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings


class SecretUnreadable(Exception):
    """A stored secret cannot be decrypted with this deployment's secret key (it was rotated)."""


def _fernet() -> Fernet:
    # A purpose-specific key derived from Django's secret key: the raw secret key is never used as is. (The label
    # is where this module first lived; changing it would make every stored secret unreadable.)
    digest = hashlib.sha256(f"arbiter.llm.secrets:{settings.SECRET_KEY}".encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def secret_encrypt(plain: str) -> str:
    return _fernet().encrypt(plain.encode()).decode()


def secret_decrypt(token: str) -> str:
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "the stored key cannot be decrypted (the deployment's secret key changed); enter it again"
        ) from None


def secret_hint(plain: str) -> str:
    """What may be shown of a secret: its last four characters."""
    return plain[-4:] if len(plain) >= 8 else ""
