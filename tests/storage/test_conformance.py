"""Storage conformance: every backend must pass these (Dex-style), through the Store interface only.

Today the suite runs on SQLite; the PostgreSQL backend joins the parameter
list when it lands (issue 5).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.storage import (
    AuthorizationCodeRecord,
    ClientRecord,
    LoginTransaction,
    SQLStore,
    StorageError,
    Store,
    TokenRecord,
    UserRecord,
)
from broker.storage.base import RefreshTokenRecord, SessionRecord, digest


@pytest.fixture(params=["sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend = SQLStore(f"sqlite:///{tmp_path / 'conformance.sqlite3'}")
    backend.create_schema()
    yield backend
    backend.close()


# One fixed "now" for every record and call: the file may run minutes after import.
NOW = int(time.time())


def code_record(code: str, expires_in: int = 60) -> AuthorizationCodeRecord:
    return AuthorizationCodeRecord(
        code_digest=digest(code),
        client_id="rp",
        redirect_uri="https://rp.test/cb",
        scope="openid",
        user_id="OPENID1",
        auth_time=1,
        expires_at=NOW + expires_in,
        nonce="n",
        code_challenge="c" * 43,
        code_challenge_method="S256",
    )


def test_schema_creation_is_idempotent(store: Store) -> None:
    store.create_schema()
    store.ping()


def test_clients_sync_replaces_config_clients(store: Store) -> None:
    store.sync_clients(
        [ClientRecord("a", digest("s"), {"redirect_uris": ["x"]}), ClientRecord("b", None, {})]
    )
    store.sync_clients([ClientRecord("b", None, {"v": 2})])
    assert store.get_client("a") is None
    b = store.get_client("b")
    assert b is not None and b.metadata == {"v": 2}


def test_login_is_consumed_once(store: Store) -> None:
    now = int(time.time())
    tx = LoginTransaction(
        digest("state"), "rp", {"state": "s", "nonce": "中文"}, digest("b"), now, now + 600
    )
    store.create_login(tx)
    assert store.login_status(digest("state")) == "pending"
    assert store.consume_login(digest("state"), digest("other browser")) is None
    assert store.login_status(digest("state")) == "pending"
    assert store.consume_login(digest("state"), digest("b")) == tx
    assert store.consume_login(digest("state"), digest("b")) is None
    assert store.login_status(digest("state")) == "used"
    assert store.consume_login(digest("unknown"), digest("b")) is None
    assert store.login_status(digest("unknown")) == "unknown"


def test_code_is_redeemed_once_and_only_before_expiry(store: Store) -> None:
    store.save_code(code_record("live"))
    assert store.consume_code(digest("live"), NOW) == code_record("live")
    assert store.consume_code(digest("live"), NOW) is None
    store.save_code(code_record("stale", expires_in=0))
    assert store.consume_code(digest("stale"), NOW) is None


def test_racing_redemptions_have_exactly_one_winner(store: Store) -> None:
    store.save_code(code_record("race"))
    wins: list[bool] = []
    barrier = threading.Barrier(10)

    def redeem() -> None:
        barrier.wait()
        wins.append(store.consume_code(digest("race"), NOW) is not None)

    threads = [threading.Thread(target=redeem) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 1 and len(wins) == 10


def test_tokens_round_trip(store: Store) -> None:
    record = TokenRecord(digest("at"), "rp", "OPENID1", "openid profile", 10, 20, 5)
    store.save_token(record)
    assert store.get_token(digest("at")) == record
    assert store.get_token(digest("other")) is None


def test_users_upsert_keeps_latest_profile(store: Store) -> None:
    store.upsert_user(UserRecord("OPENID1", None, {"nickname": "张三"}, 1))
    store.upsert_user(UserRecord("OPENID1", "UID_X", {"nickname": "张三丰"}, 2))
    user = store.get_user("OPENID1")
    assert user == UserRecord("OPENID1", "UID_X", {"nickname": "张三丰"}, 2)
    assert store.get_user("nobody") is None


def test_purge_removes_only_expired_rows(store: Store) -> None:
    now = NOW
    store.save_code(code_record("old", expires_in=-10))
    store.save_code(code_record("new"))
    store.save_token(TokenRecord(digest("old"), "rp", "U", "openid", 0, now - 1, 0))
    assert store.purge_expired(now) == 2
    assert store.consume_code(digest("new"), now) is not None


def test_driver_errors_become_storage_errors(tmp_path: Path) -> None:
    broken = SQLStore(f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite3'}")
    with pytest.raises(StorageError):
        broken.create_schema()
    with pytest.raises(StorageError):
        broken.get_user("x")


def test_upsert_without_unionid_keeps_the_stored_one(store: Store) -> None:
    store.upsert_user(UserRecord("OPENID2", "UID_Y", {"nickname": "a"}, 1))
    store.upsert_user(UserRecord("OPENID2", None, {"nickname": "b"}, 2))
    assert store.get_user("OPENID2") == UserRecord("OPENID2", "UID_Y", {"nickname": "b"}, 2)


def refresh_record(name: str, family: str = "fam", sid: str | None = None) -> RefreshTokenRecord:
    return RefreshTokenRecord(
        token_digest=digest(name),
        family_id=family,
        client_id="rp",
        user_id="U",
        scope="openid offline_access",
        auth_time=1,
        issued_at=NOW,
        expires_at=NOW + 60,
        family_expires_at=NOW + 600,
        sid=sid,
    )


def test_refresh_rotation_is_single_use_and_family_revocation_reaches_access_tokens(
    store: Store,
) -> None:
    store.save_refresh_token(refresh_record("rt1"))
    store.save_token(
        TokenRecord(digest("at1"), "rp", "U", "openid", NOW, NOW + 60, 1, family_id="fam")
    )
    assert store.rotate_refresh_token(digest("rt1"), NOW) is not None
    assert store.rotate_refresh_token(digest("rt1"), NOW) is None
    store.revoke_family("fam")
    assert store.get_token(digest("at1")).revoked  # type: ignore[union-attr]
    assert store.get_refresh_token(digest("rt1")).revoked  # type: ignore[union-attr]


def test_tokens_saved_after_a_revocation_are_born_revoked(store: Store) -> None:
    store.save_refresh_token(refresh_record("old", family="late"))
    store.revoke_family("late")
    store.save_refresh_token(refresh_record("new", family="late"))
    store.save_token(
        TokenRecord(digest("at-late"), "rp", "U", "openid", NOW, NOW + 60, 1, family_id="late")
    )
    assert store.get_refresh_token(digest("new")).revoked  # type: ignore[union-attr]
    assert store.get_token(digest("at-late")).revoked  # type: ignore[union-attr]


def test_ending_a_session_revokes_its_tokens_and_voids_its_codes(store: Store) -> None:
    store.create_session(SessionRecord("sid1", digest("cookie"), "U", 1, NOW + 600))
    assert store.find_session(digest("cookie"), NOW) is not None
    store.add_session_client("sid1", "rp", NOW + 600)
    store.save_refresh_token(refresh_record("rt-s", family="fs", sid="sid1"))
    code = AuthorizationCodeRecord(
        digest("c-s"), "rp", "https://rp/cb", "openid", "U", 1, NOW + 60, sid="sid1"
    )
    store.save_code(code)
    assert store.end_session("sid1") == ["rp"]
    assert store.find_session(digest("cookie"), NOW) is None
    assert store.get_refresh_token(digest("rt-s")).revoked  # type: ignore[union-attr]
    assert store.consume_code(digest("c-s"), NOW) is None
    store.save_token(TokenRecord(digest("at-s"), "rp", "U", "openid", NOW, NOW + 60, 1, sid="sid1"))
    assert store.get_token(digest("at-s")).revoked  # type: ignore[union-attr]


def test_jti_is_remembered_once(store: Store) -> None:
    assert store.remember_jti(digest("j1"), NOW + 60, NOW) is True
    assert store.remember_jti(digest("j1"), NOW + 60, NOW) is False


def test_upstream_tokens_round_trip(store: Store) -> None:
    assert store.get_upstream_tokens("U") is None
    store.save_upstream_tokens("U", "cipher-1", NOW + 60, NOW)
    store.save_upstream_tokens("U", "cipher-2", NOW + 90, NOW)
    assert store.get_upstream_tokens("U") == ("cipher-2", NOW + 90)
