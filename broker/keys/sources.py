"""Where keys and shared secrets live: a shared ``keys/`` directory or the database.

Both sources offer the same few operations to the key ring: list the keys with their
schedule (no lock: a list is always a consistent snapshot), and, inside
:meth:`KeySource.coordinate` (the directory ``flock``, or the ``key-rotation`` database
lease), add a key or withdraw one. The ring re-reads inside the lock before it decides,
so two instances can never both create "the next key".
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Protocol

from broker.keys import files
from broker.keys.crypto import KeyEncryptionKey
from broker.keys.errors import KeyCoordinationError, KeyFileError, KeyStoreError
from broker.keys.files import ManifestEntry
from broker.keys.material import (
    PrivateKey,
    SigningKey,
    UnusableKeyError,
    parse_pem,
    signing_key,
    to_pem,
)
from broker.storage.base import SigningKeyRecord, StorageError, Store

logger = logging.getLogger("broker.keys")

#: The database lease that serialises key creation and withdrawal between instances.
LEASE_NAME: Final = "key-rotation"
#: Creating a key takes well under a second; a holder that dies keeps others out this long.
LEASE_TTL: Final = 30
_LEASE_POLL_SECONDS: Final = 0.2


@dataclass(frozen=True)
class StoredKey:
    """A key as its source lists it: schedule data and how to load its private half.

    ``cache_key`` identifies the stored bytes, so the ring parses (or decrypts) each key
    once, however often it re-reads the list.
    """

    alg: str
    kid: str
    created_at: int
    activates_at: int
    retired_at: int | None
    cache_key: Hashable
    load: Callable[[], SigningKey]


class KeySource(Protocol):
    """Storage for signing keys and shared secrets (see the module docstring)."""

    description: str

    def read(self) -> list[StoredKey]: ...

    def coordinate(self, now: int, *, wait: bool) -> AbstractContextManager[bool]:
        """Exclusive access between processes and instances; yields False when
        ``wait`` is False and another holder has it."""

    def add(self, alg: str, private: PrivateKey, created_at: int, activates_at: int) -> SigningKey:
        """Store a new key (inside :meth:`coordinate`)."""

    def retire(self, kid: str, now: int) -> bool:
        """Withdraw a key (inside :meth:`coordinate`); False if unknown or withdrawn."""

    def secret(self, name: str) -> bytes:
        """The shared 32-byte secret ``name``, generated once for every instance."""


def _holder() -> str:
    """Who holds a lease: readable in the database, unique per process."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{secrets.token_hex(4)}"


# --------------------------------------------------------------------------- files


class FileKeySource:
    """Keys as PEM files in ``keys.dir`` and their schedule in ``keys.json``.

    A ``<alg>.pem`` that ``keys.json`` does not list (every key made before rotation
    existed, or one an operator put there) is active since forever. Rotated keys get
    their own file, written before their manifest entry; a file the manifest does not
    list (a crash between the two writes) is ignored.
    """

    def __init__(self, directory: Path, algorithms: Sequence[str]) -> None:
        self.directory = directory
        self.algorithms = tuple(algorithms)
        self.description = f"keys.dir {directory}"
        #: Unlisted ``<alg>.pem`` files must be parsed to learn their kid: once per
        #: file version (inode, mtime, size).
        self._legacy: dict[tuple[str, int, int, int], SigningKey] = {}

    def read(self) -> list[StoredKey]:
        entries = files.read_manifest(self.directory) or []
        stored = [self._listed(entry) for entry in entries]
        listed = {entry.file for entry in entries}
        for alg in self.algorithms:
            path = files.key_path(self.directory, alg)
            if path.name not in listed and files.exists(path):
                stored.append(self._unlisted(path, alg))
        return stored

    def _unlisted(self, path: Path, alg: str) -> StoredKey:
        key = self._load_legacy(path, alg)
        return StoredKey(alg, key.kid, 0, 0, None, ("file", path.name, key.kid), lambda: key)

    def _listed(self, entry: ManifestEntry) -> StoredKey:
        path = self.directory / entry.file

        def load() -> SigningKey:
            key = _parse_file(path, entry.alg)
            if key.kid != entry.kid:
                raise KeyFileError(
                    path,
                    f"holds key {key.kid}, but {files.MANIFEST_NAME} lists {entry.kid} for it "
                    "(replaced by hand? put the file back, or remove its entry to use the "
                    "new key at once)",
                )
            return key

        cache_key = ("file", entry.file, entry.kid)
        times = (entry.created_at, entry.activates_at, entry.retired_at)
        return StoredKey(entry.alg, entry.kid, *times, cache_key, load)

    def _load_legacy(self, path: Path, alg: str) -> SigningKey:
        try:
            info = path.stat()
        except OSError:
            return _parse_file(path, alg)  # a dangling symlink: let the reader say why
        identity = (path.name, info.st_ino, info.st_mtime_ns, info.st_size)
        key = self._legacy.get(identity)
        if key is None:
            key = self._legacy[identity] = _parse_file(path, alg)
        return key

    def coordinate(self, now: int, *, wait: bool) -> AbstractContextManager[bool]:
        """The directory lock; always waited for (it is held for well under a second,
        and a stuck holder is reported after ``LOCK_TIMEOUT_SECONDS``)."""
        return self._locked()

    @contextmanager
    def _locked(self) -> Iterator[bool]:
        with files.directory_lock(self.directory):
            yield True

    def add(self, alg: str, private: PrivateKey, created_at: int, activates_at: int) -> SigningKey:
        entries = self._pinned_entries()
        listed = {entry.file for entry in entries}
        path = files.key_path(self.directory, alg)
        kid = signing_key(alg, private).kid
        if path.name in listed or files.exists(path):
            path = files.rotated_key_path(self.directory, alg, created_at, kid)
        files.write_private_file(path, to_pem(private))
        entries.append(ManifestEntry(path.name, kid, alg, created_at, activates_at))
        files.write_manifest(self.directory, entries)
        logger.info("generated a new %s signing key %s in %s", alg, kid, path)
        return signing_key(alg, private, path)

    def retire(self, kid: str, now: int) -> bool:
        entries = self._pinned_entries()
        for index, entry in enumerate(entries):
            if entry.kid == kid and entry.retired_at is None:
                entries[index] = replace(entry, retired_at=now)
                files.write_manifest(self.directory, entries)
                return True
        return False

    def _pinned_entries(self) -> list[ManifestEntry]:
        """The manifest, plus entries for unlisted ``<alg>.pem`` files (active since
        0), so that a later change of such a file cannot change the schedule."""
        entries = files.read_manifest(self.directory) or []
        listed = {entry.file for entry in entries}
        for alg in self.algorithms:
            path = files.key_path(self.directory, alg)
            if path.name not in listed and files.exists(path):
                key = self._load_legacy(path, alg)
                entries.append(ManifestEntry(path.name, key.kid, alg, 0, 0))
        return entries

    def secret(self, name: str) -> bytes:
        return files.load_or_create_secret(self.directory, name)


def _parse_file(path: Path, alg: str) -> SigningKey:
    try:
        private = parse_pem(files.read_private_file(path), alg)
    except UnusableKeyError as exc:
        raise KeyFileError(path, str(exc)) from None
    return signing_key(alg, private, path)


# --------------------------------------------------------------------------- database


class DatabaseKeySource:
    """Keys in the ``signing_keys`` table, private halves sealed with the KEK
    (:mod:`broker.keys.crypto`); secrets in ``broker_secrets``, sealed the same way.

    Only the :class:`~broker.storage.base.Store` methods are used (no SQL here).
    """

    description = "the database (keys.storage: database)"

    def __init__(self, store: Store, kek: KeyEncryptionKey) -> None:
        self._store = store
        self._kek = kek
        self._holder = _holder()

    def read(self) -> list[StoredKey]:
        return [self._stored(record) for record in self._store.list_signing_keys()]

    def _stored(self, record: SigningKeyRecord) -> StoredKey:
        times = (record.created_at, record.activates_at, record.retired_at)
        return StoredKey(record.alg, record.kid, *times, ("db", record.kid), self._loader(record))

    def _loader(self, record: SigningKeyRecord) -> Callable[[], SigningKey]:
        def load() -> SigningKey:
            what = f"signing key {record.kid} ({record.alg})"
            pem = self._kek.open(record.private_key, _key_context(record.alg, record.kid), what)
            try:
                key = signing_key(record.alg, parse_pem(pem, record.alg))
            except UnusableKeyError as exc:
                raise KeyStoreError(f"database {what}: {exc}") from None
            if key.kid != record.kid:
                raise KeyStoreError(f"database {what}: holds key {key.kid} instead")
            return key

        return load

    @contextmanager
    def coordinate(self, now: int, *, wait: bool) -> Iterator[bool]:
        started = time.monotonic()
        while not self._lease(self._now(now, started), LEASE_TTL):
            if not wait:
                yield False
                return
            if time.monotonic() - started > LEASE_TTL + 5:
                raise KeyCoordinationError(
                    f"another instance has held the {LEASE_NAME!r} lease for over "
                    f"{LEASE_TTL} s; try again"
                )
            time.sleep(_LEASE_POLL_SECONDS)
        try:
            yield True
        finally:
            # Release at once (a lease that ends now is free), so the next instance or
            # command need not wait for the TTL.
            with suppress(StorageError):
                self._lease(self._now(now, started), 0)

    def _lease(self, now: int, ttl: int) -> bool:
        return self._store.acquire_lease(LEASE_NAME, self._holder, now, ttl)

    @staticmethod
    def _now(now: int, started: float) -> int:
        return now + int(time.monotonic() - started)

    def add(self, alg: str, private: PrivateKey, created_at: int, activates_at: int) -> SigningKey:
        key = signing_key(alg, private)
        sealed = self._kek.seal(to_pem(private), _key_context(alg, key.kid))
        self._store.add_signing_key(
            SigningKeyRecord(key.kid, alg, sealed, created_at, activates_at)
        )
        logger.info("generated a new %s signing key %s in the database", alg, key.kid)
        return key

    def retire(self, kid: str, now: int) -> bool:
        return self._store.retire_signing_key(kid, now)

    def secret(self, name: str) -> bytes:
        context, what = f"secret:{name}", f"secret {name}"
        candidate = self._kek.seal(secrets.token_bytes(32), context)
        value = self._kek.open(self._store.get_or_create_secret(name, candidate), context, what)
        if len(value) != 32:
            raise KeyStoreError(f"database {what}: holds {len(value)} bytes, expected 32")
        return value


def _key_context(alg: str, kid: str) -> str:
    return f"signing-key:{alg}:{kid}"
