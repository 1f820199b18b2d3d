"""Files in ``keys.dir``: the directory lock, atomic 0600 writes, secrets, the manifest.

* **Generated once, under a lock.** Several processes (workers, instances sharing a
  directory over a shared mount) may start or rotate at the same moment. Every change
  happens under an exclusive ``flock`` on ``<dir>/.lock`` with a re-read inside, and
  files appear atomically (temporary file + ``os.replace``), so readers, which take no
  lock (a read-only mount of ready keys must work), see a whole file or none.
* **Never replaced.** A file that exists but cannot be used is an error for a human to
  look at: silently generating a new key would invalidate every token in flight and hide
  the real problem.
* **0600.** Files are created owner-only; a looser mode on an existing file is logged as
  a warning (read-only secret mounts are often 0644) rather than refused.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from broker.keys.errors import KeyFileError

logger = logging.getLogger("broker.keys")

LOCK_NAME: Final = ".lock"
#: The schedule of keys created by rotation (when each is published, signs, is withdrawn).
MANIFEST_NAME: Final = "keys.json"
MANIFEST_VERSION: Final = 1
#: Generating keys takes well under a second; a lock held longer than this means a
#: stuck process, and the operator should hear about it instead of a silent hang.
LOCK_TIMEOUT_SECONDS: Final = 30.0
_MAX_FILE_BYTES: Final = 64 * 1024
_MAX_MANIFEST_BYTES: Final = 1024 * 1024
_MIN_SECRET_BYTES: Final = 16
_SECRET_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
#: A manifest names files inside the directory only: no separators, no dot-dot.
_KEY_FILE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,127}\.pem")


def key_path(directory: Path, alg: str) -> Path:
    """Where the first key for ``alg`` lives: ``rs256.pem``, ``es256.pem``, ``eddsa.pem``."""
    return directory / f"{alg.lower()}.pem"


def rotated_key_path(directory: Path, alg: str, created_at: int, kid: str) -> Path:
    """A later key's file: ``rs256-<created_at>-<kid prefix>.pem`` (unique, sortable)."""
    prefix = re.sub(r"[^a-z0-9_-]", "", kid[:8].lower()) or "key"
    return directory / f"{alg.lower()}-{created_at}-{prefix}.pem"


def exists(path: Path) -> bool:
    """A dangling symlink counts as present: it must be fixed, not replaced."""
    return path.exists() or path.is_symlink()


# --------------------------------------------------------------------------- locking


@contextmanager
def directory_lock(directory: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``<dir>/.lock``; released when the descriptor closes
    (also when the process dies), so a crash never leaves a stale lock behind."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(directory, f"cannot create the key directory: {exc.strerror}") from None
    lock_path = directory / LOCK_NAME
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise KeyFileError(lock_path, f"cannot open the lock file: {exc.strerror}") from None
    try:
        _acquire(fd, lock_path)
        yield
    finally:
        os.close(fd)


def _acquire(fd: int, lock_path: Path) -> None:
    deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise KeyFileError(
                    lock_path,
                    f"still locked by another process after {LOCK_TIMEOUT_SECONDS:.0f} s",
                ) from None
            time.sleep(0.02)


# --------------------------------------------------------------------------- read, write


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600, atomically: readers see the whole file
    or none. Call with the directory lock held (``os.replace`` overwrites)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(tmp, flags, 0o600)
    except OSError as exc:
        raise KeyFileError(path, f"cannot create the file: {exc.strerror}") from None
    try:
        with open(fd, "wb", closefd=True) as handle:
            os.fchmod(handle.fileno(), 0o600)  # independent of the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise KeyFileError(path, f"cannot write the file: {exc.strerror}") from None
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the new name durable, so a power cut cannot bring the old state back."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_private_file(path: Path, limit: int = _MAX_FILE_BYTES) -> bytes:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(path, "is not a regular file")
        if info.st_size > limit:
            raise KeyFileError(path, f"is {info.st_size} bytes, too large for a key (corrupt?)")
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(path, f"cannot read: {exc.strerror}") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        logger.warning(
            "%s: mode %04o lets other users read this secret; run `chmod 600 %s`",
            path,
            mode,
            path,
        )
    return data


# --------------------------------------------------------------------------- secrets


def load_or_create_secret(directory: Path, name: str, nbytes: int = 32) -> bytes:
    """A random secret kept in ``<dir>/<name>`` (``secret_key``, ``pairwise_salt``, ...).

    Generated once under the directory lock, so every process and instance sharing the
    directory gets the same value. Stored as one line of base64url text (easy to back
    up and inspect); a file that does not decode to exactly ``nbytes`` bytes is a
    :class:`KeyFileError` and is never overwritten.
    """
    if not _SECRET_NAME.fullmatch(name):
        raise ValueError(f"secret name must match {_SECRET_NAME.pattern}, got {name!r}")
    if nbytes < _MIN_SECRET_BYTES:
        raise ValueError(f"a secret needs at least {_MIN_SECRET_BYTES} bytes, got {nbytes}")
    path = directory / name
    if not exists(path):
        with directory_lock(directory):
            if not exists(path):
                value = secrets.token_bytes(nbytes)
                write_private_file(path, _encode_secret(value))
                logger.info("generated a new %s in %s", name, path)
                return value
    return _decode_secret(path, read_private_file(path), nbytes)


def _encode_secret(value: bytes) -> bytes:
    return base64.urlsafe_b64encode(value).rstrip(b"=") + b"\n"


def _decode_secret(path: Path, data: bytes, nbytes: int) -> bytes:
    text = data.strip()
    if not _BASE64URL.fullmatch(text.decode("ascii", errors="replace")):
        raise KeyFileError(path, "is not one line of base64url text (corrupt?)")
    try:
        value = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    except ValueError:
        raise KeyFileError(path, "is not valid base64url (corrupt?)") from None
    if len(value) != nbytes:
        raise KeyFileError(path, f"holds {len(value)} bytes, expected {nbytes} (corrupt?)")
    return value


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ManifestEntry:
    """One key's schedule in ``keys.json``; ``file`` is a name inside ``keys.dir``."""

    file: str
    kid: str
    alg: str
    created_at: int
    activates_at: int
    retired_at: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "kid": self.kid,
            "alg": self.alg,
            "created_at": self.created_at,
            "activates_at": self.activates_at,
            "retired_at": self.retired_at,
        }


def read_manifest(directory: Path) -> list[ManifestEntry] | None:
    """The manifest's entries, or ``None`` when there is none (a directory that never
    rotated). Read without the lock: it is only ever replaced whole."""
    path = directory / MANIFEST_NAME
    if not exists(path):
        return None
    data = read_private_file(path, _MAX_MANIFEST_BYTES)
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise KeyFileError(path, "is not valid JSON (corrupt?)") from None
    if not isinstance(document, dict) or document.get("version") != MANIFEST_VERSION:
        raise KeyFileError(path, f"is not a version {MANIFEST_VERSION} key manifest")
    raw = document.get("keys")
    if not isinstance(raw, list):
        raise KeyFileError(path, "has no 'keys' list")
    entries = [_entry(path, index, item) for index, item in enumerate(raw)]
    files = [entry.file for entry in entries]
    if len(set(files)) != len(files):
        raise KeyFileError(path, "lists a key file twice")
    return entries


def _entry(path: Path, index: int, item: Any) -> ManifestEntry:
    def fail(problem: str) -> KeyFileError:
        return KeyFileError(path, f"keys[{index}]: {problem}")

    if not isinstance(item, dict):
        raise fail("is not an object")
    name, kid, alg = item.get("file"), item.get("kid"), item.get("alg")
    if not isinstance(name, str) or not _KEY_FILE_NAME.fullmatch(name):
        raise fail("'file' must be a .pem file name inside the key directory")
    if not isinstance(kid, str) or not _BASE64URL.fullmatch(kid):
        raise fail("'kid' must be a base64url thumbprint")
    if not isinstance(alg, str):
        raise fail("'alg' must be a string")
    times: dict[str, int | None] = {}
    for field_name in ("created_at", "activates_at", "retired_at"):
        value = item.get(field_name)
        optional = field_name == "retired_at"
        if (value is None and optional) or (isinstance(value, int) and not isinstance(value, bool)):
            times[field_name] = value
        else:
            raise fail(f"'{field_name}' must be an integer (Unix time)")
    created, activates = times["created_at"], times["activates_at"]
    if created is None or activates is None:
        raise fail("'created_at' and 'activates_at' are required")
    return ManifestEntry(name, kid, alg, created, activates, times["retired_at"])


def write_manifest(directory: Path, entries: list[ManifestEntry]) -> None:
    """Replace the manifest atomically. Call with the directory lock held."""
    document = {"version": MANIFEST_VERSION, "keys": [entry.as_json() for entry in entries]}
    data = json.dumps(document, indent=2).encode() + b"\n"
    write_private_file(directory / MANIFEST_NAME, data)
