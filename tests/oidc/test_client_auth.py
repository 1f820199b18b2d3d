"""private_key_jwt client authentication (OIDC Core §9, RFC 7523 §2.2/§3), over real HTTP.

A dedicated broker and emulator know clients whose public keys are registered by value
(``jwks``) or by reference (``jwks_uri``, served by a small local JWKS host). Assertions
are built by the test as a client would (PyJWT, or by hand for the forged ones); the
broker's own code is only used for the cache unit tests at the end.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from flask import Flask, Response, jsonify, redirect

from broker.oidc import client_auth
from broker.oidc.client_auth import ClientKeySets, JwksError, import_public_key_set
from tests.conftest import RP, Pair, start_pair
from tests.flows import authorize_url, follow_until, query_of
from tests.servers import ServedApp, serve

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


# --------------------------------------------------------------------------- client keys


@dataclass
class ClientKey:
    """A client's key pair and its public JWK (built with PyJWT, not the broker)."""

    kid: str
    private: PrivateKey
    alg: str

    @classmethod
    def rsa(cls, kid: str, alg: str = "RS256") -> ClientKey:
        return cls(kid, rsa.generate_private_key(public_exponent=65537, key_size=2048), alg)

    @classmethod
    def ec(cls, kid: str) -> ClientKey:
        return cls(kid, ec.generate_private_key(ec.SECP256R1()), "ES256")

    @classmethod
    def ed25519(cls, kid: str) -> ClientKey:
        return cls(kid, ed25519.Ed25519PrivateKey.generate(), "EdDSA")

    def public_jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        jwk: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def jwk_set(*keys: ClientKey) -> dict[str, Any]:
    return {"keys": [key.public_jwk() for key in keys]}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_for(client_id: str, audience: Any, **overrides: Any) -> dict[str, Any]:
    """OIDC Core §9: iss = sub = client_id, aud = token endpoint, exp, jti."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "iat": now,
        "exp": now + 120,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: ClientKey, claims: dict[str, Any], alg: str | None = None, **header: Any) -> str:
    headers = {"kid": key.kid, **header}
    return jwt.encode(claims, key.private, algorithm=alg or key.alg, headers=headers)


def forge(header: dict[str, Any], claims: dict[str, Any], secret: bytes | None) -> str:
    """A JWS built by hand: PyJWT refuses to HMAC with a public key, and so should brokers."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


# --------------------------------------------------------------------------- JWKS host


@dataclass
class JwksHost:
    """A client's web server publishing its JWKS, plus misbehaving variants."""

    documents: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Public JWKs the misbehaving routes embed, so that only their misbehaviour fails them.
    key: dict[str, dict[str, Any]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    stop_trickle: threading.Event = field(default_factory=threading.Event)
    served: ServedApp | None = None

    @property
    def url(self) -> str:
        assert self.served is not None
        return self.served.url

    def app(self) -> Flask:
        app = Flask("jwks-host")

        @app.get("/jwks/<name>")
        def document(name: str) -> Response:
            self.hits[name] += 1
            return jsonify(self.documents[name])

        @app.get("/big-chunked")
        def big_chunked() -> Response:
            self.hits["big-chunked"] += 1
            filler = ",".join(['"' + "x" * 1000 + '"'] * 200)  # ~200 KB, no Content-Length

            def body() -> Iterator[bytes]:
                # A usable key up front: only the size cap stands between it and success.
                yield b'{"keys": ' + json.dumps([self.key["uri"]]).encode() + b', "filler": ['
                for start in range(0, len(filler), 4096):
                    yield filler[start : start + 4096].encode()
                yield b"]}"

            return Response(body(), mimetype="application/json")

        @app.get("/big-declared")
        def big_declared() -> Response:
            self.hits["big-declared"] += 1
            document = {"keys": [self.key["uri"]], "pad": "x" * 200_000}
            return Response(json.dumps(document), mimetype="application/json")

        @app.get("/slow")
        def slow() -> Response:
            self.hits["slow"] += 1

            def body() -> Iterator[bytes]:
                # Whitespace is valid JSON padding: every read succeeds, and a usable key
                # set arrives only after ~9 s; only a whole-body deadline refuses it.
                for _ in range(45):
                    if self.stop_trickle.wait(0.2):
                        return
                    yield b" "
                yield json.dumps({"keys": [self.key["uri"]]}).encode()

            return Response(body(), mimetype="application/json")

        @app.get("/deep")
        def deep() -> Response:
            self.hits["deep"] += 1
            return Response("[" * 50_000, mimetype="application/json")  # under the size cap

        @app.get("/redirect")
        def moved() -> Any:
            self.hits["redirect"] += 1
            return redirect("/jwks/redirect-target")

        return app


# --------------------------------------------------------------------------- fixtures


@dataclass
class Setup:
    pair: Pair
    host: JwksHost
    keys: dict[str, ClientKey]

    @property
    def issuer(self) -> str:
        return self.pair.broker.issuer

    @property
    def token_url(self) -> str:
        return f"{self.issuer}/token"


URI_CLIENTS = {
    "pk-uri": "/jwks/pk-uri",
    "pk-rotate": "/jwks/pk-rotate",
    "pk-oct": "/jwks/pk-oct",
    "pk-big-chunked": "/big-chunked",
    "pk-big-declared": "/big-declared",
    "pk-slow": "/slow",
    "pk-redirect": "/redirect",
    "pk-deep": "/deep",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    keys = {
        "rsa": ClientKey.rsa("rsa-1"),
        "ps": ClientKey.rsa("ps-1", alg="PS256"),
        "ec": ClientKey.ec("ec-1"),
        "ed": ClientKey.ed25519("ed-1"),
        "uri": ClientKey.rsa("uri-1"),
        "rot-a": ClientKey.rsa("rot-a"),
        "rot-b": ClientKey.rsa("rot-b"),
    }
    host = JwksHost()
    host.documents = {
        "pk-uri": jwk_set(keys["uri"]),
        "pk-rotate": jwk_set(keys["rot-a"]),
        "redirect-target": jwk_set(keys["uri"]),
        "pk-oct": {"keys": [{"kty": "oct", "kid": "oct-1", "k": b64(b"s" * 32)}]},
        "rp-secret": jwk_set(keys["uri"]),
    }
    host.key = {"uri": keys["uri"].public_jwk()}
    host.served = serve(host.app())
    clients: list[dict[str, Any]] = [
        {
            # A secret-based client that also publishes keys: they must not make it a
            # private_key_jwt client.
            "client_id": "rp-secret",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/rp-secret/callback"],
            "jwks_uri": host.url + "/jwks/rp-secret",
        },
        {
            "client_id": "pk-value",
            "redirect_uris": [f"{RP}/pk-value/callback"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks": jwk_set(keys["rsa"], keys["ps"], keys["ec"], keys["ed"]),
        },
    ]
    clients += [
        {
            "client_id": client_id,
            "redirect_uris": [f"{RP}/{client_id}/callback"],
            "token_endpoint_auth_method": "private_key_jwt",
            "jwks_uri": host.url + path,
        }
        for client_id, path in URI_CLIENTS.items()
    ]
    pair = start_pair(tmp_path_factory.mktemp("pkjwt"), clients=clients)
    yield Setup(pair, host, keys)
    host.stop_trickle.set()
    pair.stop()
    host.served.stop()


# --------------------------------------------------------------------------- flow helpers


def s256(verifier: str) -> str:
    return b64(hashlib.sha256(verifier.encode()).digest())


@dataclass
class Code:
    client_id: str
    code: str
    verifier: str
    redirect_uri: str

    def form(self, **extra: str) -> dict[str, str]:
        return {
            "grant_type": "authorization_code",
            "code": self.code,
            "code_verifier": self.verifier,
            "redirect_uri": self.redirect_uri,
            **extra,
        }


def obtain_code(setup: Setup, client_id: str) -> Code:
    setup.pair.emulator.control(auto_login="zhangsan")
    verifier = secrets.token_urlsafe(48)
    redirect_uri = setup.pair.broker.clients[client_id]["redirect_uri"]
    url = authorize_url(
        setup.issuer,
        response_type="code",
        client_id=client_id,
        redirect_uri=redirect_uri,
        scope="openid",
        state="s",
        code_challenge=s256(verifier),
        code_challenge_method="S256",
    )
    response = follow_until(requests.Session(), url, redirect_uri)
    code = query_of(response.headers["Location"])["code"]
    return Code(client_id, code, verifier, redirect_uri)


def redeem(setup: Setup, code: Code, assertion: str, **extra: str) -> requests.Response:
    form = code.form(client_assertion_type=ASSERTION_TYPE, client_assertion=assertion, **extra)
    return requests.post(setup.token_url, data=form, timeout=30)


def assert_invalid_client(response: requests.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"


def redeem_with(setup: Setup, client_id: str, key: ClientKey, **claims: Any) -> requests.Response:
    code = obtain_code(setup, client_id)
    return redeem(setup, code, sign(key, claims_for(client_id, setup.token_url, **claims)))


# --------------------------------------------------------------------------- accepted


@pytest.mark.parametrize("name", ["rsa", "ps", "ec", "ed"])
def test_valid_assertion_redeems_code_for_id_token(setup: Setup, name: str) -> None:
    key = setup.keys[name]
    response = redeem_with(setup, "pk-value", key)
    assert response.status_code == 200, response.text
    id_token = response.json()["id_token"]
    signing_key = jwt.PyJWKClient(f"{setup.issuer}/jwks.json").get_signing_key_from_jwt(id_token)
    claims = jwt.decode(
        id_token,
        signing_key.key,
        algorithms=["RS256", "ES256", "EdDSA"],
        audience="pk-value",
        issuer=setup.issuer,
    )
    assert claims["sub"]


def test_issuer_is_accepted_as_audience(setup: Setup) -> None:
    code = obtain_code(setup, "pk-value")
    assertion = sign(setup.keys["rsa"], claims_for("pk-value", setup.issuer))
    assert redeem(setup, code, assertion).status_code == 200


def test_audience_list_naming_the_token_endpoint_is_accepted(setup: Setup) -> None:
    code = obtain_code(setup, "pk-value")
    claims = claims_for("pk-value", ["https://other.example", setup.token_url])
    assert redeem(setup, code, sign(setup.keys["rsa"], claims)).status_code == 200


def test_matching_client_id_parameter_is_accepted(setup: Setup) -> None:
    code = obtain_code(setup, "pk-value")
    assertion = sign(setup.keys["rsa"], claims_for("pk-value", setup.token_url))
    assert redeem(setup, code, assertion, client_id="pk-value").status_code == 200


def test_jwks_uri_keys_are_fetched_and_cached(setup: Setup) -> None:
    before = setup.host.hits["pk-uri"]
    for _ in range(2):
        response = redeem_with(setup, "pk-uri", setup.keys["uri"])
        assert response.status_code == 200, response.text
        assert "id_token" in response.json()
    assert setup.host.hits["pk-uri"] - before <= 1  # fetched at most once for both
    assert setup.host.hits["pk-uri"] >= 1


def test_key_rotation_at_jwks_uri_is_picked_up_on_unknown_kid(setup: Setup) -> None:
    host = setup.host
    assert redeem_with(setup, "pk-rotate", setup.keys["rot-a"]).status_code == 200
    assert redeem_with(setup, "pk-rotate", setup.keys["rot-a"]).status_code == 200
    assert host.hits["pk-rotate"] == 1

    host.documents["pk-rotate"] = jwk_set(setup.keys["rot-b"])
    response = redeem_with(setup, "pk-rotate", setup.keys["rot-b"])
    assert response.status_code == 200, response.text
    assert host.hits["pk-rotate"] == 2

    # The old key is gone now, and made-up kids do not make the broker refetch again.
    assert_invalid_client(redeem_with(setup, "pk-rotate", setup.keys["rot-a"]))
    stranger = ClientKey.rsa("rot-unknown")
    assert_invalid_client(redeem_with(setup, "pk-rotate", stranger))
    assert host.hits["pk-rotate"] == 2


# --------------------------------------------------------------------------- refused


def test_replayed_assertion_is_refused(setup: Setup) -> None:
    assertion = sign(setup.keys["rsa"], claims_for("pk-value", setup.token_url))
    assert redeem(setup, obtain_code(setup, "pk-value"), assertion).status_code == 200
    second = obtain_code(setup, "pk-value")
    assert_invalid_client(redeem(setup, second, assertion))
    # The code itself was fine: only the assertion was spent.
    fresh = sign(setup.keys["rsa"], claims_for("pk-value", setup.token_url))
    assert redeem(setup, second, fresh).status_code == 200


def test_same_jti_from_two_clients_is_not_a_replay(setup: Setup) -> None:
    jti = secrets.token_urlsafe(16)
    assert redeem_with(setup, "pk-value", setup.keys["rsa"], jti=jti).status_code == 200
    assert redeem_with(setup, "pk-uri", setup.keys["uri"], jti=jti).status_code == 200


@pytest.mark.parametrize(
    "audience",
    ["https://elsewhere.example/token", "{issuer}/userinfo", "{issuer}/token/", ["x", "y"]],
)
def test_wrong_audience_is_refused(setup: Setup, audience: Any) -> None:
    if isinstance(audience, str):
        audience = audience.format(issuer=setup.issuer)
    code = obtain_code(setup, "pk-value")
    assertion = sign(setup.keys["rsa"], claims_for("pk-value", audience))
    assert_invalid_client(redeem(setup, code, assertion))


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": int(time.time()) - 3600}, id="expired"),
        pytest.param({"exp": None}, id="no-exp"),
        pytest.param({"jti": None}, id="no-jti"),
        pytest.param({"jti": 12345}, id="jti-not-a-string"),
        pytest.param({"aud": None}, id="no-aud"),
        pytest.param({"iss": "rp-secret"}, id="iss-is-not-sub"),
        pytest.param({"exp": int(time.time()) + 86400}, id="exp-too-far-ahead"),
        pytest.param({"nbf": int(time.time()) + 3600}, id="not-yet-valid"),
    ],
)
def test_bad_claims_are_refused(setup: Setup, claims: dict[str, Any]) -> None:
    assert_invalid_client(redeem_with(setup, "pk-value", setup.keys["rsa"], **claims))


def test_expired_beyond_leeway_is_refused_but_within_is_not(setup: Setup) -> None:
    now = int(time.time())
    assert redeem_with(setup, "pk-value", setup.keys["rsa"], exp=now - 5).status_code == 200
    assert_invalid_client(redeem_with(setup, "pk-value", setup.keys["rsa"], exp=now - 120))


def test_assertion_signed_with_another_key_is_refused(setup: Setup) -> None:
    impostor = ClientKey.rsa("rsa-1")  # same kid, different key
    assert_invalid_client(redeem_with(setup, "pk-value", impostor))


def test_hs256_with_the_public_key_as_secret_is_refused(setup: Setup) -> None:
    key = setup.keys["rsa"]
    claims = claims_for("pk-value", setup.token_url)
    for secret in (key.public_pem(), json.dumps(key.public_jwk()).encode()):
        assertion = forge({"alg": "HS256", "typ": "JWT", "kid": key.kid}, claims, secret)
        assert_invalid_client(redeem(setup, obtain_code(setup, "pk-value"), assertion))


def test_hs256_with_a_symmetric_key_published_at_jwks_uri_is_refused(setup: Setup) -> None:
    claims = claims_for("pk-oct", setup.token_url)
    assertion = forge({"alg": "HS256", "kid": "oct-1"}, claims, b"s" * 32)
    assert_invalid_client(redeem(setup, obtain_code(setup, "pk-oct"), assertion))
    # Refused on the algorithm alone, before any key is looked up.
    assert setup.host.hits["pk-oct"] == 0


def test_alg_none_is_refused(setup: Setup) -> None:
    claims = claims_for("pk-value", setup.token_url)
    for alg in ("none", "None", "NONE"):
        assertion = forge({"alg": alg, "kid": "rsa-1"}, claims, None)
        assert_invalid_client(redeem(setup, obtain_code(setup, "pk-value"), assertion))


def test_key_of_the_wrong_type_for_alg_is_refused(setup: Setup) -> None:
    # An EC key's kid under an RS256 header: the RSA key must not be picked by accident.
    claims = claims_for("pk-value", setup.token_url)
    assertion = sign(setup.keys["rsa"], claims, kid="ec-1")
    assert_invalid_client(redeem(setup, obtain_code(setup, "pk-value"), assertion))


def test_missing_kid_with_several_registered_keys_is_refused(setup: Setup) -> None:
    # OIDC Core §10.1: with several keys the kid is required.
    claims = claims_for("pk-value", setup.token_url)
    assertion = jwt.encode(claims, setup.keys["rsa"].private, algorithm="RS256")
    assert_invalid_client(redeem(setup, obtain_code(setup, "pk-value"), assertion))


def test_hostile_kid_gets_invalid_client_not_500(setup: Setup) -> None:
    claims = claims_for("pk-value", setup.token_url)
    assertion = sign(setup.keys["rsa"], claims, kid='键"\\x')
    assert_invalid_client(redeem(setup, obtain_code(setup, "pk-value"), assertion))


def test_client_id_parameter_must_name_the_assertion_subject(setup: Setup) -> None:
    code = obtain_code(setup, "pk-value")
    assertion = sign(setup.keys["rsa"], claims_for("pk-value", setup.token_url))
    assert_invalid_client(redeem(setup, code, assertion, client_id="rp-secret"))


@pytest.mark.parametrize("client_id", ["pk-big-chunked", "pk-big-declared"])
def test_oversized_jwks_uri_gives_invalid_client(setup: Setup, client_id: str) -> None:
    name = URI_CLIENTS[client_id].lstrip("/")
    before = setup.host.hits[name]
    assert_invalid_client(redeem_with(setup, client_id, setup.keys["uri"]))
    assert setup.host.hits[name] == before + 1


def test_slow_jwks_uri_gives_invalid_client_within_the_deadline(setup: Setup) -> None:
    code = obtain_code(setup, "pk-slow")
    assertion = sign(setup.keys["uri"], claims_for("pk-slow", setup.token_url))
    started = time.monotonic()
    response = redeem(setup, code, assertion)
    elapsed = time.monotonic() - started
    assert_invalid_client(response)
    assert setup.host.hits["slow"] == 1
    # It trickled until the deadline (not refused for some other reason), and no longer.
    assert client_auth.JWKS_FETCH_TIMEOUT - 1 < elapsed < client_auth.JWKS_FETCH_TIMEOUT + 3


def test_deeply_nested_jwks_uri_gives_invalid_client_not_500(setup: Setup) -> None:
    assert_invalid_client(redeem_with(setup, "pk-deep", setup.keys["uri"]))
    assert setup.host.hits["deep"] == 1


def test_redirecting_jwks_uri_is_not_followed(setup: Setup) -> None:
    assert_invalid_client(redeem_with(setup, "pk-redirect", setup.keys["uri"]))
    assert setup.host.hits["redirect"] >= 1
    assert setup.host.hits["redirect-target"] == 0


# --------------------------------------------------------------------------- method binding


def test_secret_client_cannot_use_private_key_jwt(setup: Setup) -> None:
    # Signed with the key the client itself publishes: still not its registered method,
    # and refused before its jwks_uri is even fetched.
    code = obtain_code(setup, "rp-secret")
    assertion = sign(setup.keys["uri"], claims_for("rp-secret", setup.token_url))
    assert_invalid_client(redeem(setup, code, assertion))
    assert setup.host.hits["rp-secret"] == 0
    secret = setup.pair.broker.clients["rp-secret"]["client_secret"]
    ok = requests.post(setup.token_url, data=code.form(), auth=("rp-secret", secret), timeout=30)
    assert ok.status_code == 200, ok.text


def test_private_key_jwt_client_cannot_use_secrets_or_nothing(setup: Setup) -> None:
    code = obtain_code(setup, "pk-value")
    basic = requests.post(setup.token_url, data=code.form(), auth=("pk-value", "x"), timeout=30)
    assert_invalid_client(basic)
    post = requests.post(
        setup.token_url, data=code.form(client_id="pk-value", client_secret="x"), timeout=30
    )
    assert post.status_code in (400, 401) and post.json()["error"] == "invalid_client"
    public = requests.post(setup.token_url, data=code.form(client_id="pk-value"), timeout=30)
    assert public.status_code in (400, 401) and public.json()["error"] == "invalid_client"
    # None of that spent the code.
    assertion = sign(setup.keys["rsa"], claims_for("pk-value", setup.token_url))
    assert redeem(setup, code, assertion).status_code == 200


def test_assertion_for_unknown_client_is_refused(setup: Setup) -> None:
    code = obtain_code(setup, "pk-value")
    assertion = sign(setup.keys["rsa"], claims_for("nobody", setup.token_url))
    assert_invalid_client(redeem(setup, code, assertion))


# --------------------------------------------------------------------------- cache unit tests


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeFetch:
    def __init__(self, *documents: Any) -> None:
        self.documents = list(documents)
        self.calls = 0

    def __call__(self, uri: str) -> Any:
        self.calls += 1
        document = self.documents[min(self.calls, len(self.documents)) - 1]
        if isinstance(document, Exception):
            raise document
        return document


def uri_client(client_id: str = "c") -> Any:
    from broker.config import ClientConfig

    return ClientConfig(
        client_id=client_id,
        client_secret=None,
        redirect_uris=(f"{RP}/cb",),
        token_endpoint_auth_method="private_key_jwt",
        jwks_uri="https://client.example/jwks",
    )


def test_cache_refetches_after_its_lifetime() -> None:
    clock, fetch = FakeClock(), FakeFetch(jwk_set(ClientKey.ec("a")))
    cache = ClientKeySets(fetch=fetch, clock=clock, ttl=300)
    cache.get(uri_client(), "a")
    clock.now += 299
    cache.get(uri_client(), "a")
    assert fetch.calls == 1
    clock.now += 2
    cache.get(uri_client(), "a")
    assert fetch.calls == 2


def test_unknown_kid_refetch_is_rate_limited() -> None:
    clock, fetch = FakeClock(), FakeFetch(jwk_set(ClientKey.ec("a")))
    cache = ClientKeySets(fetch=fetch, clock=clock, refetch_interval=10)
    cache.get(uri_client(), "a")
    for _ in range(5):
        cache.get(uri_client(), "made-up")
    assert fetch.calls == 2
    clock.now += 11
    cache.get(uri_client(), "made-up")
    assert fetch.calls == 3


def test_failed_fetch_backs_off_then_retries() -> None:
    clock = FakeClock()
    fetch = FakeFetch(JwksError("down"), jwk_set(ClientKey.ec("a")))
    cache = ClientKeySets(fetch=fetch, clock=clock, failure_backoff=5)
    with pytest.raises(JwksError):
        cache.get(uri_client(), "a")
    with pytest.raises(JwksError):
        cache.get(uri_client(), "a")
    assert fetch.calls == 1
    clock.now += 6
    assert cache.get(uri_client(), "a").keys[0].kid == "a"


def test_caches_are_per_instance_and_per_client() -> None:
    fetch = FakeFetch(jwk_set(ClientKey.ec("a")))
    first, second = ClientKeySets(fetch=fetch), ClientKeySets(fetch=fetch)
    first.get(uri_client("c1"), "a")
    first.get(uri_client("c2"), "a")
    second.get(uri_client("c1"), "a")
    assert fetch.calls == 3


def test_symmetric_and_private_keys_are_not_imported() -> None:
    public = ClientKey.ec("pub").public_jwk()
    document = {
        "keys": [
            {"kty": "oct", "kid": "sym", "k": b64(b"k" * 32)},
            {**ClientKey.rsa("priv").public_jwk(), "d": "AQAB"},
            public,
        ]
    }
    assert [key.kid for key in import_public_key_set(document).keys] == ["pub"]
    with pytest.raises(JwksError):
        import_public_key_set({"keys": [document["keys"][0]]})
    with pytest.raises(JwksError):
        import_public_key_set(["not", "a", "set"])


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
def test_assertion_for_the_endpoint_called_is_accepted(setup: Setup, path: str) -> None:
    """Client libraries put the URL they call in ``aud`` (RFC 7523 §3)."""
    key = setup.keys["rsa"]
    token = redeem_with(setup, "pk-value", key).json()["access_token"]
    url = f"{setup.issuer}{path}"
    for audience, expected in ((url, 200), (f"{setup.issuer}/elsewhere", 401)):
        assertion = sign(key, claims_for("pk-value", audience))
        response = requests.post(
            url,
            timeout=30,
            data={
                "token": token,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": assertion,
            },
        )
        assert response.status_code == expected, (audience, response.text)
