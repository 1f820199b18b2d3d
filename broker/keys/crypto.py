"""The key-encryption key (KEK): AES-256-GCM for what ``keys.storage: database`` stores.

Private keys and shared secrets never reach the database in the clear: a database
backup or a read-only SQL injection must not hand out the broker's signing keys. The KEK
itself comes from the environment (``keys.encryption_key``), never from the database.

Format ``v1.<nonce>.<ciphertext>`` (base64url): the version lets a later release change
the scheme and still read old rows. The associated data binds each ciphertext to what it
is (``signing-key:<alg>:<kid>``, ``secret:<name>``), so a row copied onto another row
fails authentication instead of being used as the wrong key.
"""

from __future__ import annotations

import base64
import secrets
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.keys.errors import KeyDecryptionError

FORMAT_VERSION: Final = "v1"
_NONCE_BYTES: Final = 12  # the GCM standard nonce (NIST SP 800-38D §8.2.2: random is fine)
_AAD_PREFIX: Final = b"qq-oidc-broker/"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class KeyEncryptionKey:
    """AES-256-GCM under one 32-byte key; ``repr`` never shows it."""

    def __init__(self, raw: bytes) -> None:
        if len(raw) != 32:
            raise ValueError("the key-encryption key must be 32 bytes")
        self._aead = AESGCM(raw)

    @classmethod
    def from_config(cls, text: str) -> KeyEncryptionKey:
        """From ``keys.encryption_key`` (base64url of 32 bytes; the config checked it)."""
        return cls(_unb64(text.strip().rstrip("=")))

    def __repr__(self) -> str:
        return "KeyEncryptionKey(<hidden>)"

    def seal(self, plaintext: bytes, context: str) -> str:
        """Encrypt ``plaintext`` bound to ``context``; a fresh random nonce each time."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        ciphertext = self._aead.encrypt(nonce, plaintext, _aad(context))
        return f"{FORMAT_VERSION}.{_b64(nonce)}.{_b64(ciphertext)}"

    def open(self, sealed: str, context: str, what: str) -> bytes:
        """Decrypt what :meth:`seal` made for ``context``; :class:`KeyDecryptionError`
        naming ``what`` (never the plaintext or the key) if it does not authenticate."""
        parts = sealed.split(".")
        if parts[0] != FORMAT_VERSION:
            raise KeyDecryptionError(
                what, f"stored in an unknown format {parts[0][:8]!r} (written by a newer version?)"
            )
        try:
            if len(parts) != 3:
                raise ValueError
            nonce, ciphertext = _unb64(parts[1]), _unb64(parts[2])
        except ValueError:
            raise KeyDecryptionError(what, "the stored value is malformed") from None
        try:
            return self._aead.decrypt(nonce, ciphertext, _aad(context))
        except (InvalidTag, ValueError):
            raise KeyDecryptionError(
                what, "authentication failed (a different key encrypted it, or it was altered)"
            ) from None


def _aad(context: str) -> bytes:
    return _AAD_PREFIX + FORMAT_VERSION.encode() + b"/" + context.encode("utf-8")
