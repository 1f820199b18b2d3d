"""broker.keys: keys are generated once (even under a start-up race), kept 0600, identified
by their RFC 7638 thumbprint, never replaced when broken, and verify with PyJWT."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import stat
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from joserfc import jwt as jose_jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from broker.keys import (
    LOCK_NAME,
    MANIFEST_NAME,
    SUPPORTED_ALGORITHMS,
    AlgorithmNotLoadedError,
    KeyFileError,
    KeyRing,
    key_path,
    load_or_create_secret,
)

ALL = list(SUPPORTED_ALGORITHMS)
PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
KEY_CLASSES = {"RS256": RSAKey, "ES256": ECKey, "EdDSA": OKPKey}


def b64url_int(value: int, length: int | None = None) -> str:
    size = length or max(1, (value.bit_length() + 7) // 8)
    return base64.urlsafe_b64encode(value.to_bytes(size, "big")).rstrip(b"=").decode()


def rfc7638_thumbprint(pem: bytes) -> str:
    """Computed here from the PEM with cryptography + hashlib, independent of joserfc."""
    private = serialization.load_pem_private_key(pem, password=None)
    members: dict[str, str]
    if isinstance(private, rsa.RSAPrivateKey):
        numbers = private.public_key().public_numbers()
        members = {"e": b64url_int(numbers.e), "kty": "RSA", "n": b64url_int(numbers.n)}
    elif isinstance(private, ec.EllipticCurvePrivateKey):
        point = private.public_key().public_numbers()
        members = {
            "crv": "P-256",
            "kty": "EC",
            "x": b64url_int(point.x, 32),
            "y": b64url_int(point.y, 32),
        }
    else:
        assert isinstance(private, ed25519.Ed25519PrivateKey)
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        members = {"crv": "Ed25519", "kty": "OKP", "x": base64.urlsafe_b64encode(raw).decode()}
        members["x"] = members["x"].rstrip("=")
    canonical = json.dumps(members, sort_keys=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def pem_of(private: Any) -> bytes:
    return bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def snapshot(path: Path) -> tuple[bytes, int, int]:
    info = path.stat()
    return path.read_bytes(), info.st_mtime_ns, info.st_ino


# --------------------------------------------------------------------------- first and second start


def test_first_start_generates_owner_only_files(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    ring = KeyRing.load_or_create(directory, ALL)

    assert ring.algorithms == tuple(ALL)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for alg in ALL:
        path = key_path(directory, alg)
        assert path.name == f"{alg.lower()}.pem"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
        key = ring.signing_key(alg)
        assert key.alg == alg and key.path == path
        assert isinstance(key.key, KEY_CLASSES[alg]) and key.key.is_private
        assert key.key.kid == key.kid and key.key.alg == alg and key.key.get("use") == "sig"
    leftovers = [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_generation_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        KeyRing.load_or_create(tmp_path, ["ES256"])
        load_or_create_secret(tmp_path, "secret_key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "es256.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600


def test_second_start_loads_the_same_keys(tmp_path: Path) -> None:
    first = KeyRing.load_or_create(tmp_path, ALL)
    files = {alg: snapshot(key_path(tmp_path, alg)) for alg in ALL}
    second = KeyRing.load_or_create(tmp_path, ALL)
    for alg in ALL:
        assert second.signing_key(alg).kid == first.signing_key(alg).kid
        assert snapshot(key_path(tmp_path, alg)) == files[alg]
    assert second.jwks() == first.jwks()


def test_adding_an_algorithm_keeps_the_existing_keys(tmp_path: Path) -> None:
    rs256 = KeyRing.load_or_create(tmp_path, ["RS256"]).signing_key("RS256").kid
    ring = KeyRing.load_or_create(tmp_path, ["RS256", "EdDSA"])
    assert ring.signing_key("RS256").kid == rs256
    assert ring.algorithms == ("RS256", "EdDSA")
    with pytest.raises(AlgorithmNotLoadedError) as info:
        ring.signing_key("ES256")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == (
        "no signing key for algorithm 'ES256'; loaded: RS256, EdDSA (see keys.algorithms)"
    )


def test_keys_are_parsed_once(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path, ALL)
    for alg in ALL:
        assert ring.signing_key(alg) is ring.signing_key(alg)
        assert ring.signing_key(alg).key is ring.signing_key(alg).key
    assert ring.public_keyset() is ring.public_keyset()


@pytest.mark.parametrize("bad", [["HS256"], ["none"], [], "RS256"])
def test_unsupported_algorithms_are_refused(tmp_path: Path, bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        KeyRing.load_or_create(tmp_path, bad)
    assert not any(tmp_path.glob("*.pem"))


# --------------------------------------------------------------------------- kid and JWKS


@pytest.mark.parametrize("alg", ALL)
def test_kid_is_the_rfc7638_thumbprint(tmp_path: Path, alg: str) -> None:
    ring = KeyRing.load_or_create(tmp_path, [alg])
    expected = rfc7638_thumbprint(key_path(tmp_path, alg).read_bytes())
    assert ring.signing_key(alg).kid == expected
    assert ring.jwks()["keys"][0]["kid"] == expected


def test_kid_of_a_provided_key_file(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "es256.pem").write_bytes(pem_of(private))
    os.chmod(tmp_path / "es256.pem", 0o600)
    ring = KeyRing.load_or_create(tmp_path, ["ES256"])
    assert ring.signing_key("ES256").kid == rfc7638_thumbprint(pem_of(private))


def test_jwks_publishes_public_members_only(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path, ALL)
    jwks = ring.jwks()
    assert [key["alg"] for key in jwks["keys"]] == ALL
    for key in jwks["keys"]:
        assert not PRIVATE_MEMBERS & set(key), key
        assert key["use"] == "sig" and key["kid"] and key["kty"] in ("RSA", "EC", "OKP")
    assert json.loads(json.dumps(jwks)) == jwks
    serialized = json.dumps(jwks)
    for alg in ALL:
        assert '"d"' not in serialized
        assert ring.signing_key(alg).kid in serialized


def test_jwks_is_a_copy(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path, ["RS256"])
    published = ring.jwks()
    published["keys"][0]["kid"] = "tampered"
    published["keys"].append({"kty": "oct"})
    assert ring.jwks()["keys"][0]["kid"] != "tampered"
    assert len(ring.jwks()["keys"]) == 1


def test_public_keyset_holds_no_private_keys(tmp_path: Path) -> None:
    ring = KeyRing.load_or_create(tmp_path, ALL)
    keyset = ring.public_keyset()
    assert {key.kid for key in keyset} == {ring.signing_key(alg).kid for alg in ALL}
    assert not any(key.is_private for key in keyset)


# --------------------------------------------------------------------------- sign and verify


@pytest.mark.parametrize("alg", ALL)
def test_id_token_signed_with_joserfc_verifies_with_pyjwt_against_the_jwks(
    tmp_path: Path, alg: str
) -> None:
    ring = KeyRing.load_or_create(tmp_path, ALL)
    signing = ring.signing_key(alg)
    now = int(time.time())
    claims = {"iss": "https://login.example.com", "sub": "OPENID", "aud": "rp", "iat": now,
              "exp": now + 300}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc: "EdDSA is deprecated via RFC 9864"
        token = jose_jwt.encode({"alg": alg, "kid": signing.kid}, claims, signing.key, [alg])

    header = pyjwt.get_unverified_header(token)
    assert header["kid"] == signing.kid and header["alg"] == alg
    published = pyjwt.PyJWKSet.from_dict(ring.jwks())
    verified = pyjwt.decode(
        token,
        published[header["kid"]].key,
        algorithms=[alg],
        audience="rp",
        issuer="https://login.example.com",
    )
    assert verified["sub"] == "OPENID"

    # The signature is really checked: another key of the same algorithm does not verify.
    stranger = KeyRing.load_or_create(tmp_path / "other", [alg]).jwks()
    stranger_key = pyjwt.PyJWKSet.from_dict(stranger).keys[0].key
    with pytest.raises(pyjwt.InvalidSignatureError):
        pyjwt.decode(token, stranger_key, algorithms=[alg], audience="rp")


@pytest.mark.parametrize("alg", ALL)
def test_public_keyset_verifies_our_tokens(tmp_path: Path, alg: str) -> None:
    ring = KeyRing.load_or_create(tmp_path, ALL)
    signing = ring.signing_key(alg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        token = jose_jwt.encode({"alg": alg, "kid": signing.kid}, {"sub": "u"}, signing.key, [alg])
        decoded = jose_jwt.decode(token, ring.public_keyset(), algorithms=[alg])
    assert decoded.claims["sub"] == "u"


# --------------------------------------------------------------------------- broken files


def _encrypted_pem() -> bytes:
    return rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )


def _public_pem() -> bytes:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@pytest.mark.parametrize(
    ("alg", "content", "fragment"),
    [
        ("RS256", b"", "not a readable PEM private key"),
        ("RS256", b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
         "not a readable PEM private key"),
        ("RS256", b"\x00\xff" * 100, "not a readable PEM private key"),
        ("ES256", pem_of(rsa.generate_private_key(65537, 2048)),
         "holds a 2048-bit RSA key, but ES256 needs an EC private key on curve P-256"),
        ("ES256", pem_of(ec.generate_private_key(ec.SECP384R1())),
         "holds an EC key on curve secp384r1"),
        ("EdDSA", pem_of(ed448.Ed448PrivateKey.generate()), "EdDSA needs an Ed25519 private key"),
        ("RS256", pem_of(ed25519.Ed25519PrivateKey.generate()), "RS256 needs an RSA private key"),
        ("RS256", pem_of(rsa.generate_private_key(65537, 1024)), "holds a 1024-bit RSA key"),  # noqa: S505
        ("RS256", _encrypted_pem(), "is encrypted"),
        ("ES256", _public_pem(), "holds a public key or certificate"),
    ],
)  # fmt: skip
def test_unusable_key_file_is_an_error_and_is_left_alone(
    tmp_path: Path, alg: str, content: bytes, fragment: str
) -> None:
    path = key_path(tmp_path, alg)
    path.write_bytes(content)
    os.chmod(path, 0o600)
    before = snapshot(path)

    with pytest.raises(KeyFileError) as info:
        KeyRing.load_or_create(tmp_path, ["RS256", alg] if alg != "RS256" else ["RS256"])

    message = str(info.value)
    assert message.startswith(f"{path}: ") and fragment in message, message
    assert "\n" not in message
    assert info.value.path == path
    assert snapshot(path) == before


def test_dangling_symlink_is_an_error_not_replaced(tmp_path: Path) -> None:
    link = key_path(tmp_path, "RS256")
    link.symlink_to(tmp_path / "missing.pem")
    with pytest.raises(KeyFileError, match="cannot read"):
        KeyRing.load_or_create(tmp_path, ["RS256"])
    assert link.is_symlink() and not (tmp_path / "missing.pem").exists()


def test_loose_permissions_are_a_warning_not_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = KeyRing.load_or_create(tmp_path, ["ES256"])
    os.chmod(key_path(tmp_path, "ES256"), 0o644)
    with caplog.at_level(logging.WARNING, logger="broker.keys"):
        again = KeyRing.load_or_create(tmp_path, ["ES256"])
    assert again.signing_key("ES256").kid == first.signing_key("ES256").kid
    warnings_ = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings_) == 1 and "es256.pem" in warnings_[0].getMessage()
    assert "chmod 600" in warnings_[0].getMessage()
    assert stat.S_IMODE(key_path(tmp_path, "ES256").stat().st_mode) == 0o644  # not changed


def test_existing_keys_load_without_taking_the_lock(tmp_path: Path) -> None:
    """A read-only mount of ready keys must work: loading takes no lock, only creating does."""
    KeyRing.load_or_create(tmp_path, ["ES256"])
    load_or_create_secret(tmp_path, "secret_key")
    (tmp_path / LOCK_NAME).unlink()
    (tmp_path / LOCK_NAME).mkdir()  # now any attempt to open the lock file fails
    KeyRing.load_or_create(tmp_path, ["ES256"])
    load_or_create_secret(tmp_path, "secret_key")
    with pytest.raises(KeyFileError, match="cannot open the lock file"):
        KeyRing.load_or_create(tmp_path, ["ES256", "RS256"])
    assert not key_path(tmp_path, "RS256").exists()


# --------------------------------------------------------------------------- locking


def test_creation_waits_for_the_directory_lock(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    results: list[KeyRing] = []
    with open(tmp_path / LOCK_NAME, "a+b") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        worker = threading.Thread(
            target=lambda: results.append(KeyRing.load_or_create(tmp_path, ["ES256"]))
        )
        worker.start()
        time.sleep(0.3)
        assert not key_path(tmp_path, "ES256").exists(), "created without holding the lock"
        # Meanwhile "another process" creates the key; the waiter must load it, not replace it.
        private = ec.generate_private_key(ec.SECP256R1())
        key_path(tmp_path, "ES256").write_bytes(pem_of(private))
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    worker.join(timeout=10)
    assert results and results[0].signing_key("ES256").kid == rfc7638_thumbprint(pem_of(private))


def _start_concurrently(directory: str, barrier: Any, queue: Any) -> None:
    barrier.wait()
    ring = KeyRing.load_or_create(Path(directory), ALL)
    secret = load_or_create_secret(Path(directory), "pairwise_salt")
    queue.put(([ring.signing_key(alg).kid for alg in ALL], secret))


def test_concurrent_first_starts_generate_one_key_per_algorithm(tmp_path: Path) -> None:
    workers = 6
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    queue = context.Queue()
    processes = [
        context.Process(target=_start_concurrently, args=(str(tmp_path / "keys"), barrier, queue))
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    results = [queue.get(timeout=60) for _ in range(workers)]
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0

    kids = {tuple(kid_list) for kid_list, _ in results}
    assert len(kids) == 1, f"processes ended with different keys: {kids}"
    assert len({secret for _, secret in results}) == 1
    final = KeyRing.load_or_create(tmp_path / "keys", ALL)
    assert tuple(final.signing_key(alg).kid for alg in ALL) == kids.pop()
    names = sorted(p.name for p in (tmp_path / "keys").iterdir())
    expected = [LOCK_NAME, MANIFEST_NAME, "eddsa.pem", "es256.pem", "rs256.pem", "pairwise_salt"]
    assert names == sorted(expected)


# --------------------------------------------------------------------------- secrets


def test_secret_is_generated_once_and_reused(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path / "keys", "secret_key")
    path = tmp_path / "keys" / "secret_key"
    assert len(first) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    before = snapshot(path)
    assert load_or_create_secret(tmp_path / "keys", "secret_key") == first
    assert snapshot(path) == before
    assert base64.urlsafe_b64decode(path.read_bytes().strip() + b"=") == first
    other = load_or_create_secret(tmp_path / "keys", "pairwise_salt")
    assert other != first


def test_secret_length_is_respected(tmp_path: Path) -> None:
    assert len(load_or_create_secret(tmp_path, "token_key", nbytes=48)) == 48
    with pytest.raises(KeyFileError, match="holds 48 bytes, expected 32"):
        load_or_create_secret(tmp_path, "token_key", nbytes=32)


@pytest.mark.parametrize(
    "content",
    [b"", b"short\n", b"not base64 at all!!\n", b"\xff\xfe\x00", b"QUJD" * 40],
    ids=["empty", "short", "not-base64", "binary", "too-long"],
)
def test_corrupt_secret_is_an_error_and_is_left_alone(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "secret_key"
    path.write_bytes(content)
    before = snapshot(path)
    with pytest.raises(KeyFileError) as info:
        load_or_create_secret(tmp_path, "secret_key")
    assert str(info.value).startswith(f"{path}: ")
    assert snapshot(path) == before


@pytest.mark.parametrize("name", ["../escape", "rs256.pem", ".lock", "", "Secret", "a/b"])
def test_secret_names_are_plain_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        load_or_create_secret(tmp_path, name)


def test_secret_must_be_long_enough(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        load_or_create_secret(tmp_path, "secret_key", nbytes=8)
