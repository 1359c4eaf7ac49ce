"""Secrets at rest (SMTP passwords, webhook secrets), API key digests, constant-time checks.

Stored secrets are Fernet tokens under a key derived from RELAYBOARD_SECRET_KEY. The
retired keys of RELAYBOARD_OLD_SECRET_KEYS still decrypt (MultiFernet), so the secret
key can change without losing what was stored; `relayboard secrets rotate` then
re-encrypts everything under the current key, and the old keys can go.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

UNREADABLE = (
    "cannot be decrypted with RELAYBOARD_SECRET_KEY or any key in RELAYBOARD_OLD_SECRET_KEYS "
    "(was the secret key changed? list the old one in RELAYBOARD_OLD_SECRET_KEYS, or enter "
    "the secret again)"
)


class SecretUnreadable(ValueError):
    """A stored secret cannot be decrypted with any of the keys Relayboard has."""


@functools.lru_cache(maxsize=16)
def _fernet(secret_key: str) -> Fernet:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"relayboard-secrets").derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(key))


class SecretBox:
    """Encrypt with the current secret key; decrypt with it or any retired one."""

    def __init__(self, keys: Sequence[str]) -> None:
        if not keys:
            raise ValueError("a SecretBox needs at least the current secret key")
        self._fernet = MultiFernet([_fernet(key) for key in keys])
        self._current = _fernet(keys[0])

    def encrypt(self, value: str) -> bytes:
        """Encrypt a secret for storage, under the current key."""
        return self._fernet.encrypt(value.encode())

    def decrypt(self, token: bytes) -> str:
        """Decrypt a stored secret; raise SecretUnreadable if no key can."""
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken:
            raise SecretUnreadable(f"the stored secret {UNREADABLE}") from None

    def is_current(self, token: bytes) -> bool:
        """Say whether a stored secret is already encrypted under the current key."""
        try:
            self._current.decrypt(token)
        except InvalidToken:
            return False
        return True

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt a stored secret under the current key (SecretUnreadable if no key can)."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken:
            raise SecretUnreadable(f"the stored secret {UNREADABLE}") from None


def new_api_key() -> str:
    """Return a new random API key."""
    return "rb_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """Return the SHA-256 hex digest under which an API key is stored."""
    return hashlib.sha256(key.encode()).hexdigest()


def same(a: str, b: str) -> bool:
    """Compare two secrets in constant time."""
    return hmac.compare_digest(a.encode(), b.encode())
