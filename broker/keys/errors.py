"""What can go wrong with keys, each as one line an operator can act on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class KeyStoreError(Exception):
    """Keys or shared secrets cannot be used: the broker refuses to start (one line,
    never a traceback, never key material)."""


class KeyFileError(KeyStoreError):
    """A key or secret file that cannot be used, as one line: ``<file>: <problem>``."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class KeyDecryptionError(KeyStoreError):
    """``keys.encryption_key`` does not open what the database holds.

    Never answered by generating a new key: that would silently invalidate every token
    and hide a misconfiguration (a KEK from the wrong environment, a rotated secret).
    """

    def __init__(self, what: str, problem: str) -> None:
        super().__init__(f"keys.encryption_key does not decrypt the stored keys: {what}: {problem}")


class KeyCoordinationError(KeyStoreError):
    """Another process holds the key lock or lease for too long."""


class AlgorithmNotLoadedError(KeyError):
    """Asked for a signing key of an algorithm that is not in ``keys.algorithms``."""

    def __init__(self, alg: str, loaded: Sequence[str]) -> None:
        self.alg = alg
        self.message = (
            f"no signing key for algorithm {alg!r}; loaded: {', '.join(loaded) or 'none'} "
            "(see keys.algorithms)"
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return self.message


class NoActiveKeyError(KeyError):
    """The algorithm is configured but every key of it has been withdrawn."""

    def __init__(self, alg: str) -> None:
        self.alg = alg
        self.message = (
            f"no active signing key for {alg}: every key was withdrawn "
            "(run `qq-oidc-broker keys rotate`)"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message
