"""Key material: generate, parse and wrap private keys for joserfc.

* **Parsed once.** Importing an RSA private key costs tens of milliseconds (cryptography
  checks the key), signing costs about one. So a key is parsed once into a ready joserfc
  key object (``RSAKey``/``ECKey``/``OKPKey``) that already carries its ``kid``, ``alg``
  and ``use``; nothing re-imports a PEM per request.
* **kid = RFC 7638 thumbprint.** Stable across restarts and instances, derivable by
  anyone holding the public key, and a check that stored metadata matches its key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, KeyParameters, OKPKey, RSAKey

SUPPORTED_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")
#: 2048 bits: the size every RP library accepts, and fast to generate on first start.
RSA_KEY_SIZE: Final = 2048
MIN_RSA_KEY_SIZE: Final = 2048

JoseKey = RSAKey | ECKey | OKPKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey

#: What each algorithm needs, in words, for error messages.
NEEDS: Final = {
    "RS256": f"an RSA private key of at least {MIN_RSA_KEY_SIZE} bits",
    "ES256": "an EC private key on curve P-256",
    "EdDSA": "an Ed25519 private key",
}


class UnusableKeyError(ValueError):
    """Bytes that are not a private key ``alg`` can sign with; the message is the problem
    alone, so the caller can say where the bytes came from (a file, a database row)."""


@dataclass(frozen=True)
class SigningKey:
    """One private signing key, ready to hand to joserfc (``kid``/``alg``/``use`` set).

    ``path`` is the PEM file in ``keys.storage: files`` mode, ``None`` for a key kept in
    the database.
    """

    alg: str
    kid: str
    key: JoseKey = field(repr=False)
    path: Path | None = None

    def public_jwk(self) -> dict[str, Any]:
        """The public JWK (RFC 7517 §4) with ``kid``, ``alg`` and ``use: sig``; no
        private members."""
        return dict(self.key.as_dict(private=False))

    def public_key(self) -> JoseKey:
        """The public half as a joserfc key with the same ``kid``/``alg``/``use``."""
        parameters: KeyParameters = {"kid": self.kid, "alg": self.alg, "use": "sig"}
        return _jose_key(self.alg, self.key.public_key, parameters)


def checked_algorithms(algorithms: Any) -> tuple[str, ...]:
    """The configured algorithms, deduplicated in order; refuses unknown ones."""
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


def generate(alg: str) -> PrivateKey:
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_SIZE)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


def to_pem(private: PrivateKey) -> bytes:
    """Unencrypted PKCS#8 PEM: what ``openssl genpkey`` writes and every tool reads."""
    return private.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


def parse_pem(data: bytes, alg: str) -> PrivateKey:
    """Parse a PEM private key and check it fits ``alg``; :class:`UnusableKeyError` if not."""
    if b"ENCRYPTED" in data:
        raise UnusableKeyError("is encrypted; the broker needs an unencrypted PKCS#8 PEM key")
    if b"PUBLIC KEY" in data or b"CERTIFICATE" in data:
        raise UnusableKeyError(f"holds a public key or certificate; {alg} needs {NEEDS[alg]}")
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise UnusableKeyError(
            f"is not a readable PEM private key (corrupt?); {alg} needs {NEEDS[alg]}"
        ) from None
    return _checked_key_type(alg, private)


def _checked_key_type(alg: str, private: object) -> PrivateKey:
    if alg == "RS256" and isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_KEY_SIZE:
            size = private.key_size
            raise UnusableKeyError(f"holds a {size}-bit RSA key; {alg} needs {NEEDS[alg]}")
        return private
    if (
        alg == "ES256"
        and isinstance(private, ec.EllipticCurvePrivateKey)
        and isinstance(private.curve, ec.SECP256R1)
    ):
        return private
    if alg == "EdDSA" and isinstance(private, ed25519.Ed25519PrivateKey):
        return private
    raise UnusableKeyError(f"holds {_describe(private)}, but {alg} needs {NEEDS[alg]}")


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


def thumbprint(alg: str, private: PrivateKey) -> str:
    """The RFC 7638 JWK thumbprint of the public key: the key's ``kid``."""
    return _jose_key(alg, private.public_key()).thumbprint()


def signing_key(alg: str, private: PrivateKey, path: Path | None = None) -> SigningKey:
    kid = thumbprint(alg, private)
    parameters: KeyParameters = {"kid": kid, "alg": alg, "use": "sig"}
    return SigningKey(alg=alg, kid=kid, key=_jose_key(alg, private, parameters), path=path)
