"""Rate-limit counters shared by the workers of one instance: a hash table in a mapped file.

Why: ``serve`` forks ``server.workers`` processes (:mod:`broker.workers`). With counters
in each process's memory an attacker would get one full set of limits per worker, N
times the documented numbers. Redis shares counters too, but it is one more service to
run, and one machine does not need it: every worker maps the same small file
(``MAP_SHARED``), so they all read and write one set of counters and the limits are
exact across workers. Counting stays in memory (the page cache), no disk round trip.

Layout: a header (magic, number of slots, slot size), then ``slots`` fixed-size slots
of (16-byte BLAKE2b digest of the key, end of the window as epoch seconds, count).
An empty slot is all zeros, which is what a fresh file holds. Open addressing with a
bounded linear probe: a key lives in one of the ``PROBE`` slots that follow its hash.
The table never grows, so memory is bounded like ``MEMORY_MAX_KEYS``: a new counter takes
an expired (or empty) slot of its run first, else evicts the counter of the run whose
window ends soonest (the oldest window). As with the per-process store, an attacker who
cycles through that many source addresses is beyond what per-IP limits can stop anyway.

Locking: one ``add`` is one critical section, under a ``threading.Lock`` (the threads
of one worker) and ``flock`` on the file (the workers). ``flock`` belongs to an open
file, so each process opens the file itself: a table opened before a ``fork`` reopens
its file in the child on first use.

Who makes the file: the ``serve`` parent creates it (:func:`create_table`) in a fresh
temporary directory before forking and removes it at exit; each worker opens it
(:class:`SharedCounters`) and ``create_app(shared_counters=...)`` uses it.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from broker.web.ratelimit import Hit

__all__ = ["DEFAULT_SLOTS", "PROBE", "SharedCounters", "SharedTableError", "create_table"]

#: Counters a table holds (32 bytes each: 3.2 MB), the bound of ``MEMORY_MAX_KEYS``.
DEFAULT_SLOTS: Final = 100_000
#: Slots a key may occupy after its hash; also the most a lookup reads.
PROBE: Final = 16

_MAGIC: Final = b"QQBRLv1\0"
_HEADER: Final = struct.Struct("<8sII")  # magic, slots, slot size
_HEADER_SIZE: Final = 64  # the header padded, so the slots start aligned
_SLOT: Final = struct.Struct("<16sdq")  # key digest, window end (epoch s), count


class SharedTableError(Exception):
    """The file is not a counter table this version can use: one line naming it."""


def create_table(path: Path, slots: int = DEFAULT_SLOTS) -> Path:
    """Write an empty table of ``slots`` counters at ``path`` (a new file, mode 0600)."""
    if slots < 1:
        raise ValueError("a counter table needs at least 1 slot")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, _HEADER.pack(_MAGIC, slots, _SLOT.size).ljust(_HEADER_SIZE, b"\0"))
        os.ftruncate(fd, _HEADER_SIZE + slots * _SLOT.size)  # the slots read as zeros
    finally:
        os.close(fd)
    return path


class SharedCounters:
    """The ``Counters`` protocol of :mod:`broker.web.ratelimit` over a shared table."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._lock = threading.Lock()
        self._fd = self._open()
        self._pid = os.getpid()
        try:
            self._slots = self._check(os.fstat(self._fd).st_size)
            self._map = mmap.mmap(self._fd, 0)  # MAP_SHARED, read-write
        except BaseException:
            os.close(self._fd)
            raise

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as err:
            raise SharedTableError(
                f"{self.path}: cannot open the shared rate-limit table ({err.strerror})"
            ) from err

    def _check(self, size: int) -> int:
        """The number of slots, once the file has proved to be a whole table."""
        if size < _HEADER.size:
            raise SharedTableError(
                f"{self.path}: not a shared rate-limit table ({size} bytes, too short)"
            )
        magic, slots, slot_size = _HEADER.unpack(os.pread(self._fd, _HEADER.size, 0))
        if magic != _MAGIC or slot_size != _SLOT.size:
            raise SharedTableError(f"{self.path}: not a shared rate-limit table (unknown header)")
        expected = _HEADER_SIZE + slots * _SLOT.size
        if slots < 1 or size != expected:
            raise SharedTableError(
                f"{self.path}: shared rate-limit table is corrupt ({size} bytes where "
                f"{slots} slots need {expected})"
            )
        return int(slots)

    def close(self) -> None:
        with self._lock:
            self._map.close()
            os.close(self._fd)

    def __len__(self) -> int:
        """Live counters (tests and diagnostics: reads the whole table)."""
        now = self._clock()
        with self._lock, self._locked():
            return sum(1 for n in range(self._slots) if self._read(n)[1] > now)

    def add(self, hits: Sequence[Hit]) -> list[int]:
        now = self._clock()
        with self._lock, self._locked():
            return [self._add(hit, now) for hit in hits]

    def _add(self, hit: Hit, now: float) -> int:
        digest = hashlib.blake2b(hit.key.encode(), digest_size=16).digest()
        first = int.from_bytes(digest[:8], "little") % self._slots
        free: int | None = None
        oldest: tuple[float, int] | None = None  # (window end, slot) of the run
        for step in range(min(PROBE, self._slots)):
            slot = (first + step) % self._slots
            key, expires_at, count = self._read(slot)
            if expires_at <= now:  # empty or expired: reusable
                if free is None:
                    free = slot
            elif key == digest:
                count += hit.amount
                if hit.amount:
                    self._write(slot, key, expires_at, count)
                return count
            elif oldest is None or expires_at < oldest[0]:
                oldest = (expires_at, slot)
        if hit.amount == 0:  # a read does not create a counter
            return 0
        if free is None:  # a full run: the oldest window goes
            assert oldest is not None  # a run has at least one slot
            free = oldest[1]
        self._write(free, digest, hit.expires_at, hit.amount)
        return hit.amount

    def _read(self, slot: int) -> tuple[bytes, float, int]:
        key, expires_at, count = _SLOT.unpack_from(self._map, _HEADER_SIZE + slot * _SLOT.size)
        return key, expires_at, count

    def _write(self, slot: int, key: bytes, expires_at: float, count: int) -> None:
        _SLOT.pack_into(self._map, _HEADER_SIZE + slot * _SLOT.size, key, expires_at, count)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """``flock`` the file; call with ``self._lock`` held."""
        if self._pid != os.getpid():  # forked: an inherited flock would not exclude the parent
            fd = self._open()
            os.close(self._fd)
            self._fd, self._pid = fd, os.getpid()
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
