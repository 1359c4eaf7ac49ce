"""Encrypt secrets at rest (SMTP passwords, webhook secrets) with a key derived from SECRET_KEY."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class SecretUnreadable(ValueError):
    """A stored secret cannot be decrypted (the secret key changed?)."""


@functools.lru_cache(maxsize=4)
def _fernet(secret_key: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"relayboard-secrets").derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


def encrypt(secret_key: str, value: str) -> bytes:
    """Encrypt a secret for storage."""
    return _fernet(secret_key).encrypt(value.encode())


def decrypt(secret_key: str, token: bytes) -> str:
    """Decrypt a stored secret."""
    try:
        return _fernet(secret_key).decrypt(token).decode()
    except InvalidToken:
        raise SecretUnreadable(
            "a stored secret cannot be decrypted: was RELAYBOARD_SECRET_KEY changed?"
        ) from None


def new_api_key() -> str:
    """Return a new random API key."""
    return "rb_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Return the SHA-256 hex digest under which an API key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Compare two secrets in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())
