"""Revocation (RFC 7009) and introspection (RFC 7662) over real HTTP.

The module runs its own emulator + broker pair with a store the test holds,
so refresh-token families can be planted through the Store interface until
the refresh grant issues them.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
import requests

from broker.app import create_app
from broker.emulator import EmulatorSettings, create_emulator_app
from broker.storage import SQLStore
from broker.storage.base import RefreshTokenRecord, Store, TokenRecord, digest
from tests.conftest import APP_ID, Broker, Emulator, broker_config
from tests.flows import authorize_url, follow_until, query_of
from tests.oidc.test_token import s256
from tests.servers import free_port, serve

USER = "zhangsan"


@dataclass
class Env:
    """The module's broker, its emulator, and the broker's own store."""

    broker: Broker
    emulator: Emulator
    store: Store

    @property
    def issuer(self) -> str:
        return self.broker.issuer


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A broker built with an injected store, so tests can plant records through it."""
    port, key = free_port(), secrets.token_hex(16)
    settings = EmulatorSettings(
        app_id=APP_ID,
        app_key=key,
        callbacks=[f"http://127.0.0.1:{port}/qq/callback"],
        unionid_enabled=True,  # rp-unionid's sub differs from the OpenID
    )
    emulator = Emulator(serve(create_emulator_app(settings)))
    base = tmp_path_factory.mktemp("token-endpoints")
    config = broker_config(base, f"http://127.0.0.1:{port}", emulator.url, key)
    store = SQLStore(config.storage.url)
    served = serve(create_app(config, store=store), port=port)
    clients = {
        c.client_id: {
            "client_secret": c.client_secret,
            "redirect_uri": c.redirect_uris[0],
            "method": c.token_endpoint_auth_method,
        }
        for c in config.clients
    }
    yield Env(Broker(served, config, clients), emulator, store)
    served.stop()
    emulator.served.stop()
    store.close()


# -- helpers -------------------------------------------------------------------------


def authenticated(
    env: Env, client_id: str, data: dict[str, Any], secret: str | None = None
) -> dict[str, Any]:
    """requests kwargs that authenticate ``client_id`` with its registered method."""
    client = env.broker.clients[client_id]
    secret = secret if secret is not None else client["client_secret"]
    if client["method"] == "client_secret_basic":
        return {"data": data, "auth": (client_id, secret)}
    if client["method"] == "client_secret_post":
        return {"data": {**data, "client_id": client_id, "client_secret": secret}}
    return {"data": {**data, "client_id": client_id}}


def login(env: Env, client_id: str) -> dict[str, Any]:
    """Log USER in for ``client_id`` (code + PKCE) and return the token response."""
    env.emulator.control(auto_login=USER)
    verifier = secrets.token_urlsafe(48)
    redirect_uri = env.broker.clients[client_id]["redirect_uri"]
    url = authorize_url(
        env.issuer,
        response_type="code",
        client_id=client_id,
        redirect_uri=redirect_uri,
        scope="openid",
        state="s",
        code_challenge=s256(verifier),
        code_challenge_method="S256",
    )
    code = query_of(follow_until(requests.Session(), url, redirect_uri).headers["Location"])["code"]
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    response = requests.post(
        f"{env.issuer}/token", **authenticated(env, client_id, form), timeout=10
    )
    assert response.status_code == 200, response.text
    tokens: dict[str, Any] = response.json()
    return tokens


def revoke(env: Env, client_id: str, token: str, **extra: Any) -> requests.Response:
    data = {"token": token, **extra}
    return requests.post(f"{env.issuer}/revoke", **authenticated(env, client_id, data), timeout=10)


def introspect(env: Env, client_id: str, token: str, **extra: Any) -> requests.Response:
    data = {"token": token, **extra}
    return requests.post(
        f"{env.issuer}/introspect", **authenticated(env, client_id, data), timeout=10
    )


def is_active(env: Env, client_id: str, token: str) -> bool:
    response = introspect(env, client_id, token)
    assert response.status_code == 200, response.text
    return bool(response.json()["active"])


def userinfo_status(env: Env, access_token: str) -> int:
    headers = {"Authorization": f"Bearer {access_token}"}
    return requests.get(f"{env.issuer}/userinfo", headers=headers, timeout=10).status_code


@dataclass
class Family:
    """A planted refresh token and an access token issued from the same family."""

    refresh_token: str
    access_token: str
    record: RefreshTokenRecord


def plant_family(env: Env, client_id: str = "rp-basic", **overrides: Any) -> Family:
    """Insert a refresh token and an access token of one family through the Store interface.

    Stands in for the refresh grant (not issuing tokens yet); the user must exist,
    so callers log in first.
    """
    now = int(time.time())
    family_id = secrets.token_hex(16)
    user_id = env.emulator.user(USER)["openid"]
    refresh, access = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    fields: dict[str, Any] = {
        "token_digest": digest(refresh),
        "family_id": family_id,
        "client_id": client_id,
        "user_id": user_id,
        "scope": "openid",
        "auth_time": now - 100,
        "issued_at": now,
        "expires_at": now + 3600,
        "family_expires_at": now + 7200,
        **overrides,
    }
    record = RefreshTokenRecord(**fields)
    env.store.save_refresh_token(record)
    env.store.save_token(
        TokenRecord(
            token_digest=digest(access),
            client_id=client_id,
            user_id=user_id,
            scope="openid",
            issued_at=now,
            expires_at=now + 3600,
            auth_time=now - 100,
            family_id=family_id,
        )
    )
    return Family(refresh, access, record)


def id_token_claims(tokens: dict[str, Any]) -> dict[str, Any]:
    """The ID token's claims; its signature is other tests' business."""
    claims: dict[str, Any] = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    return claims


# -- revocation ----------------------------------------------------------------------


def test_revoked_access_token_is_dead_at_once(env: Env) -> None:
    token = login(env, "rp-basic")["access_token"]
    assert userinfo_status(env, token) == 200 and is_active(env, "rp-basic", token)
    response = revoke(env, "rp-basic", token)
    assert response.status_code == 200 and response.json() == {}
    assert userinfo_status(env, token) == 401
    assert introspect(env, "rp-basic", token).json() == {"active": False}


def test_revoking_an_access_token_leaves_other_tokens_alone(env: Env) -> None:
    first, second = login(env, "rp-basic")["access_token"], login(env, "rp-basic")["access_token"]
    family = plant_family(env)
    assert revoke(env, "rp-basic", first).status_code == 200
    assert userinfo_status(env, second) == 200
    assert is_active(env, "rp-basic", family.refresh_token)


def test_revoking_a_refresh_token_kills_its_family(env: Env) -> None:
    login(env, "rp-basic")
    family = plant_family(env)
    bystander = plant_family(env)
    assert userinfo_status(env, family.access_token) == 200
    assert is_active(env, "rp-basic", family.refresh_token)
    response = revoke(env, "rp-basic", family.refresh_token, token_type_hint="refresh_token")
    assert response.status_code == 200
    # RFC 7009 §2.1, checklist RT-04: the grant ends, access tokens included.
    assert not is_active(env, "rp-basic", family.refresh_token)
    assert userinfo_status(env, family.access_token) == 401
    assert not is_active(env, "rp-basic", family.access_token)
    # Another family of the same user and client is not touched.
    assert is_active(env, "rp-basic", bystander.refresh_token)
    assert userinfo_status(env, bystander.access_token) == 200


@pytest.mark.parametrize(
    ("owner", "intruder"),
    [("rp-basic", "rp-multi"), ("rp-basic", "rp-public"), ("rp-public", "rp-post")],
)
def test_a_client_cannot_revoke_another_clients_access_token(
    env: Env, owner: str, intruder: str
) -> None:
    token = login(env, owner)["access_token"]
    for hint in (None, "access_token", "refresh_token"):
        extra = {"token_type_hint": hint} if hint else {}
        response = revoke(env, intruder, token, **extra)
        # Same answer as for an unknown token: nothing reveals that the token exists.
        assert response.status_code == 200 and response.json() == {}
    assert userinfo_status(env, token) == 200
    if env.broker.clients[owner]["method"] != "none":  # public clients cannot introspect
        assert is_active(env, owner, token)


def test_a_client_cannot_revoke_another_clients_refresh_token(env: Env) -> None:
    login(env, "rp-basic")
    family = plant_family(env, client_id="rp-basic")
    assert revoke(env, "rp-multi", family.refresh_token).status_code == 200
    assert is_active(env, "rp-basic", family.refresh_token)
    assert userinfo_status(env, family.access_token) == 200


def test_unknown_token_revocation_is_200(env: Env) -> None:
    for hint in (None, "access_token", "refresh_token"):
        extra = {"token_type_hint": hint} if hint else {}
        response = revoke(env, "rp-basic", secrets.token_urlsafe(32), **extra)
        assert response.status_code == 200 and response.json() == {}


def test_wrong_hint_still_finds_the_token(env: Env) -> None:
    # RFC 7009 §2.1: an unhelpful hint extends the search to the other kind.
    token = login(env, "rp-basic")["access_token"]
    assert revoke(env, "rp-basic", token, token_type_hint="refresh_token").status_code == 200
    assert userinfo_status(env, token) == 401
    family = plant_family(env)
    assert revoke(env, "rp-basic", family.refresh_token, token_type_hint="access_token").ok
    assert not is_active(env, "rp-basic", family.refresh_token)
    assert userinfo_status(env, family.access_token) == 401


@pytest.mark.parametrize("hint", ["id_token", "urn:example:unknown", "Refresh_Token"])
def test_unknown_hint_is_ignored(env: Env, hint: str) -> None:
    # RFC 7009 §2.1 / RFC 7662 §2.1: the server MAY ignore the hint; it does, rather than
    # refuse with Authlib's 401 (RFC 6749 §5.2 keeps 401 for client authentication).
    login(env, "rp-basic")
    family = plant_family(env)
    body = introspect(env, "rp-basic", family.refresh_token, token_type_hint=hint).json()
    assert body["active"] is True and body["token_type"] == "refresh_token"
    assert revoke(env, "rp-basic", family.access_token, token_type_hint=hint).status_code == 200
    assert userinfo_status(env, family.access_token) == 401


def test_public_client_revokes_its_own_token(env: Env) -> None:
    token = login(env, "rp-public")["access_token"]
    response = requests.post(
        f"{env.issuer}/revoke", data={"token": token, "client_id": "rp-public"}, timeout=10
    )
    assert response.status_code == 200
    assert userinfo_status(env, token) == 401


def test_client_secret_post_client_can_revoke(env: Env) -> None:
    # Pitfall 9: Authlib's default would accept client_secret_basic only.
    token = login(env, "rp-post")["access_token"]
    assert revoke(env, "rp-post", token).status_code == 200
    assert userinfo_status(env, token) == 401


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
def test_bad_client_credentials_are_refused_and_change_nothing(env: Env, path: str) -> None:
    token = login(env, "rp-basic")["access_token"]
    attempts: list[dict[str, Any]] = [
        {"data": {"token": token}, "auth": ("rp-basic", "wrong-secret")},
        {"data": {"token": token}, "auth": ("rp-nobody", "whatever")},
        {"data": {"token": token}},  # no credentials at all
        # rp-basic is registered for client_secret_basic; its secret in the body is refused.
        {
            "data": {
                "token": token,
                "client_id": "rp-basic",
                "client_secret": env.broker.clients["rp-basic"]["client_secret"],
            }
        },
        # A confidential client cannot pass itself off as public.
        {"data": {"token": token, "client_id": "rp-basic"}},
    ]
    for kwargs in attempts:
        response = requests.post(f"{env.issuer}{path}", **kwargs, timeout=10)
        assert response.status_code in (400, 401), (kwargs, response.text)
        assert response.json()["error"] == "invalid_client"
        assert response.headers["Cache-Control"] == "no-store"
    wrong = requests.post(
        f"{env.issuer}{path}", data={"token": token}, auth=("rp-basic", "wrong"), timeout=10
    )
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"].startswith("Basic")
    assert userinfo_status(env, token) == 200


# -- introspection -------------------------------------------------------------------


def test_active_access_token_introspection_fields(env: Env) -> None:
    tokens = login(env, "rp-basic")
    response = introspect(env, "rp-basic", tokens["access_token"])
    assert response.status_code == 200
    body = response.json()
    id_token = id_token_claims(tokens)
    assert set(body) == {
        "active", "scope", "client_id", "sub", "exp", "iat", "iss", "aud", "token_type",
        "auth_time",
    }  # fmt: skip
    assert body["active"] is True
    assert body["sub"] == id_token["sub"] == env.emulator.user(USER)["openid"]
    assert body["scope"] == "openid"
    assert body["client_id"] == body["aud"] == "rp-basic"
    assert body["iss"] == env.issuer
    assert body["token_type"] == "Bearer"
    assert body["exp"] - body["iat"] == tokens["expires_in"]
    assert abs(body["iat"] - int(time.time())) < 60
    assert body["auth_time"] == id_token["auth_time"]


def test_introspected_sub_is_the_one_the_tokens_client_sees(env: Env) -> None:
    tokens = login(env, "rp-unionid")
    body = introspect(env, "rp-unionid", tokens["access_token"]).json()
    user = env.emulator.user(USER)
    assert body["active"] is True
    assert body["sub"] == id_token_claims(tokens)["sub"] == user["unionid"] != user["openid"]


def test_active_refresh_token_introspection_fields(env: Env) -> None:
    login(env, "rp-basic")
    now = int(time.time())
    family = plant_family(env, expires_at=now + 900, family_expires_at=now + 600)
    body = introspect(env, "rp-basic", family.refresh_token, token_type_hint="refresh_token").json()
    assert body["active"] is True
    assert body["token_type"] == "refresh_token"
    assert body["client_id"] == body["aud"] == "rp-basic"
    assert body["sub"] == env.emulator.user(USER)["openid"]
    assert body["exp"] == now + 600  # never past the family's absolute expiry
    assert body["iat"] == family.record.issued_at
    assert body["auth_time"] == family.record.auth_time


def test_another_clients_token_is_inactive(env: Env) -> None:
    token = login(env, "rp-basic")["access_token"]
    family = plant_family(env, client_id="rp-basic")
    for other in ("rp-multi", "rp-post"):
        assert introspect(env, other, token).json() == {"active": False}
        assert introspect(env, other, family.refresh_token).json() == {"active": False}
    assert is_active(env, "rp-basic", token)


def test_unknown_token_is_inactive(env: Env) -> None:
    response = introspect(env, "rp-basic", secrets.token_urlsafe(32))
    assert response.status_code == 200 and response.json() == {"active": False}


def test_expired_used_and_revoked_tokens_are_inactive(env: Env) -> None:
    login(env, "rp-basic")
    now = int(time.time())
    expired_at = plant_family(env)
    env.store.save_token(
        TokenRecord(
            token_digest=digest(stale := secrets.token_urlsafe(32)),
            client_id="rp-basic",
            user_id=env.emulator.user(USER)["openid"],
            scope="openid",
            issued_at=now - 7200,
            expires_at=now - 1,
            auth_time=now - 7200,
        )
    )
    inactive = [
        stale,
        plant_family(env, expires_at=now - 1).refresh_token,  # idle expiry passed
        plant_family(env, family_expires_at=now - 1).refresh_token,  # absolute expiry passed
        plant_family(env, used=True).refresh_token,  # rotated out
        plant_family(env, revoked=True).refresh_token,
    ]
    for token in inactive:
        assert introspect(env, "rp-basic", token).json() == {"active": False}
    assert is_active(env, "rp-basic", expired_at.refresh_token)  # the control case


def test_public_client_cannot_introspect(env: Env) -> None:
    # RFC 7662 §2.1: the endpoint requires authorization; "none" proves nothing.
    token = login(env, "rp-public")["access_token"]
    response = requests.post(
        f"{env.issuer}/introspect", data={"token": token, "client_id": "rp-public"}, timeout=10
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert "active" not in response.json()


def test_client_secret_post_client_can_introspect(env: Env) -> None:
    token = login(env, "rp-post")["access_token"]
    assert introspect(env, "rp-post", token).json()["active"] is True


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
def test_responses_are_not_cacheable(env: Env, path: str) -> None:
    token = login(env, "rp-basic")["access_token"]
    post = introspect if path == "/introspect" else revoke
    for response in (post(env, "rp-basic", token), post(env, "rp-basic", "unknown")):
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["Content-Type"].startswith("application/json")


# -- bad input -----------------------------------------------------------------------


NOTHING = {"/revoke": {}, "/introspect": {"active": False}}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
TWO_HINTS = [("token", "a"), ("token_type_hint", "access_token"), ("token_type_hint", "x")]


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
@pytest.mark.parametrize(
    "token",
    ["", "x" * 60_000, '\u4e2d\u6587"\\<>', " ", "\x00"],
    ids=["empty", "huge", "odd-chars", "space", "nul"],
)
def test_odd_tokens_are_simply_not_found(env: Env, path: str, token: str) -> None:
    response = requests.post(
        f"{env.issuer}{path}", **authenticated(env, "rp-basic", {"token": token}), timeout=10
    )
    assert response.status_code == 200 and response.json() == NOTHING[path]


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
def test_malformed_requests_get_json_errors(env: Env, path: str) -> None:
    url = f"{env.issuer}{path}"
    auth = ("rp-basic", env.broker.clients["rp-basic"]["client_secret"])
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"data": {}}, 400, "invalid_request"),  # no token
        ({"data": {"token_type_hint": "access_token"}}, 400, "invalid_request"),
        ({"params": {"token": "abc"}}, 400, "invalid_request"),  # RFC 7009 §2.1: body only
        ({"json": {"token": "abc"}}, 400, "invalid_request"),  # not form-encoded
        ({"data": [("token", "a"), ("token", "b")]}, 400, "invalid_request"),
        ({"data": TWO_HINTS}, 400, "invalid_request"),
        ({"data": {"token": "abc", "token_type_hint": 'bad"\\\u00e9'}}, 200, ""),
        ({"data": b"token=%FF%FE&x=%ED%A0%80", "headers": FORM}, 200, ""),  # invalid UTF-8
        ({"data": "x" * 70_000}, 413, "invalid_request"),  # over the body cap
    ]
    for kwargs, status, error in cases:
        response = requests.post(url, auth=auth, timeout=10, **kwargs)
        assert response.status_code == status, (kwargs, response.text[:200])
        assert response.headers["Content-Type"].startswith("application/json")
        if error:
            assert response.json()["error"] == error
    get = requests.get(url, params={"token": "abc"}, auth=auth, timeout=10)
    assert get.status_code == 405 and get.json()["error"] == "invalid_request"


@pytest.mark.parametrize("path", ["/revoke", "/introspect"])
def test_hostile_client_credentials_never_500(env: Env, path: str) -> None:
    url = f"{env.issuer}{path}"
    headers_cases = [
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + "YQ=="},  # "a": no colon
        {"Authorization": "Bearer abc"},
        {"Authorization": "Basic IiJcXMOpOngi"},  # '""\\é:x"' as the client id
    ]
    for headers in headers_cases:
        response = requests.post(url, data={"token": "abc"}, headers=headers, timeout=10)
        assert response.status_code in (400, 401), (headers, response.text)
        assert response.json()["error"] == "invalid_client"
    odd_id = {"token": "abc", "client_id": '"\\\u00e9<x>', "client_secret": "s"}
    response = requests.post(url, data=odd_id, timeout=10)
    assert response.status_code in (400, 401) and response.json()["error"] == "invalid_client"
