"""The key ring every instance holds: the active key per algorithm and the JWKS, kept in
step with the shared key list.

* **Same answer everywhere.** What is published and which key signs is a pure function
  of the key list and the time (:mod:`broker.keys.schedule`), so instances that read the
  same list agree without messaging.
* **Re-read, lazily.** The list is re-read at most every ``keys.refresh_interval``
  seconds, on use, by one thread while the others carry on with the previous list (a
  monotonic-clock comparison is all the hot path pays). Each key is parsed or decrypted
  once, when its ``kid`` first appears: zero private-key imports per request.
* **Views.** The active keys, the JWKS and the verification key set are computed once
  per key list and reused until the schedule's next boundary (a key becoming active or
  leaving the JWKS); the same objects are handed out meanwhile.
* **Changes under coordination.** First keys, rotation and withdrawal happen inside the
  source's lock (directory ``flock``) or lease (database), after re-reading the list,
  so concurrent starts make one key per algorithm and concurrent rotations one next key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import KeySet

from broker.config import KeysConfig, LifetimesConfig
from broker.keys import schedule
from broker.keys.crypto import KeyEncryptionKey
from broker.keys.errors import (
    AlgorithmNotLoadedError,
    KeyStoreError,
    NoActiveKeyError,
)
from broker.keys.material import SigningKey, checked_algorithms, generate
from broker.keys.schedule import KeyInfo, KeyStatus, Policy
from broker.keys.sources import DatabaseKeySource, FileKeySource, KeySource, StoredKey
from broker.storage.base import Store

logger = logging.getLogger("broker.keys")

Clock = Callable[[], float]


class UnknownKeyError(KeyStoreError):
    """``keys retire`` named no key (or an ambiguous prefix)."""


class RetireRefusedError(KeyStoreError):
    """Withdrawing this key now would leave its algorithm without a prepared successor."""


@dataclass(frozen=True)
class Rotation:
    """What a rotation did for one algorithm."""

    alg: str
    kid: str
    created_at: int
    activates_at: int
    #: False: a next key was already scheduled, nothing was created (idempotent).
    created: bool


@dataclass(frozen=True)
class Retirement:
    """What ``keys retire`` did: the key, whether it was already withdrawn, and the key
    that signs its algorithm afterwards (``replacement`` when one had to be made)."""

    key: KeyInfo
    already: bool
    successor: KeyInfo | None
    replacement: Rotation | None


@dataclass(frozen=True)
class _Snapshot:
    infos: tuple[KeyInfo, ...]
    #: kid → parsed key, for every key that is or may become published or signing.
    loaded: Mapping[str, SigningKey]


@dataclass(frozen=True)
class _View:
    snapshot: _Snapshot
    valid_until: float
    active: Mapping[str, SigningKey]
    jwks: tuple[dict[str, Any], ...]
    keyset: KeySet


class KeyRing:
    """The broker's signing keys. Build it with :meth:`from_config` (or
    :meth:`load_or_create` for a bare directory) at start-up and share it."""

    def __init__(
        self,
        source: KeySource,
        algorithms: Sequence[str],
        policy: Policy | None = None,
        *,
        create: bool = True,
        clock: Clock = time.time,
        timer: Clock = time.monotonic,
    ) -> None:
        self.algorithms: tuple[str, ...] = checked_algorithms(algorithms)
        self.policy = policy or Policy.default()
        self._source = source
        self._clock, self._timer = clock, timer
        self._cache: dict[Hashable, SigningKey] = {}
        self._lock = threading.Lock()
        now = self._now()
        self._snapshot = self._read(now)
        self._next_refresh = self._timer() + self.policy.refresh_interval
        if create and any(_lacks_key(self._snapshot.infos, alg, now) for alg in self.algorithms):
            self._change(now, wait=True, wants=lambda infos, alg: _lacks_key(infos, alg, now))
        self._view = self._build_view(self._snapshot, self._clock())

    @classmethod
    def load_or_create(
        cls,
        directory: Path,
        algorithms: Sequence[str],
        policy: Policy | None = None,
        *,
        clock: Clock = time.time,
        timer: Clock = time.monotonic,
    ) -> KeyRing:
        """Keys in ``directory`` (``keys.storage: files``), generating missing ones once.

        Raises :class:`~broker.keys.errors.KeyFileError` for an unusable file (which is
        left untouched) or a directory that cannot be created or locked.
        """
        algs = checked_algorithms(algorithms)
        return cls(FileKeySource(directory, algs), algs, policy, clock=clock, timer=timer)

    @classmethod
    def from_config(
        cls,
        keys: KeysConfig,
        lifetimes: LifetimesConfig,
        store: Store | None = None,
        *,
        create: bool = True,
        clock: Clock = time.time,
        timer: Clock = time.monotonic,
    ) -> KeyRing:
        """The ring ``keys.storage`` asks for; ``store`` is needed for ``database``.
        ``create=False`` (``keys list``) loads what exists and makes nothing."""
        source: KeySource
        if keys.storage == "database":
            if store is None or keys.encryption_key is None:
                raise ValueError("keys.storage: database needs a store and keys.encryption_key")
            source = DatabaseKeySource(store, KeyEncryptionKey.from_config(keys.encryption_key))
        else:
            source = FileKeySource(keys.dir, checked_algorithms(keys.algorithms))
        policy = Policy.from_config(keys, lifetimes)
        return cls(source, keys.algorithms, policy, create=create, clock=clock, timer=timer)

    # ------------------------------------------------------------------ what callers use

    @property
    def signing_keys(self) -> tuple[SigningKey, ...]:
        """The active key of each algorithm that has one, in ``algorithms`` order."""
        active = self._current_view().active
        return tuple(active[alg] for alg in self.algorithms if alg in active)

    def signing_key(self, alg: str) -> SigningKey:
        """The key that signs with ``alg`` now; :class:`AlgorithmNotLoadedError` for an
        algorithm not in ``keys.algorithms``, :class:`NoActiveKeyError` (both
        ``KeyError``) when every key of it was withdrawn."""
        if alg not in self.algorithms:
            raise AlgorithmNotLoadedError(alg, self.algorithms)
        key = self._current_view().active.get(alg)
        if key is None:
            raise NoActiveKeyError(alg)
        return key

    def jwks(self) -> dict[str, Any]:
        """``{"keys": [...]}`` for ``/jwks.json`` (RFC 7517 §5): the published public
        keys with ``kid``, ``alg``, ``use``. A fresh copy each call, so a caller cannot
        alter what others publish (every member value is a string: one level suffices)."""
        return {"keys": [dict(jwk) for jwk in self._current_view().jwks]}

    def public_keyset(self) -> KeySet:
        """Every published public key as a joserfc ``KeySet``, for verifying our own
        tokens (``id_token_hint``, logout): a hint signed by a just-superseded key still
        verifies. Shared; do not modify."""
        return self._current_view().keyset

    def shared_secret(self, name: str) -> bytes:
        """A 32-byte secret kept where the keys live, the same for every instance."""
        return self._source.secret(name)

    def statuses(self, now: int | None = None) -> list[KeyStatus]:
        """Every key of the configured algorithms and its state, for ``keys list``."""
        at = self._now() if now is None else now
        infos = self._snapshot.infos
        ordered = sorted(infos, key=lambda k: (self.algorithms.index(k.alg), k.activates_at, k.kid))
        return [schedule.status(infos, key, at, self.policy.retention) for key in ordered]

    # ------------------------------------------------------------------ changes

    def rotate(self, now: int | None = None) -> list[Rotation]:
        """Schedule the next key of every algorithm (``keys rotate``): published now,
        signing after ``publish_ahead``; an already scheduled one is reported instead."""
        at = self._now() if now is None else now
        return self._change(at, wait=True, wants=lambda infos, alg: True)

    def rotate_if_due(self, now: int) -> list[Rotation]:
        """The scheduled job: rotate the algorithms whose turn it is. Cheap when none is
        (no lock); in database mode, skipped while another instance holds the lease."""
        self._maybe_refresh()

        def due(infos: Sequence[KeyInfo], alg: str) -> bool:
            return schedule.rotation_due(infos, alg, now, self.policy)

        if not any(due(self._snapshot.infos, alg) for alg in self.algorithms):
            return []
        done = [r for r in self._change(now, wait=False, wants=due) if r.created]
        for rotation in done:
            logger.info(
                "rotated %s: new key %s is published and signs from %d",
                rotation.alg,
                rotation.kid,
                rotation.activates_at,
            )
        return done

    def retire(self, kid: str, now: int | None = None, *, force: bool = False) -> Retirement:
        """Withdraw a key at once (``keys retire``, e.g. a leaked key): it leaves the
        JWKS, so relying parties reject every token it signed.

        Refused for the key that signs now unless a next key is scheduled (it then
        signs early) or ``force`` (a new key is then made and signs at once).
        """
        at = self._now() if now is None else now
        with self._lock, self._source.coordinate(at, wait=True):
            infos = list(self._reread(at).infos)
            key = _find(infos, kid)
            if schedule.is_withdrawn(key, at):
                return Retirement(key, True, schedule.active(infos, key.alg, at), None)
            signing = schedule.active(infos, key.alg, at)
            if signing == key and not schedule.has_next(infos, key.alg, at) and not force:
                raise RetireRefusedError(
                    f"{key.kid} signs {key.alg} tokens now and no next key is scheduled: run "
                    "`qq-oidc-broker keys rotate` first (the new key signs after "
                    "keys.rotation.publish_ahead), or pass --force"
                )
            self._source.retire(key.kid, at)
            infos = [_retired(k, at) if k.kid == key.kid else k for k in infos]
            replacement = None
            if schedule.active(infos, key.alg, at) is None:
                replacement = self._add(key.alg, (at, at), infos)
            self._install(self._read(at))
        return Retirement(key, False, schedule.active(infos, key.alg, at), replacement)

    def refresh(self) -> None:
        """Re-read the key list now (after a change made by this process)."""
        with self._lock:
            self._install(self._read(self._now()))

    # ------------------------------------------------------------------ internals

    def _now(self) -> int:
        return int(self._clock())

    def _change(
        self, now: int, *, wait: bool, wants: Callable[[Sequence[KeyInfo], str], bool]
    ) -> list[Rotation]:
        """Create the next key for each algorithm ``wants`` (re-checked on a fresh read
        inside the lock or lease, so no two processes create one each)."""
        results: list[Rotation] = []
        # This process's lock first (it guards the parse cache), then the shared one.
        with self._lock, self._source.coordinate(now, wait=wait) as held:
            if not held:
                return results
            infos = list(self._reread(now).infos)
            for alg in self.algorithms:
                if not wants(infos, alg):
                    continue
                times = schedule.new_key_times(infos, alg, now, self.policy.publish_ahead)
                if times is None:
                    results.append(_scheduled(infos, alg, now))
                else:
                    results.append(self._add(alg, times, infos))
            if any(r.created for r in results):
                self._install(self._read(now))
        return results

    def _add(self, alg: str, times: tuple[int, int], infos: list[KeyInfo]) -> Rotation:
        key = self._source.add(alg, generate(alg), *times)
        infos.append(KeyInfo(key.kid, alg, *times))
        return Rotation(alg, key.kid, times[0], times[1], created=True)

    def _reread(self, now: int) -> _Snapshot:
        """A fresh snapshot (inside the lock), installed so this ring follows at once."""
        snapshot = self._read(now)
        self._install(snapshot)
        return snapshot

    def _install(self, snapshot: _Snapshot) -> None:
        """Use ``snapshot``, keeping the current one (and so its views) if nothing changed."""
        if snapshot.infos != self._snapshot.infos:
            self._snapshot = snapshot
        self._next_refresh = self._timer() + self.policy.refresh_interval

    def _read(self, now: int) -> _Snapshot:
        """List the keys and load the ones that can still be published or sign (a key
        once expired or withdrawn never is again, so it is never parsed)."""
        stored: dict[str, StoredKey] = {}
        for item in self._source.read():
            if item.alg in self.algorithms:
                stored.setdefault(item.kid, item)
        infos = tuple(_info(item) for item in stored.values())
        loaded: dict[str, SigningKey] = {}
        cache: dict[Hashable, SigningKey] = {}
        for info in infos:
            state = schedule.status(infos, info, now, self.policy.retention).state
            if state in (schedule.EXPIRED, schedule.WITHDRAWN):
                continue
            item = stored[info.kid]
            key = self._cache.get(item.cache_key) or item.load()
            loaded[info.kid] = cache[item.cache_key] = key
        self._cache = cache
        return _Snapshot(infos, loaded)

    def _maybe_refresh(self) -> None:
        if self._timer() < self._next_refresh or not self._lock.acquire(blocking=False):
            return
        try:
            if self._timer() < self._next_refresh:
                return
            self._next_refresh = self._timer() + self.policy.refresh_interval
            try:
                self._install(self._read(self._now()))
            except Exception as exc:  # keep serving with the keys we have; retry later
                detail = str(exc) if isinstance(exc, KeyStoreError) else type(exc).__name__
                logger.warning(
                    "could not re-read the signing keys (keeping the loaded ones; retrying "
                    "in %d s): %s",
                    self.policy.refresh_interval,
                    detail,
                )
        finally:
            self._lock.release()

    def _current_view(self) -> _View:
        self._maybe_refresh()
        view, snapshot, now = self._view, self._snapshot, self._clock()
        if view.snapshot is not snapshot or now >= view.valid_until:
            view = self._view = self._build_view(snapshot, now)
        return view

    def _build_view(self, snapshot: _Snapshot, now: float) -> _View:
        infos, retention = snapshot.infos, self.policy.retention
        active: dict[str, SigningKey] = {}
        for alg in self.algorithms:
            info = schedule.active(infos, alg, now)
            if info is not None and info.kid in snapshot.loaded:
                active[alg] = snapshot.loaded[info.kid]
        published = [
            snapshot.loaded[info.kid]
            for info in schedule.published(infos, self.algorithms, now, retention)
            if info.kid in snapshot.loaded
        ]
        return _View(
            snapshot=snapshot,
            valid_until=schedule.next_change(infos, now, retention),
            active=active,
            jwks=tuple(key.public_jwk() for key in published),
            keyset=KeySet([key.public_key() for key in published]),
        )


def _info(item: StoredKey) -> KeyInfo:
    return KeyInfo(item.kid, item.alg, item.created_at, item.activates_at, item.retired_at)


def _retired(key: KeyInfo, now: int) -> KeyInfo:
    return KeyInfo(key.kid, key.alg, key.created_at, key.activates_at, now)


def _scheduled(infos: Sequence[KeyInfo], alg: str, now: int) -> Rotation:
    """The already scheduled next key of ``alg``, reported by an idempotent rotation."""
    pending = min(
        (k for k in infos if k.alg == alg and schedule.is_pending(k, now)),
        key=lambda k: (k.activates_at, k.kid),
    )
    return Rotation(alg, pending.kid, pending.created_at, pending.activates_at, created=False)


def _lacks_key(infos: Sequence[KeyInfo], alg: str, now: int) -> bool:
    return schedule.active(infos, alg, now) is None


def _find(infos: Sequence[KeyInfo], kid: str) -> KeyInfo:
    """The key with this kid, or the only one whose kid starts with it (>= 8 chars)."""
    exact = [key for key in infos if key.kid == kid]
    if exact:
        return exact[0]
    matches = [key for key in infos if len(kid) >= 8 and key.kid.startswith(kid)]
    if len(matches) == 1:
        return matches[0]
    shown = kid if len(kid) <= 64 else kid[:61] + "..."
    if matches:
        raise UnknownKeyError(f"kid {shown!r} matches {len(matches)} keys; give more of it")
    raise UnknownKeyError(f"no key with kid {shown!r} (see `qq-oidc-broker keys list`)")
