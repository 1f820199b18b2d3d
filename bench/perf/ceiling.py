"""The ceiling: what one core can sign, and what the bare server answers.

The signing loop runs in this process on one thread, with the broker's own key objects
(``broker.keys.material``: a key parsed once, as the key ring holds it) and the claims
of a typical ID token. Two rates per algorithm:

* ``sign``: the signature alone (cryptography/OpenSSL), the part no implementation
  can avoid; this is what the ceiling counts;
* ``jws``: the whole compact JWS as the broker makes it (``joserfc.jwt.encode``:
  JSON, base64url, the signature), for comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from joserfc import jwt

from broker.keys.material import generate, signing_key

#: Claims of an ID token as the broker issues one for the ``profile`` scope.
ID_TOKEN_CLAIMS: dict[str, Any] = {
    "iss": "https://login.example.com",
    "sub": "A3B2C1D4E5F60718293A4B5C6D7E8F90",
    "aud": ["rp-rs256"],
    "iat": 1_700_000_000,
    "exp": 1_700_003_600,
    "auth_time": 1_700_000_000,
    "nonce": "n-0S6_WzA2Mj",
    "at_hash": "77QmUPtjPfzWtF2AnpK9RQ",
    "sid": "08a5019c-17e1-4977-8f42-65a12843ea02",
    "name": "张三",
    "nickname": "张三",
    "picture": "https://thirdqq.qlogo.cn/ek_qqapp/AQWBsdTAaibCe3GNSib0C4Q/100",
}


def _rate(operation: Callable[[], object], seconds: float) -> float:
    """Operations per CPU second of this thread, over at least ``seconds`` of CPU."""
    operation()  # warm
    count, began = 0, time.thread_time()
    while True:
        for _ in range(20):
            operation()
        count += 20
        spent = time.thread_time() - began
        if spent >= seconds:
            return count / spent


def signing_rates(alg: str, seconds: float = 2.0) -> dict[str, float]:
    """``{"sign": ..., "jws": ...}`` per second on one core for ``alg``."""
    key = signing_key(alg, generate(alg))
    header = {"alg": alg, "kid": key.kid, "typ": "JWT"}
    signing_input = jwt.encode(header, ID_TOKEN_CLAIMS, key.key, algorithms=[alg])
    message = signing_input.rsplit(".", 1)[0].encode()
    native: Any = key.key.private_key
    if alg == "RS256":
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        def sign() -> object:
            return native.sign(message, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        def sign() -> object:
            return native.sign(message, ec.ECDSA(hashes.SHA256()))
    else:

        def sign() -> object:
            return native.sign(message)

    def jws() -> object:
        return jwt.encode(header, ID_TOKEN_CLAIMS, key.key, algorithms=[alg])

    return {"sign": _rate(sign, seconds), "jws": _rate(jws, seconds)}
