"""Signing keys and shared secrets: where they live, their rotation schedule, the JWKS.

* :mod:`~broker.keys.material`: generate, parse, wrap keys (kid = RFC 7638 thumbprint);
* :mod:`~broker.keys.files`: ``keys.dir`` (directory lock, atomic 0600 files, secrets,
  the ``keys.json`` schedule manifest);
* :mod:`~broker.keys.crypto`: the key-encryption key for ``keys.storage: database``;
* :mod:`~broker.keys.schedule`: which key is published and which signs, as a pure
  function of the key list and the time;
* :mod:`~broker.keys.sources`: the file and database key sources;
* :mod:`~broker.keys.ring`: the :class:`KeyRing` each instance holds.
"""

from __future__ import annotations

from broker.keys.errors import (
    AlgorithmNotLoadedError,
    KeyCoordinationError,
    KeyDecryptionError,
    KeyFileError,
    KeyStoreError,
    NoActiveKeyError,
)
from broker.keys.files import LOCK_NAME, MANIFEST_NAME, key_path, load_or_create_secret
from broker.keys.material import RSA_KEY_SIZE, SUPPORTED_ALGORITHMS, JoseKey, SigningKey
from broker.keys.ring import (
    KeyRing,
    Retirement,
    RetireRefusedError,
    Rotation,
    UnknownKeyError,
)
from broker.keys.schedule import KeyInfo, KeyStatus, Policy

__all__ = [
    "LOCK_NAME",
    "MANIFEST_NAME",
    "RSA_KEY_SIZE",
    "SUPPORTED_ALGORITHMS",
    "AlgorithmNotLoadedError",
    "JoseKey",
    "KeyCoordinationError",
    "KeyDecryptionError",
    "KeyFileError",
    "KeyInfo",
    "KeyRing",
    "KeyStatus",
    "KeyStoreError",
    "NoActiveKeyError",
    "Policy",
    "RetireRefusedError",
    "Retirement",
    "Rotation",
    "SigningKey",
    "UnknownKeyError",
    "key_path",
    "load_or_create_secret",
]
