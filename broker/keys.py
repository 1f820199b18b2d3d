"""Signing keys and generated secrets, kept as files in ``keys.dir``.

Why it is built this way:

* **Parsed once.** Importing an RSA private key costs tens of milliseconds (cryptography
  checks the key), signing costs about one. So every key is parsed at start-up into a
  ready joserfc key object (``RSAKey``/``ECKey``/``OKPKey``) that already carries its
  ``kid``, ``alg`` and ``use``; nothing re-imports a PEM per request.
* **kid = RFC 7638 thumbprint.** Stable across restarts and instances without storing
  anything extra, and derivable by anyone holding the public key.
* **Generated once, under a lock.** Several processes (workers, instances sharing a
  directory) may start at the same moment. Creation happens under an exclusive
  ``flock`` on ``<dir>/.lock`` with a re-check inside, and files appear atomically
  (temporary file + ``os.replace``), so every process ends up with the same key.
* **Never replaced.** A file that exists but cannot be used (corrupt PEM, wrong key
  type, wrong length) is an error for a human to look at: silently generating a new key
  would invalidate every token and session in flight and hide the real problem.
* **0600.** Files are created owner-only; a looser mode on an existing file is logged as
  a warning (read-only secret mounts are often 0644) rather than refused.
"""

from __future__ import annotations

import base64
import copy
import fcntl
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, KeyParameters, KeySet, OKPKey, RSAKey

__all__ = [
    "LOCK_NAME",
    "RSA_KEY_SIZE",
    "SUPPORTED_ALGORITHMS",
    "AlgorithmNotLoadedError",
    "JoseKey",
    "KeyFileError",
    "KeyRing",
    "SigningKey",
    "key_path",
    "load_or_create_secret",
]

logger = logging.getLogger(__name__)

SUPPORTED_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")
#: 2048 bits: the size every RP library accepts, and fast to generate on first start.
RSA_KEY_SIZE: Final = 2048
MIN_RSA_KEY_SIZE: Final = 2048
LOCK_NAME: Final = ".lock"
#: Generating keys takes well under a second; a lock held longer than this means a
#: stuck process, and the operator should hear about it instead of a silent hang.
LOCK_TIMEOUT_SECONDS: Final = 30.0
_MAX_FILE_BYTES: Final = 64 * 1024
_MIN_SECRET_BYTES: Final = 16
_SECRET_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")

JoseKey = RSAKey | ECKey | OKPKey
_PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

#: What each algorithm needs, in words, for error messages.
_NEEDS: Final = {
    "RS256": f"an RSA private key of at least {MIN_RSA_KEY_SIZE} bits",
    "ES256": "an EC private key on curve P-256",
    "EdDSA": "an Ed25519 private key",
}


class KeyFileError(Exception):
    """A key or secret file that cannot be used, as one line: ``<file>: <problem>``."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


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


@dataclass(frozen=True)
class SigningKey:
    """One private signing key, ready to hand to joserfc (``kid``/``alg``/``use`` set)."""

    alg: str
    kid: str
    key: JoseKey = field(repr=False)
    path: Path

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK with ``kid``, ``alg`` and ``use: sig``; no private members."""
        return dict(self.key.as_dict(private=False))


def key_path(directory: Path, alg: str) -> Path:
    """Where the key for ``alg`` lives: ``rs256.pem``, ``es256.pem``, ``eddsa.pem``."""
    return directory / f"{alg.lower()}.pem"


class KeyRing:
    """The broker's signing keys, one per published algorithm.

    Build it with :meth:`load_or_create` at start-up and share it; it is read-only.
    """

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        self._keys: dict[str, SigningKey] = {key.alg: key for key in keys}
        self.algorithms: tuple[str, ...] = tuple(key.alg for key in keys)
        self._jwks: dict[str, Any] = {"keys": [key.public_jwk() for key in keys]}
        self._public = KeySet([_public_key(key) for key in keys])

    @classmethod
    def load_or_create(cls, directory: Path, algorithms: Sequence[str]) -> KeyRing:
        """Load ``<dir>/<alg>.pem`` for each algorithm, generating missing ones once.

        Raises :class:`KeyFileError` for an unusable file (which is left untouched) or a
        directory that cannot be created or locked.
        """
        algs = _checked_algorithms(algorithms)
        paths = {alg: key_path(directory, alg) for alg in algs}
        generated: dict[str, _PrivateKey] = {}
        missing = [alg for alg in algs if not _exists(paths[alg])]
        if missing:
            with _directory_lock(directory):
                for alg in missing:
                    if _exists(paths[alg]):
                        continue  # another process made it while we waited for the lock
                    private = _generate(alg)
                    _write_private_file(paths[alg], _to_pem(private))
                    logger.info("generated a new %s signing key in %s", alg, paths[alg])
                    generated[alg] = private
        keys = []
        for alg in algs:
            private = generated.get(alg) or _load_private_key(paths[alg], alg)
            keys.append(_signing_key(alg, private, paths[alg]))
        return cls(keys)

    @property
    def signing_keys(self) -> tuple[SigningKey, ...]:
        return tuple(self._keys[alg] for alg in self.algorithms)

    def signing_key(self, alg: str) -> SigningKey:
        """The key that signs with ``alg``; :class:`AlgorithmNotLoadedError` otherwise."""
        try:
            return self._keys[alg]
        except KeyError:
            raise AlgorithmNotLoadedError(alg, self.algorithms) from None

    def jwks(self) -> dict[str, Any]:
        """``{"keys": [...]}`` for ``/jwks.json``: public members, ``kid``, ``alg``,
        ``use``. A fresh copy each call, so a caller cannot alter what others publish."""
        return copy.deepcopy(self._jwks)

    def public_keyset(self) -> KeySet:
        """The public keys as a joserfc ``KeySet``, for verifying our own tokens
        (``id_token_hint``, introspection). Shared; do not modify."""
        return self._public


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
    if not _exists(path):
        with _directory_lock(directory):
            if not _exists(path):
                value = secrets.token_bytes(nbytes)
                _write_private_file(path, _encode_secret(value))
                logger.info("generated a new %s in %s", name, path)
                return value
    return _decode_secret(path, _read_private_file(path), nbytes)


# --------------------------------------------------------------------------- key objects


def _checked_algorithms(algorithms: Sequence[str]) -> tuple[str, ...]:
    if isinstance(algorithms, str):
        raise TypeError("algorithms must be a sequence of names, not a string")
    unknown = [alg for alg in algorithms if alg not in SUPPORTED_ALGORITHMS]
    if unknown:
        raise ValueError(
            f"unsupported signing algorithm(s) {', '.join(map(repr, unknown))}; "
            f"supported: {', '.join(SUPPORTED_ALGORITHMS)}"
        )
    if not algorithms:
        raise ValueError("at least one signing algorithm is needed")
    return tuple(dict.fromkeys(algorithms))


def _generate(alg: str) -> _PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def _to_pem(private: _PrivateKey) -> bytes:
    return private.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def _load_private_key(path: Path, alg: str) -> _PrivateKey:
    """Parse the PEM once and check it fits ``alg``; any problem is a KeyFileError."""
    data = _read_private_file(path)
    if b"ENCRYPTED" in data:
        raise KeyFileError(path, "is encrypted; the broker needs an unencrypted PKCS#8 PEM key")
    if b"PUBLIC KEY" in data or b"CERTIFICATE" in data:
        raise KeyFileError(path, f"holds a public key or certificate; {alg} needs {_NEEDS[alg]}")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise KeyFileError(
            path, f"is not a readable PEM private key (corrupt?); {alg} needs {_NEEDS[alg]}"
        ) from None
    return _checked_key_type(path, alg, private)


def _checked_key_type(path: Path, alg: str, private: object) -> _PrivateKey:
    """The key, if it is the kind ``alg`` signs with; a KeyFileError otherwise."""
    if alg == "RS256" and isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_KEY_SIZE:
            raise KeyFileError(
                path, f"holds a {private.key_size}-bit RSA key; {alg} needs {_NEEDS[alg]}"
            )
        return private
    if (
        alg == "ES256"
        and isinstance(private, ec.EllipticCurvePrivateKey)
        and isinstance(private.curve, ec.SECP256R1)
    ):
        return private
    if alg == "EdDSA" and isinstance(private, ed25519.Ed25519PrivateKey):
        return private
    raise KeyFileError(path, f"holds {_describe(private)}, but {alg} needs {_NEEDS[alg]}")


def _describe(private: object) -> str:
    if isinstance(private, rsa.RSAPrivateKey):
        return f"a {private.key_size}-bit RSA key"
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return f"an EC key on curve {private.curve.name}"
    return f"a key of type {type(private).__name__.removeprefix('_')}"


def _jose_key(alg: str, native: Any, parameters: KeyParameters | None = None) -> JoseKey:
    """Wrap an already-parsed cryptography key without re-importing it.

    joserfc's public ``import_key`` only takes PEM/DER bytes or a JWK dict, both of which
    parse (and, for RSA, check) the key again; the key classes accept the native object.
    """
    if alg == "RS256":
        return RSAKey(native, native, parameters)
    if alg == "ES256":
        return ECKey(native, native, parameters)
    return OKPKey(native, native, parameters)


def _signing_key(alg: str, private: _PrivateKey, path: Path) -> SigningKey:
    kid = _jose_key(alg, private.public_key()).thumbprint()
    parameters: KeyParameters = {"kid": kid, "alg": alg, "use": "sig"}
    return SigningKey(alg=alg, kid=kid, key=_jose_key(alg, private, parameters), path=path)


def _public_key(key: SigningKey) -> JoseKey:
    parameters: KeyParameters = {"kid": key.kid, "alg": key.alg, "use": "sig"}
    return _jose_key(key.alg, key.key.public_key, parameters)


# --------------------------------------------------------------------------- files


def _exists(path: Path) -> bool:
    """A dangling symlink counts as present: it must be fixed, not replaced."""
    return path.exists() or path.is_symlink()


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
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


def _write_private_file(path: Path, data: bytes) -> None:
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


def _read_private_file(path: Path) -> bytes:
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise KeyFileError(path, "is not a regular file")
        if info.st_size > _MAX_FILE_BYTES:
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
