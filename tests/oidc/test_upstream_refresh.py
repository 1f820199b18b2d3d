"""Upstream-aware refresh (issue: upstream_check strict | cached | off), over real HTTP.

A dedicated emulator + broker pair has one relying party per policy. The emulator's request
log shows which QQ calls a downstream refresh caused; its faults make QQ say "this login is
over" (qq-connect.md §5.1: 100013-100016 for access tokens, 100021 for refresh tokens) or be
down. The database is read with SQLAlchemy and the sealed QQ tokens are opened here with
``cryptography`` and the key file, independently of the broker's code: that both checks the
at-rest format and lets a test age the QQ token (60 days of waiting, §6) in a second.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tests.conftest import RP, Broker, Emulator, Pair, start_pair
from tests.oidc.test_flow import RelyingParty
from tests.oidc.test_refresh import refresh, userinfo_status

STRICT, CACHED, OFF = "rp-strict", "rp-cached", "rp-off"
#: QQ's tokens are 32 upper-case hex (qq-connect.md §6); none may sit in the database.
QQ_TOKEN_SHAPE = re.compile(r"[0-9A-F]{32}")
NONCE_BYTES = 12


def upstream_clients() -> list[dict[str, Any]]:
    """One refresh-capable relying party per upstream_check policy."""
    return [
        {
            "client_id": client_id,
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/{client_id}/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "upstream_check": policy,
        }
        for client_id, policy in ((STRICT, "strict"), (CACHED, "cached"), (OFF, "off"))
    ]


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started = start_pair(tmp_path_factory.mktemp("upstream"), clients=upstream_clients())
    yield started
    started.stop()


@pytest.fixture
def broker(pair: Pair) -> Broker:
    return pair.broker


@pytest.fixture
def qq(pair: Pair) -> Emulator:
    """The pair's emulator, reset: no faults, no tokens, an empty request log."""
    pair.emulator.reset()
    return pair.emulator


# --------------------------------------------------------------------------- helpers


def login(broker: Broker, qq: Emulator, client_id: str, user: str = "zhangsan") -> dict[str, Any]:
    """An offline login (openid profile offline_access) through broker and emulator."""
    scope = "openid profile offline_access"
    result = RelyingParty(broker, client_id, scope=scope).login(qq, user=user)
    assert "refresh_token" in result["token"]
    return result


def openid_of(qq: Emulator, user: str) -> str:
    openid: str = qq.user(user)["openid"]
    return openid


def calls_during(qq: Emulator, action: Any) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``action`` and return its result with the QQ requests it caused."""
    before = len(qq.requests())
    result = action()
    return result, qq.requests()[before:]


def endpoints(calls: list[dict[str, Any]]) -> list[str]:
    return [call["endpoint"] for call in calls]


def refresh_grants(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c
        for c in calls
        if c["endpoint"] == "token" and c["params"].get("grant_type") == "refresh_token"
    ]


def engine(broker: Broker) -> sa.Engine:
    return sa.create_engine(broker.config.storage.url)


def token_key(broker: Broker) -> bytes:
    """keys/upstream_token_key: one line of base64url (DESIGN.md: beside the signing keys)."""
    text = (broker.config.keys.dir / "upstream_token_key").read_text().strip()
    key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert len(key) == 32
    return key


def stored_row(broker: Broker, user_id: str) -> dict[str, Any]:
    table = sa.table(
        "upstream_tokens", sa.column("user_id"), sa.column("ciphertext"), sa.column("expires_at")
    )
    with engine(broker).connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.user_id == user_id)).mappings().one()
    return dict(row)


def write_ciphertext(broker: Broker, user_id: str, ciphertext: str) -> None:
    table = sa.table("upstream_tokens", sa.column("user_id"), sa.column("ciphertext"))
    with engine(broker).begin() as conn:
        conn.execute(
            sa.update(table).where(table.c.user_id == user_id).values(ciphertext=ciphertext)
        )


def unseal(key: bytes, user_id: str, text: str) -> dict[str, Any]:
    """base64url(version 1 || 96-bit nonce || AES-GCM(json)), associated data = the user id."""
    blob = base64.urlsafe_b64decode(text)
    assert blob[0] == 1
    nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    plain: dict[str, Any] = json.loads(AESGCM(key).decrypt(nonce, sealed, user_id.encode()))
    return plain


def seal(key: bytes, user_id: str, plain: dict[str, Any]) -> str:
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, json.dumps(plain).encode(), user_id.encode())
    return base64.urlsafe_b64encode(bytes([1]) + nonce + sealed).decode()


def stored_tokens(broker: Broker, user_id: str) -> dict[str, Any]:
    return unseal(token_key(broker), user_id, stored_row(broker, user_id)["ciphertext"])


def age_stored_token(broker: Broker, user_id: str, expires_in: int) -> None:
    """Let time pass for the stored QQ token until it expires in ``expires_in`` seconds
    (negative: expired); its life (obtained_at to expires_at) stays what QQ granted."""
    plain = stored_tokens(broker, user_id)
    shift = int(time.time()) + expires_in - plain["expires_at"]
    plain["expires_at"] += shift
    plain["obtained_at"] += shift
    write_ciphertext(broker, user_id, seal(token_key(broker), user_id, plain))


def family_revoked(broker: Broker, refresh_token: str) -> bool:
    """Whether every refresh token of the family ``refresh_token`` belongs to is revoked
    (rows are keyed by the SHA-256 hex of the token)."""
    table = sa.table(
        "refresh_tokens", sa.column("token_digest"), sa.column("family_id"), sa.column("revoked")
    )
    token_digest = hashlib.sha256(refresh_token.encode()).hexdigest()
    family = sa.select(table.c.family_id).where(table.c.token_digest == token_digest)
    query = sa.select(table.c.revoked).where(table.c.family_id == family.scalar_subquery())
    with engine(broker).connect() as conn:
        flags = [bool(flag) for flag in conn.execute(query).scalars()]
    assert flags, "no such refresh token family"
    return all(flags)


def set_stored_nickname(broker: Broker, user_id: str, nickname: str) -> None:
    table = sa.table("users", sa.column("user_id"), sa.column("profile", sa.JSON))
    with engine(broker).begin() as conn:
        profile = conn.execute(
            sa.select(table.c.profile).where(table.c.user_id == user_id)
        ).scalar_one()
        conn.execute(
            sa.update(table)
            .where(table.c.user_id == user_id)
            .values(profile={**profile, "nickname": nickname})
        )


def id_token_claims(broker: Broker, client_id: str, body: dict[str, Any]) -> dict[str, Any]:
    claims, _ = RelyingParty(broker, client_id).verify(body["id_token"])
    return claims


def assert_invalid_grant(response: requests.Response) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_grant"


# --------------------------------------------------------------------------- strict


def test_strict_refresh_asks_qq_me_and_updates_the_profile(broker: Broker, qq: Emulator) -> None:
    first = login(broker, qq, STRICT)
    openid = openid_of(qq, "zhangsan")
    set_stored_nickname(broker, openid, "旧昵称")  # what the user was called at QQ before
    response, calls = calls_during(
        qq, lambda: refresh(broker, STRICT, first["token"]["refresh_token"])
    )
    assert response.status_code == 200, response.text
    assert endpoints(calls) == ["me", "get_user_info"]  # token valid: no QQ refresh grant
    assert calls[0]["params"]["access_token"] == "***"  # a token was sent (masked in the log)
    assert id_token_claims(broker, STRICT, response.json())["nickname"] == "张三"
    userinfo = requests.get(
        f"{broker.issuer}/userinfo",
        headers={"Authorization": f"Bearer {response.json()['access_token']}"},
        timeout=5,
    ).json()
    assert userinfo["sub"] == openid and userinfo["nickname"] == "张三"


def test_strict_renews_a_dead_qq_token_with_the_refresh_grant(broker: Broker, qq: Emulator) -> None:
    first = login(broker, qq, STRICT)
    openid = openid_of(qq, "zhangsan")
    before = stored_tokens(broker, openid)
    qq.control(expire_tokens=True)  # every QQ access token issued so far answers 100016
    response, calls = calls_during(
        qq, lambda: refresh(broker, STRICT, first["token"]["refresh_token"])
    )
    assert response.status_code == 200, response.text
    assert endpoints(calls) == ["me", "token", "me", "get_user_info"]
    assert len(refresh_grants(calls)) == 1
    after = stored_tokens(broker, openid)
    assert after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"]  # rotated and kept (§2.3)
    # The rotated pair really is what the next refresh uses: no second QQ refresh grant.
    again, calls = calls_during(
        qq, lambda: refresh(broker, STRICT, response.json()["refresh_token"])
    )
    assert again.status_code == 200, again.text
    assert endpoints(calls) == ["me", "get_user_info"]


def test_strict_renews_ahead_of_expiry(broker: Broker, qq: Emulator) -> None:
    first = login(broker, qq, STRICT)
    age_stored_token(broker, openid_of(qq, "zhangsan"), expires_in=60)  # inside the margin
    response, calls = calls_during(
        qq, lambda: refresh(broker, STRICT, first["token"]["refresh_token"])
    )
    assert response.status_code == 200, response.text
    assert endpoints(calls) == ["token", "me", "get_user_info"]
    assert len(refresh_grants(calls)) == 1
    assert stored_tokens(broker, openid_of(qq, "zhangsan"))["expires_at"] > time.time() + 86_400


@pytest.mark.parametrize("fault", ["error:100016", "error:100013"])
def test_strict_refresh_fails_and_revokes_the_family_when_qq_ends_the_login(
    broker: Broker, qq: Emulator, fault: str
) -> None:
    first = login(broker, qq, STRICT)
    assert userinfo_status(broker, first["token"]["access_token"]) == 200
    qq.control(faults={"me": fault})
    response, calls = calls_during(
        qq, lambda: refresh(broker, STRICT, first["token"]["refresh_token"])
    )
    assert_invalid_grant(response)
    assert "me" in endpoints(calls)
    assert userinfo_status(broker, first["token"]["access_token"]) == 401
    assert family_revoked(broker, first["token"]["refresh_token"])
    qq.control(faults={})  # even with QQ healthy again, the family stays dead
    assert_invalid_grant(refresh(broker, STRICT, first["token"]["refresh_token"]))


def test_strict_refresh_during_a_qq_outage_fails_without_revoking(
    broker: Broker, qq: Emulator
) -> None:
    first = login(broker, qq, STRICT)
    qq.control(faults={"me": "http_500"})
    response = refresh(broker, STRICT, first["token"]["refresh_token"])
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "temporarily_unavailable"
    assert userinfo_status(broker, first["token"]["access_token"]) == 200
    assert not family_revoked(broker, first["token"]["refresh_token"])


def test_strict_refresh_can_be_retried_after_a_qq_outage(broker: Broker, qq: Emulator) -> None:
    first = login(broker, qq, STRICT)
    qq.control(faults={"me": "http_500"})
    assert refresh(broker, STRICT, first["token"]["refresh_token"]).status_code == 503
    qq.control(faults={})
    assert refresh(broker, STRICT, first["token"]["refresh_token"]).status_code == 200


# --------------------------------------------------------------------------- off, cached


def test_off_never_calls_qq(broker: Broker, qq: Emulator) -> None:
    first = login(broker, qq, OFF)
    age_stored_token(broker, openid_of(qq, "zhangsan"), expires_in=-10)  # cached would renew
    qq.control(expire_tokens=True, faults={"me": "error:100016", "token": "error:100021"})
    response, calls = calls_during(
        qq, lambda: refresh(broker, OFF, first["token"]["refresh_token"])
    )
    assert response.status_code == 200, response.text
    assert calls == []


def test_cached_with_a_valid_qq_token_calls_nothing(broker: Broker, qq: Emulator) -> None:
    first = login(broker, qq, CACHED)
    qq.control(faults={"me": "error:100016", "token": "error:100021"})
    response, calls = calls_during(
        qq, lambda: refresh(broker, CACHED, first["token"]["refresh_token"])
    )
    assert response.status_code == 200, response.text
    assert calls == []


def test_cached_renews_an_expired_qq_token(broker: Broker, qq: Emulator) -> None:
    first = login(broker, qq, CACHED)
    openid = openid_of(qq, "zhangsan")
    age_stored_token(broker, openid, expires_in=-10)
    qq.control(expire_tokens=True)
    before = stored_tokens(broker, openid)
    response, calls = calls_during(
        qq, lambda: refresh(broker, CACHED, first["token"]["refresh_token"])
    )
    assert response.status_code == 200, response.text
    assert endpoints(calls) == ["token"] and len(refresh_grants(calls)) == 1
    after = stored_tokens(broker, openid)
    assert after["refresh_token"] != before["refresh_token"]
    assert after["expires_at"] > time.time() + 86_400
    again, calls = calls_during(
        qq, lambda: refresh(broker, CACHED, response.json()["refresh_token"])
    )
    assert again.status_code == 200 and calls == []


def test_cached_ends_the_family_when_qq_refuses_the_refresh_token(
    broker: Broker, qq: Emulator
) -> None:
    first = login(broker, qq, CACHED)
    openid = openid_of(qq, "zhangsan")
    age_stored_token(broker, openid, expires_in=-10)
    qq.control(faults={"token": "error:100021"})  # refresh token used up or chain over (§2.3)
    response, calls = calls_during(
        qq, lambda: refresh(broker, CACHED, first["token"]["refresh_token"])
    )
    assert_invalid_grant(response)
    assert len(refresh_grants(calls)) == 1
    assert userinfo_status(broker, first["token"]["access_token"]) == 401
    assert family_revoked(broker, first["token"]["refresh_token"])


def test_cached_lets_the_refresh_pass_during_a_qq_outage(broker: Broker, qq: Emulator) -> None:
    first = login(broker, qq, CACHED)
    openid = openid_of(qq, "zhangsan")
    age_stored_token(broker, openid, expires_in=-10)
    qq.control(faults={"token": "http_500"})
    response, calls = calls_during(
        qq, lambda: refresh(broker, CACHED, first["token"]["refresh_token"])
    )
    assert response.status_code == 200, response.text
    assert len(refresh_grants(calls)) == 1
    assert not family_revoked(broker, first["token"]["refresh_token"])


# --------------------------------------------------------------------------- at rest


def test_stored_qq_tokens_are_sealed_for_their_user(broker: Broker, qq: Emulator) -> None:
    login(broker, qq, CACHED, user="zhangsan")
    login(broker, qq, CACHED, user="lisi")
    zhang, li = openid_of(qq, "zhangsan"), openid_of(qq, "lisi")
    text = stored_row(broker, zhang)["ciphertext"]
    assert QQ_TOKEN_SHAPE.search(text) is None  # no QQ token (or anything like one) in clear
    assert re.fullmatch(r"[A-Za-z0-9_-]+=*", text)  # base64url text
    plain = unseal(token_key(broker), zhang, text)
    assert QQ_TOKEN_SHAPE.fullmatch(plain["access_token"])
    assert QQ_TOKEN_SHAPE.fullmatch(plain["refresh_token"])
    assert plain["access_token"] not in text and plain["refresh_token"] not in text
    with pytest.raises(InvalidTag):  # bound to the user: useless on another user's row
        unseal(token_key(broker), li, text)
    with pytest.raises(InvalidTag):  # and only the key file opens it
        unseal(secrets.token_bytes(32), zhang, text)
    with engine(broker).connect() as conn:  # nowhere else in the database either
        for table in ("users", "upstream_tokens", "tokens", "refresh_tokens"):
            dump = repr(conn.execute(sa.text(f"SELECT * FROM {table}")).all())  # noqa: S608
            assert plain["access_token"] not in dump and plain["refresh_token"] not in dump


def test_tampered_or_swapped_rows_never_cause_a_500(broker: Broker, qq: Emulator) -> None:
    strict = login(broker, qq, STRICT, user="zhangsan")
    cached = login(broker, qq, CACHED, user="zhangsan")
    login(broker, qq, OFF, user="lisi")
    zhang, li = openid_of(qq, "zhangsan"), openid_of(qq, "lisi")
    # A flipped bit in an expired row: were it trusted, cached would call QQ's refresh
    # grant; unreadable, it counts as no row (cached then behaves like off).
    age_stored_token(broker, zhang, expires_in=-10)
    blob = bytearray(base64.urlsafe_b64decode(stored_row(broker, zhang)["ciphertext"]))
    blob[-1] ^= 0x01
    write_ciphertext(broker, zhang, base64.urlsafe_b64encode(bytes(blob)).decode())
    tampered, calls = calls_during(
        qq, lambda: refresh(broker, CACHED, cached["token"]["refresh_token"])
    )
    assert tampered.status_code == 200, tampered.text
    assert calls == []
    # Another user's valid row copied over: the associated data (user id) no longer matches.
    write_ciphertext(broker, zhang, stored_row(broker, li)["ciphertext"])
    swapped, calls = calls_during(
        qq, lambda: refresh(broker, STRICT, strict["token"]["refresh_token"])
    )
    assert_invalid_grant(swapped)
    assert calls == []  # lisi's QQ token was never presented on zhangsan's behalf
    # Not even base64: still an OAuth answer, not a server error.
    strict_again = login(broker, qq, STRICT, user="zhangsan")  # a new login reseals the row
    write_ciphertext(broker, zhang, "not base64 at all!")
    assert_invalid_grant(refresh(broker, STRICT, strict_again["token"]["refresh_token"]))
