"""Per-client access token format: opaque by default, RFC 9068 JWTs on request.

The broker and emulator here are dedicated (the session broker's clients are all
opaque). Tokens are checked the way a resource server would: PyJWT against the
published ``/jwks.json``, never with the broker's own code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.conftest import RP, Pair, start_pair
from tests.flows import follow_until
from tests.oidc.test_flow import RelyingParty, at_hash

#: RFC 9068 §2.2: claims every JWT access token from the broker carries.
REQUIRED_CLAIMS = ["iss", "exp", "aud", "sub", "client_id", "iat", "jti", "scope", "auth_time"]


def client(client_id: str, **options: Any) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "client_secret": secrets.token_urlsafe(24),
        "redirect_uris": [f"{RP}/{client_id}/callback"],
        **options,
    }


def clients() -> list[dict[str, Any]]:
    """A pairwise JWT client (so a ``sub`` that is just the OpenID shows up as wrong),
    JWT clients for the other two algorithms, and an opaque client beside them."""
    return [
        client(
            "rp-jwt",
            access_token_format="jwt",
            subject="pairwise",
            grant_types=["authorization_code", "refresh_token"],
        ),
        client("rp-jwt-es256", access_token_format="jwt", id_token_signed_response_alg="ES256"),
        client("rp-jwt-eddsa", access_token_format="jwt", id_token_signed_response_alg="EdDSA"),
        client("rp-opaque"),
    ]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started = start_pair(tmp_path_factory.mktemp("access-tokens"), clients=clients())
    yield started
    started.stop()


def login(pair: Pair, client_id: str, user: str = "zhangsan") -> dict[str, Any]:
    """A full login through broker and emulator as a standard relying party."""
    return RelyingParty(pair.broker, client_id).login(pair.emulator, user=user)


def verify_access_token(pair: Pair, token: str, client_id: str) -> tuple[dict[str, Any], Any]:
    """Verify like an RFC 9068 §4 resource server: key by ``kid`` from the published JWKS,
    ``iss`` and ``aud`` checked, every broker claim required. Returns (header, claims)."""
    jwks = requests.get(pair.broker.metadata()["jwks_uri"], timeout=5).json()
    header = jwt.get_unverified_header(token)
    key = jwt.PyJWKSet.from_dict(jwks)[header["kid"]]
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[key.algorithm_name],
        audience=client_id,
        issuer=pair.broker.issuer,
        options={"require": REQUIRED_CLAIMS},
    )
    return header, claims


def token_endpoint(pair: Pair, path: str, client_id: str, **form: str) -> requests.Response:
    """POST to /revoke, /introspect or /token as the client (client_secret_basic)."""
    secret = pair.broker.clients[client_id]["client_secret"]
    return requests.post(
        f"{pair.broker.issuer}{path}", data=form, auth=(client_id, secret), timeout=10
    )


def userinfo(pair: Pair, token: str) -> requests.Response:
    return requests.get(
        f"{pair.broker.issuer}/userinfo", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )


def tamper(token: str, **changes: Any) -> str:
    """The same header and signature over a changed payload."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def login_then_redeem_later(pair: Pair, client_id: str, pause: float) -> dict[str, Any]:
    """Like :func:`login`, but the code is redeemed ``pause`` seconds after the QQ login,
    so a token that stamps the issue time as ``auth_time`` is told apart."""
    rp = RelyingParty(pair.broker, client_id)
    pair.emulator.control(auto_login="zhangsan")
    url, _ = rp.authorization_url()
    location = follow_until(requests.Session(), url, rp.redirect_uri).headers["Location"]
    time.sleep(pause)
    token = rp.session.fetch_token(
        rp.meta["token_endpoint"], authorization_response=location, code_verifier=rp.verifier
    )
    claims, header = rp.verify(token["id_token"])
    return {"token": token, "claims": claims, "header": header}


def test_jwt_client_gets_an_rfc9068_access_token(pair: Pair) -> None:
    before = int(time.time())
    result = login_then_redeem_later(pair, "rp-jwt", pause=1.1)
    after = int(time.time())
    token = result["token"]
    header, claims = verify_access_token(pair, token["access_token"], "rp-jwt")
    id_token = result["claims"]
    assert header == {"alg": "RS256", "kid": header["kid"], "typ": "at+jwt"}  # §2.1
    assert claims["iss"] == pair.broker.issuer
    assert claims["aud"] == claims["client_id"] == "rp-jwt"  # §3: the client as audience
    # The subject this client sees: pairwise, so neither the OpenID nor another client's.
    assert claims["sub"] == id_token["sub"] != pair.emulator.user("zhangsan")["openid"]
    assert set(claims["scope"].split()) == {"openid", "profile"} == set(token["scope"].split())
    assert before - 1 <= claims["iat"] <= after + 1
    assert claims["exp"] - claims["iat"] == pair.broker.config.lifetimes.access_token
    assert claims["exp"] - claims["iat"] == token["expires_in"]
    assert claims["auth_time"] == id_token["auth_time"] < claims["iat"]  # the QQ login time
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) >= 16  # >= 128 bits
    # The ID token's at_hash covers the JWT value the client actually received.
    assert id_token["at_hash"] == at_hash(token["access_token"], result["header"]["alg"])


def test_jwt_access_token_works_at_userinfo(pair: Pair) -> None:
    result = login(pair, "rp-jwt", user="lisi")
    response = userinfo(pair, result["token"]["access_token"])
    assert response.status_code == 200
    assert response.json()["sub"] == result["claims"]["sub"]
    assert response.json()["nickname"] == result["userinfo"]["nickname"]


def test_each_jwt_access_token_has_its_own_jti(pair: Pair) -> None:
    tokens = [login(pair, "rp-jwt")["token"]["access_token"] for _ in range(2)]
    jtis = {verify_access_token(pair, token, "rp-jwt")[1]["jti"] for token in tokens}
    assert len(jtis) == 2


@pytest.mark.parametrize(
    ("client_id", "alg"), [("rp-jwt-es256", "ES256"), ("rp-jwt-eddsa", "EdDSA")]
)
def test_jwt_access_token_uses_the_clients_algorithm(pair: Pair, client_id: str, alg: str) -> None:
    """EdDSA included: Authlib's RFC 9068 generator cannot sign it (authlib-notes pitfall 12)."""
    result = login(pair, client_id)
    header, claims = verify_access_token(pair, result["token"]["access_token"], client_id)
    published = requests.get(f"{pair.broker.issuer}/jwks.json", timeout=5).json()["keys"]
    assert header["alg"] == alg == result["header"]["alg"]
    assert header["kid"] == next(k["kid"] for k in published if k["alg"] == alg)
    assert header["typ"] == "at+jwt"
    assert claims["sub"] == result["claims"]["sub"] == pair.emulator.user("zhangsan")["openid"]


def test_opaque_client_still_gets_an_opaque_token(pair: Pair) -> None:
    result = login(pair, "rp-opaque")
    token = result["token"]["access_token"]
    with pytest.raises(jwt.DecodeError):
        jwt.get_unverified_header(token)
    assert "." not in token and len(token) >= 43  # 256 random bits, base64url
    assert userinfo(pair, token).status_code == 200
    assert result["userinfo"]["sub"] == result["claims"]["sub"]


def test_tampered_jwt_is_refused_at_userinfo(pair: Pair) -> None:
    token = login(pair, "rp-jwt")["token"]["access_token"]
    other = login(pair, "rp-jwt", user="lisi")["claims"]["sub"]
    forged = tamper(token, sub=other)
    with pytest.raises(jwt.InvalidSignatureError):  # the forgery is a real one...
        verify_access_token(pair, forged, "rp-jwt")
    assert userinfo(pair, token).status_code == 200  # ...of a token that works,
    refused = userinfo(pair, forged)
    assert refused.status_code == 401  # ...and the broker does not take it.
    assert "invalid_token" in refused.headers.get("WWW-Authenticate", "")


def test_jwt_is_stored_by_digest_only(pair: Pair) -> None:
    """Like an opaque token: the database holds SHA-256(token), never the token, so a
    leaked database cannot be replayed (storage/base.py)."""
    token = login(pair, "rp-jwt")["token"]["access_token"]
    database = Path(pair.broker.config.storage.url.removeprefix("sqlite:///"))
    with closing(sqlite3.connect(database)) as connection:
        dump = "\n".join(connection.iterdump())
    assert hashlib.sha256(token.encode()).hexdigest() in dump
    assert token.split(".")[2] not in dump  # not even the signature


def test_no_key_is_imported_per_jwt_access_token(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys are parsed once at start (an RSA import costs ~50 ms, signing ~1 ms): the broker
    runs in this process, so count the joserfc key objects built while tokens are issued."""
    from joserfc import jwk

    built: list[str] = []
    for cls in (jwk.RSAKey, jwk.ECKey, jwk.OKPKey):
        original = cls.__init__

        def counting(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            built.append(type(self).__name__)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    for client_id in ("rp-jwt", "rp-jwt-es256", "rp-jwt-eddsa"):
        token = login(pair, client_id)["token"]["access_token"]
        assert built == [], f"{client_id}: keys built per request: {built}"
        assert jwt.get_unverified_header(token)["typ"] == "at+jwt"


def test_jwt_access_token_introspects_and_revokes_like_an_opaque_one(pair: Pair) -> None:
    """Revocation and introspection find tokens by digest, so the format makes no
    difference to them; a revoked JWT is dead at the broker although its signature
    still verifies (RFC 9068 §5: offline validators see it until ``exp``)."""
    token = login(pair, "rp-jwt")["token"]["access_token"]
    _, claims = verify_access_token(pair, token, "rp-jwt")
    active = token_endpoint(pair, "/introspect", "rp-jwt", token=token).json()
    assert active["active"] is True
    assert (active["sub"], active["client_id"]) == (claims["sub"], "rp-jwt")
    assert token_endpoint(pair, "/revoke", "rp-jwt", token=token).status_code == 200
    assert token_endpoint(pair, "/introspect", "rp-jwt", token=token).json() == {"active": False}
    assert userinfo(pair, token).status_code == 401


def test_refreshed_jwt_access_token_keeps_the_login_time(pair: Pair) -> None:
    """The refresh grant goes through the same factory: a new JWT (new jti, later iat),
    same subject, and ``auth_time`` still the QQ login (RFC 9068 §2.2.1), not the refresh."""
    first = RelyingParty(pair.broker, "rp-jwt", scope="openid offline_access").login(pair.emulator)
    time.sleep(1.1)
    response = token_endpoint(
        pair,
        "/token",
        "rp-jwt",
        grant_type="refresh_token",
        refresh_token=first["token"]["refresh_token"],
    )
    assert response.status_code == 200, response.text
    _, old = verify_access_token(pair, first["token"]["access_token"], "rp-jwt")
    header, new = verify_access_token(pair, response.json()["access_token"], "rp-jwt")
    assert header["typ"] == "at+jwt"
    assert new["sub"] == old["sub"] and new["auth_time"] == old["auth_time"]
    assert new["iat"] > old["iat"] and new["jti"] != old["jti"]
    assert userinfo(pair, response.json()["access_token"]).status_code == 200
