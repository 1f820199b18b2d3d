"""A bounded randomized HTTP fuzz of every endpoint, against the session broker (real HTTP).

Checklist DO-01/DO-02 (oversized and malformed input), IT-05 (hostile ``id_token_hint``),
UP-06 (upstream faults fail closed). Every answer must be below 500, carry no traceback
and no config secret, and the broker's memory must stay bounded.

``FUZZ_SEED=<n>`` replays a run (the seed is in every failure message); ``FUZZ_REQUESTS``
and ``FUZZ_SECONDS`` change the budget (default: 1500 requests, at most 60 s). A longer
run is ``python bench/fuzz.py --minutes 10``. The 500s the fuzz found are pinned at the
end as plain regression tests. A new one that cannot be fixed at once goes there as
``xfail(strict=True)`` and into ``engine.KNOWN_ISSUES``, so the random run reports it as
known instead of failing on it again.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import RP, Broker, Emulator, Pair, client_definitions, start_pair
from tests.fuzz import engine
from tests.fuzz.engine import FuzzRequest, Material, b64, compact_jws, hs256_with

SEED = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "1500"))
SECONDS = float(os.environ.get("FUZZ_SECONDS", "60"))
#: Generous: RSS is measured with glibc's mmap threshold pinned (engine.steady_malloc),
#: so this catches leaks, not allocator high-water marks.
RSS_BOUND = 200 << 20
HINT_RSS_BOUND = 50 << 20  # checklist IT-05
#: Checklist IT-05 asks for an answer within 1 s; this asserts a bound exists, with margin.
SLOW = 5.0


@pytest.fixture
def material(broker: Broker, emulator: Emulator) -> Material:
    return engine.gather(broker, emulator)


def test_random_requests_get_clean_answers(
    broker: Broker, emulator: Emulator, material: Material
) -> None:
    report = engine.run(
        material, seed=SEED, max_requests=REQUESTS, max_seconds=SECONDS, emulator=emulator
    )
    print(report.summary())
    assert report.failure_count == 0, report.summary()
    assert report.rss_growth < RSS_BOUND, report.summary()
    # Not vacuous: the budget went on requests, and they reached the application.
    assert report.sent >= min(REQUESTS, 300), report.summary()
    assert {200, 302, 400, 401, 404, 405} <= set(report.statuses), report.summary()


# --------------------------------------------------------------------------- id_token_hint


def raw_request(
    material: Material,
    method: str,
    path: str,
    params: list[tuple[str, str]],
    headers: tuple[tuple[bytes, bytes], ...] = (),
    host: bytes | None = None,
) -> FuzzRequest:
    """A well-formed request (form body for POST), sent with engine.send."""
    host = host if host is not None else f"{material.host}:{material.port}".encode()
    all_headers = [(b"Host", host), (b"Connection", b"close"), *headers]
    query = urlencode(params).encode()
    target = (material.prefix + path).encode()
    if method == "GET":
        return FuzzRequest(0, method, target + b"?" + query, all_headers)
    all_headers.append((b"Content-Type", b"application/x-www-form-urlencoded"))
    return FuzzRequest(0, method, target, all_headers, body=query)


def hint_vectors(material: Material) -> dict[str, str]:
    """Forged, malformed and oversized hints (checklist IT-04 a-e, IT-05)."""
    now = int(time.time())
    claims = {"iss": material.issuer, "sub": "someone-else", "aud": "rp-refresh",
              "exp": now + 600, "iat": now}  # fmt: skip
    head, body, signature = material.id_token.split(".")
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    big = "A" * 5_000_000
    return {
        "alg-none": compact_jws({"alg": "none"}, claims),
        "hs256-public-pem": hs256_with(material.public_pem, {"alg": "HS256"}, claims),
        "hs256-public-der": hs256_with(material.public_der, {"alg": "HS256"}, claims),
        "hs256-public-jwk": hs256_with(material.public_jwk.encode(), {"alg": "HS256"}, claims),
        "embedded-jwk": jwt.encode(claims, attacker, "RS256", {"jwk": attacker_jwk}),
        "jku": jwt.encode(claims, attacker, "RS256", {"jku": "http://127.0.0.1:9/jwks"}),
        "unknown-kid": jwt.encode(claims, attacker, "RS256", {"kid": "not-ours"}),
        "our-kid-attacker-key": jwt.encode(claims, attacker, "RS256", {"kid": material.kid}),
        "tampered-payload": f"{head}.{b64(json.dumps(claims))}.{signature}",
        "stripped-signature": f"{head}.{body}.",
        "garbage-segments": "a.b.c",
        "random-segments": ".".join(b64(os.urandom(n)) for n in (30, 200, 256)),
        "header-5mb": f"{big}.{body}.{signature}",
        "signature-5mb": f"{head}.{body}.{big}",
        "payload-200kb": f"{head}.{'A' * 200_000}.{signature}",
        "10000-dots": "." * 10_000,
        "jwe-zip-def": ".".join(
            [b64(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM", "zip": "DEF"}))]
            + [b64(os.urandom(32)) for _ in range(4)]
        ),
    }


HINT_VECTORS = (
    "alg-none", "hs256-public-pem", "hs256-public-der", "hs256-public-jwk", "embedded-jwk", "jku",
    "unknown-kid", "our-kid-attacker-key", "tampered-payload", "stripped-signature",
    "garbage-segments", "random-segments", "header-5mb", "signature-5mb", "payload-200kb",
    "10000-dots", "jwe-zip-def",
)  # fmt: skip
HINT_ENDPOINTS = (("GET", "/authorize"), ("POST", "/authorize"), ("GET", "/logout"),
                  ("POST", "/logout"))  # fmt: skip


def hint_request(material: Material, method: str, path: str, hint: str) -> FuzzRequest:
    if path == "/authorize":
        redirect_uri = material.clients["rp-refresh"][1]
        params = [("response_type", "code"), ("client_id", "rp-refresh"),
                  ("redirect_uri", redirect_uri), ("scope", "openid"), ("state", "s-1"),
                  ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
                  ("code_challenge_method", "S256"), ("prompt", "none"),
                  ("id_token_hint", hint)]  # fmt: skip
    else:
        params = [("id_token_hint", hint), ("client_id", "rp-refresh"), ("state", "bye"),
                  ("post_logout_redirect_uri", material.post_logout_uri)]  # fmt: skip
    return raw_request(material, method, path, params)


@pytest.fixture(scope="module")
def hint_material(broker: Broker, emulator: Emulator) -> tuple[Material, dict[str, str]]:
    material = engine.gather(broker, emulator)
    return material, hint_vectors(material)


@pytest.mark.parametrize(("method", "path"), HINT_ENDPOINTS)
@pytest.mark.parametrize("vector", HINT_VECTORS)
def test_hostile_hint_is_refused_quickly(
    hint_material: tuple[Material, dict[str, str]], method: str, path: str, vector: str
) -> None:
    """IT-04/IT-05: no code, no post-logout redirect, no 5xx, within a bound. Without a
    session /authorize?prompt=none can only fail (login_required or invalid_request)."""
    material, vectors = hint_material
    request = hint_request(material, method, path, vectors[vector])
    outcome = engine.send(material, request)
    assert engine.problems(outcome, material.forbidden) == []
    assert outcome.elapsed < SLOW
    if outcome.status is None:  # an oversized head the server dropped: a refusal
        return
    assert outcome.status < 500
    if path == "/logout":
        assert 400 <= outcome.status < 500 and not outcome.location
        return
    if outcome.status in (302, 303):  # an error redirect (303 after a POST)
        redirect_uri = material.clients["rp-refresh"][1]
        assert outcome.location.startswith(redirect_uri + "?")
        query = parse_qs(urlsplit(outcome.location).query)
        assert "error" in query and "code" not in query
    else:
        assert 400 <= outcome.status < 500


def test_hostile_hints_leave_memory_bounded(
    hint_material: tuple[Material, dict[str, str]],
) -> None:
    """IT-05: RSS growth under 50 MB after every vector at every endpoint, three times."""
    material, vectors = hint_material
    engine.steady_malloc()
    engine.trim_malloc()
    start = engine.rss_bytes()
    peak = start
    for _ in range(3):
        for method, path in HINT_ENDPOINTS:
            for vector in HINT_VECTORS:
                engine.send(material, hint_request(material, method, path, vectors[vector]))
            peak = max(peak, engine.rss_bytes())
    engine.trim_malloc()
    growth = max(peak, engine.rss_bytes()) - start
    assert growth < HINT_RSS_BOUND, f"RSS grew {growth >> 20} MiB"


# --------------------------------------------------------------------------- found by fuzzing
# Each of these answered 500 when the fuzz found it (then fixed in the product).

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CRIT_HINT = ".".join((b64(b'{"alg":"RS256","crit":5}'), b64(b"{}"), b64(b"x")))


def test_logout_hint_with_a_non_list_crit_is_refused(broker: Broker) -> None:
    """Was a 500: joserfc raises TypeError for crit=5 and Authlib catches JoseError only."""
    material = engine.gather(broker, None)
    for method in ("GET", "POST"):
        request = raw_request(material, method, "/logout", [("id_token_hint", CRIT_HINT)])
        outcome = engine.send(material, request)
        assert outcome.status == 400 and not outcome.location


@pytest.fixture(scope="module")
def pkjwt_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A broker with one private_key_jwt client (the session broker has none)."""
    from joserfc.jwk import RSAKey

    client = {
        "client_id": "rp-pkjwt",
        "token_endpoint_auth_method": "private_key_jwt",
        "redirect_uris": [f"{RP}/pkjwt/callback"],
        "jwks": {"keys": [RSAKey.generate_key(2048).as_dict(private=False)]},
    }
    pair: Pair = start_pair(
        tmp_path_factory.mktemp("pkjwt"), clients=[*client_definitions(), client]
    )
    yield pair
    pair.stop()


def test_client_assertion_with_a_non_list_crit_is_refused(pkjwt_pair: Pair) -> None:
    """Was a 500 at /token, /revoke and /introspect for a private_key_jwt client_id."""
    broker = pkjwt_pair.broker
    material = engine.gather(broker, None)
    claims = {"iss": "rp-pkjwt", "sub": "rp-pkjwt", "aud": f"{broker.issuer}/token",
              "exp": int(time.time()) + 60, "jti": "j-1"}  # fmt: skip
    assertion = compact_jws({"alg": "RS256", "crit": 5}, claims, b"x")
    for path in ("/token", "/revoke", "/introspect"):
        params = [("grant_type", "authorization_code"), ("code", "x"), ("token", "x"),
                  ("client_assertion_type", JWT_BEARER),
                  ("client_assertion", assertion)]  # fmt: skip
        outcome = engine.send(material, raw_request(material, "POST", path, params))
        assert outcome.status == 401, path


def test_deeply_nested_claims_parameter_is_refused(broker: Broker) -> None:
    """Was a 500: json.loads' RecursionError on 1000 brackets (under the length cap)."""
    material = engine.gather(broker, None)
    params = [("response_type", "code"), ("client_id", "rp-basic"),
              ("redirect_uri", broker.clients["rp-basic"]["redirect_uri"]), ("scope", "openid"),
              ("state", "s-1"), ("code_challenge", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"),
              ("code_challenge_method", "S256"), ("claims", "[" * 1000)]  # fmt: skip
    outcome = engine.send(material, raw_request(material, "GET", "/authorize", params))
    assert outcome.status in (302, 303)
    assert parse_qs(urlsplit(outcome.location).query)["error"] == ["invalid_request"]


def test_foreign_host_header_is_refused_not_a_server_error(broker: Broker) -> None:
    """Found by the fuzz (Authlib's InsecureTransportError: 500 for 'Host: evil.test' on a
    loopback issuer); the broker now refuses foreign hosts (checklist UP-13)."""
    material = engine.gather(broker, None)
    for method, path in (("POST", "/token"), ("GET", "/authorize"), ("GET", "/userinfo")):
        for host in (b"evil.test", b"", b"127.0.0.1:1"):
            request = raw_request(material, method, path, [("client_id", "rp-basic")], host=host)
            outcome = engine.send(material, request)
            assert outcome.status is not None and 400 <= outcome.status < 500, (path, host)
            assert engine.problems(outcome, material.forbidden) == []


def test_overlong_host_label_is_a_bad_request(broker: Broker) -> None:
    """Found by the fuzz (Werkzeug's BadHost, then url_for failing in the error page: 500
    for a Host label over 63 characters)."""
    material = engine.gather(broker, None)
    for path in ("/authorize", "/nope", "/static/broker.css", "/healthz"):
        for host in (b"a" * 64, b"a" * 64 + b".example", b"a..b"):
            outcome = engine.send(material, raw_request(material, "GET", path, [], host=host))
            assert outcome.status is not None and outcome.status < 500, (path, host)
            assert engine.problems(outcome, material.forbidden) == []
