"""The whole flow, driven by an independent OIDC client (Authlib's requests client + PyJWT).

The relying party here knows nothing of QQ: it reads discovery, sends an
authorization request with PKCE and a nonce, redeems the code, verifies the
ID token against the published JWKS, and calls userinfo.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session

from tests.conftest import Broker, Emulator, start_pair
from tests.flows import follow_until, query_of


def at_hash(access_token: str, alg: str) -> str:
    """OIDC Core §3.1.3.6, computed independently of the broker."""
    hash_fn = {"RS256": hashlib.sha256, "ES256": hashlib.sha256, "EdDSA": hashlib.sha512}[alg]
    digest = hash_fn(access_token.encode()).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()


class RelyingParty:
    """A standard RP: Authlib's OAuth2 client for the protocol, PyJWT for the ID token."""

    def __init__(self, broker: Broker, client_id: str, scope: str = "openid profile") -> None:
        self.broker = broker
        self.client_id = client_id
        info = broker.clients[client_id]
        self.redirect_uri = info["redirect_uri"]
        self.meta = broker.metadata()
        auth_method = {
            "rp-post": "client_secret_post",
            "rp-public": "none",
        }.get(client_id, "client_secret_basic")
        self.session = OAuth2Session(
            client_id,
            info["client_secret"],
            scope=scope,
            redirect_uri=self.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method=auth_method,
        )
        self.verifier = secrets.token_urlsafe(48)
        self.nonce = secrets.token_urlsafe(16)

    def authorization_url(self, **extra: Any) -> tuple[str, str]:
        url, state = self.session.create_authorization_url(
            self.meta["authorization_endpoint"],
            code_verifier=self.verifier,
            nonce=self.nonce,
            **extra,
        )
        return str(url), str(state)

    def login(
        self,
        emulator: Emulator,
        user: str = "zhangsan",
        browser: requests.Session | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Log ``user`` in through broker and emulator; return tokens, claims and userinfo.

        Pass ``browser`` to reuse a cookie jar (single sign-on); ``extra`` goes into
        the authorization request (prompt, max_age, ...).
        """
        emulator.control(auto_login=user)
        url, state = self.authorization_url(**extra)
        response = follow_until(browser or requests.Session(), url, self.redirect_uri)
        location = response.headers["Location"]
        params = query_of(location)
        assert params.get("state") == state and "code" in params, params
        assert params["iss"] == self.broker.issuer  # RFC 9207
        token = self.session.fetch_token(
            self.meta["token_endpoint"],
            authorization_response=location,
            code_verifier=self.verifier,
        )
        claims, header = self.verify(token["id_token"])
        userinfo = self.session.get(self.meta["userinfo_endpoint"]).json()
        return {"token": token, "claims": claims, "header": header, "userinfo": userinfo}

    def verify(self, id_token: str) -> tuple[dict[str, Any], dict[str, Any]]:
        jwks = jwt.PyJWKClient(self.meta["jwks_uri"])
        key = jwks.get_signing_key_from_jwt(id_token)
        claims = jwt.decode(
            id_token,
            key.key,
            algorithms=self.meta["id_token_signing_alg_values_supported"],
            audience=self.client_id,
            issuer=self.meta["issuer"],
        )
        return claims, jwt.get_unverified_header(id_token)


def test_discovery_document_describes_the_provider(broker: Broker) -> None:
    response = requests.get(f"{broker.issuer}/.well-known/openid-configuration", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    meta = response.json()
    assert meta["issuer"] == broker.issuer
    for name, path in [
        ("authorization_endpoint", "/authorize"),
        ("token_endpoint", "/token"),
        ("userinfo_endpoint", "/userinfo"),
        ("jwks_uri", "/jwks.json"),
    ]:
        assert meta[name] == broker.issuer + path
    assert meta["response_types_supported"] == ["code"]
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert meta["authorization_response_iss_parameter_supported"] is True
    assert "none" not in meta["id_token_signing_alg_values_supported"]
    assert set(meta["id_token_signing_alg_values_supported"]) == {"RS256", "ES256", "EdDSA"}
    assert set(meta["grant_types_supported"]) <= {"authorization_code", "refresh_token"}


def test_jwks_publishes_public_keys_only(broker: Broker) -> None:
    keys = requests.get(f"{broker.issuer}/jwks.json", timeout=5).json()["keys"]
    assert {k["alg"] for k in keys} == {"RS256", "ES256", "EdDSA"}
    assert len({k["kid"] for k in keys}) == len(keys)
    for key in keys:
        assert not {"d", "p", "q", "dp", "dq", "qi", "oth", "k"} & set(key)
        assert key["use"] == "sig"


@pytest.mark.parametrize("client_id", ["rp-basic", "rp-post", "rp-public"])
def test_login_yields_a_verified_id_token_with_the_qq_openid(
    broker: Broker, emulator: Emulator, client_id: str
) -> None:
    rp = RelyingParty(broker, client_id)
    before = int(time.time())
    result = rp.login(emulator, user="zhangsan")
    claims, header = result["claims"], result["header"]
    expected = emulator.user("zhangsan")
    assert claims["sub"] == expected["openid"]
    assert claims["iss"] == broker.issuer
    assert claims["aud"] in (client_id, [client_id])
    assert claims["nonce"] == rp.nonce
    assert before - 2 <= claims["auth_time"] <= claims["iat"] <= int(time.time()) + 2
    assert claims["exp"] - claims["iat"] == broker.config.lifetimes.id_token
    assert claims["at_hash"] == at_hash(result["token"]["access_token"], header["alg"])
    assert header["alg"] == "RS256" and header["kid"]
    # DESIGN.md claims: profile from get_user_info; the avatar upgraded to https.
    assert claims["name"] == claims["nickname"] == "张三"
    assert claims["picture"].startswith("https://thirdqq.qlogo.cn/")
    for absent in ("email", "email_verified", "gender", "birthdate", "address", "qq_openid"):
        assert absent not in claims
    assert result["userinfo"]["sub"] == claims["sub"]
    assert result["userinfo"]["nickname"] == "张三"


def test_token_response_has_no_store_headers_and_bearer_type(
    broker: Broker, emulator: Emulator
) -> None:
    rp = RelyingParty(broker, "rp-basic")
    emulator.control(auto_login="lisi")
    url, _ = rp.authorization_url()
    location = follow_until(requests.Session(), url, rp.redirect_uri).headers["Location"]
    response = requests.post(
        rp.meta["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": query_of(location)["code"],
            "redirect_uri": rp.redirect_uri,
            "code_verifier": rp.verifier,
        },
        auth=("rp-basic", broker.clients["rp-basic"]["client_secret"]),
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.json()
    assert body["token_type"].lower() == "bearer"
    assert body["expires_in"] == broker.config.lifetimes.access_token
    assert "refresh_token" not in body  # not registered for refresh_token


def test_openid_scope_alone_gives_only_sub(broker: Broker, emulator: Emulator) -> None:
    rp = RelyingParty(broker, "rp-basic", scope="openid")
    result = rp.login(emulator, user="lisi")
    assert "nickname" not in result["claims"] and "picture" not in result["claims"]
    assert result["userinfo"] == {"sub": emulator.user("lisi")["openid"]}


@pytest.mark.parametrize(("client_id", "alg"), [("rp-es256", "ES256"), ("rp-eddsa", "EdDSA")])
def test_per_client_signing_algorithm(
    broker: Broker, emulator: Emulator, client_id: str, alg: str
) -> None:
    result = RelyingParty(broker, client_id).login(emulator)
    assert result["header"]["alg"] == alg
    assert result["claims"]["sub"] == emulator.user("zhangsan")["openid"]


def test_same_user_same_sub_and_different_users_differ(broker: Broker, emulator: Emulator) -> None:
    first = RelyingParty(broker, "rp-basic").login(emulator, user="wangxiaohong")
    again = RelyingParty(broker, "rp-basic").login(emulator, user="wangxiaohong")
    other = RelyingParty(broker, "rp-basic").login(emulator, user="xiaoming")
    assert first["claims"]["sub"] == again["claims"]["sub"]
    assert first["claims"]["sub"] != other["claims"]["sub"]
    assert other["claims"]["nickname"] == "小明🐧✨"


def test_user_without_nickname_gets_no_name_claims(broker: Broker, emulator: Emulator) -> None:
    result = RelyingParty(broker, "rp-basic").login(emulator, user="noname")
    assert "name" not in result["claims"] and "nickname" not in result["claims"]
    assert result["claims"]["picture"].startswith("https://")


def test_unionid_subject_client(broker: Broker, emulator: Emulator) -> None:
    result = RelyingParty(broker, "rp-unionid").login(emulator, user="zhangsan")
    expected = emulator.user("zhangsan")
    assert result["claims"]["sub"] == expected["unionid"]
    assert result["claims"]["qq_openid"] == expected["openid"]
    assert result["claims"]["qq_unionid"] == expected["unionid"]
    me_calls = [r for r in emulator.requests() if r["endpoint"] == "me"]
    assert me_calls and me_calls[0]["params"].get("unionid") == "1"


def test_openid_from_token_response_skips_me(broker: Broker, emulator: Emulator) -> None:
    RelyingParty(broker, "rp-basic").login(emulator)
    endpoints = [r["endpoint"] for r in emulator.requests()]
    assert endpoints.count("token") == 1
    assert "me" not in endpoints
    assert "get_user_info" in endpoints


def test_me_is_used_when_token_response_has_no_openid(broker: Broker, emulator: Emulator) -> None:
    emulator.control(faults={"token": "omit_openid"})
    result = RelyingParty(broker, "rp-basic").login(emulator)
    assert result["claims"]["sub"] == emulator.user("zhangsan")["openid"]
    assert [r["endpoint"] for r in emulator.requests()].count("me") == 1


def test_app_key_travels_only_in_the_post_body(broker: Broker, emulator: Emulator) -> None:
    RelyingParty(broker, "rp-basic").login(emulator)
    token_calls = [r for r in emulator.requests() if r["endpoint"] == "token"]
    assert len(token_calls) == 1 and token_calls[0]["method"] == "POST"
    assert token_calls[0]["params"]["client_secret"] == "***"  # it was sent...
    for logged in emulator.requests():
        assert "client_secret" not in logged["query_names"]  # ...but never in a URL


def test_no_private_key_import_per_token(
    broker: Broker, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Keys are parsed once at start: an RSA import costs ~50 ms and would cap the token rate.

    The broker runs in this process, so counting how many joserfc key objects
    are built (every import path ends in a key constructor) while tokens are
    issued shows what each request costs.
    """
    from joserfc import jwk

    built: list[str] = []
    for cls in (jwk.RSAKey, jwk.ECKey, jwk.OKPKey):
        original = cls.__init__

        def counting(self: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            built.append(type(self).__name__)
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    for client_id in ("rp-basic", "rp-es256", "rp-eddsa"):
        rp = RelyingParty(broker, client_id)
        jwks = requests.get(rp.meta["jwks_uri"], timeout=5).json()  # the RP's own key parsing
        built.clear()
        emulator.control(auto_login="zhangsan")
        url, _ = rp.authorization_url()
        location = follow_until(requests.Session(), url, rp.redirect_uri).headers["Location"]
        token = rp.session.fetch_token(
            rp.meta["token_endpoint"], authorization_response=location, code_verifier=rp.verifier
        )
        assert built == [], f"{client_id}: keys built per request: {built}"
        assert jwt.PyJWKSet.from_dict(jwks)[jwt.get_unverified_header(token["id_token"])["kid"]]


def test_login_without_unionid_keeps_the_stored_one(broker: Broker, emulator: Emulator) -> None:
    """Clients with different subject strategies share users: an openid-only login must not
    erase the UnionID that a unionid client's tokens depend on."""
    union_rp = RelyingParty(broker, "rp-unionid")
    first = union_rp.login(emulator, user="lisi")
    RelyingParty(broker, "rp-basic").login(emulator, user="lisi")
    again = union_rp.session.get(union_rp.meta["userinfo_endpoint"])
    assert again.status_code == 200
    assert again.json()["sub"] == first["claims"]["sub"] == emulator.user("lisi")["unionid"]


def test_issuer_with_a_path_serves_everything_under_it(tmp_path: Path) -> None:
    pair = start_pair(tmp_path, issuer_path="/oidc")
    try:
        broker = pair.broker
        assert broker.issuer.endswith("/oidc")
        meta = broker.metadata()
        assert meta["issuer"] == broker.issuer
        assert meta["authorization_endpoint"] == f"{broker.issuer}/authorize"
        result = RelyingParty(broker, "rp-basic").login(pair.emulator)
        assert result["claims"]["iss"] == broker.issuer
        root = broker.issuer.removesuffix("/oidc")
        assert (
            requests.get(f"{root}/.well-known/openid-configuration", timeout=5).status_code == 404
        )
    finally:
        pair.stop()


def test_gender_claim_only_when_switched_on(tmp_path: Path) -> None:
    pair = start_pair(tmp_path, claims={"gender": True})
    try:
        female = RelyingParty(pair.broker, "rp-basic").login(pair.emulator, user="lisi")
        assert female["claims"]["gender"] == "female"
        assert female["userinfo"]["gender"] == "female"
        assert "gender" in pair.broker.metadata()["claims_supported"]
    finally:
        pair.stop()


def test_pinned_unionid_becomes_the_sub_of_unionid_clients(
    broker: Broker, emulator: Emulator
) -> None:
    result = RelyingParty(broker, "rp-unionid").login(emulator, user="wangxiaohong")
    assert result["claims"]["sub"] == "UID_3C62A0F1B2D4E5F60718293A4B5C6D7E"
