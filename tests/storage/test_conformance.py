"""Storage conformance: every backend must pass these (Dex-style), through the Store interface only.

Each test runs on SQLite (a file in tmp_path) and on the machine's real PostgreSQL
(a throwaway schema in database ``test``, see tests/pg.py).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from broker.storage import (
    AuthorizationCodeRecord,
    ClientRecord,
    LoginTransaction,
    SQLStore,
    StorageError,
    Store,
    TokenRecord,
    UserRecord,
    schema,
)
from broker.storage.base import (
    ClientActivity,
    RefreshTokenRecord,
    Revocation,
    SessionRecord,
    SigningKeyRecord,
    UserActivity,
    digest,
)
from tests.pg import fresh_schema
from tests.servers import free_port


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        backend = SQLStore(f"sqlite:///{tmp_path / 'conformance.sqlite3'}")
        backend.create_schema()
        yield backend
        backend.close()
        return
    with fresh_schema("conf") as url:
        backend = SQLStore(url, pool_size=12, max_overflow=12)
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


def test_a_redeemed_code_outlives_its_expiry_while_its_tokens_are_stored(store: Store) -> None:
    """A replay must still find the code to revoke what it issued (RFC 6749 §4.1.2)."""
    store.save_code(code_record("issued"))
    assert store.consume_code(digest("issued"), NOW) is not None
    token = TokenRecord(
        digest("at-of-issued"), "rp", "U", "openid", NOW, NOW + 3600, NOW,
        code_digest=digest("issued"),
    )  # fmt: skip
    store.save_token(token)
    later = NOW + 61  # the code has expired, its token has not
    assert store.purge_expired(later) == 0
    assert store.code_was_used(digest("issued"))  # a replay now is recognised...
    store.revoke_tokens_of_code(digest("issued"))
    revoked = store.get_token(token.token_digest)
    assert revoked is not None and revoked.revoked  # ...and revokes what it issued
    # Once its token has expired, both go in one purge (tokens first).
    assert store.purge_expired(NOW + 3601) == 2
    assert not store.code_was_used(digest("issued"))


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


# --------------------------------------------------------------------------- races
# Instances share nothing but the database: N threads with their own pooled
# connections stand in for N instances racing for the same row.

RACERS = 10


def race(action: Callable[[int], object], racers: int = RACERS) -> list[object]:
    """Run ``action(i)`` on ``racers`` threads released together; re-raise any error."""
    barrier = threading.Barrier(racers)

    def run(i: int) -> object:
        barrier.wait()
        return action(i)

    with ThreadPoolExecutor(racers) as pool:
        return list(pool.map(run, range(racers)))


def test_racing_refresh_rotations_have_exactly_one_winner(store: Store) -> None:
    store.save_refresh_token(refresh_record("rt-race", family="race"))
    results = race(lambda _: store.rotate_refresh_token(digest("rt-race"), NOW))
    assert sum(r is not None for r in results) == 1


def test_racing_login_callbacks_have_exactly_one_winner(store: Store) -> None:
    tx = LoginTransaction(digest("st-race"), "rp", {"state": "s"}, digest("b"), NOW, NOW + 600)
    store.create_login(tx)
    results = race(lambda _: store.consume_login(digest("st-race"), digest("b")))
    assert sum(r is not None for r in results) == 1


def test_racing_jti_records_have_exactly_one_first_use(store: Store) -> None:
    results = race(lambda _: store.remember_jti(digest("jti-race"), NOW + 60, NOW))
    assert results.count(True) == 1


def test_racing_upserts_and_session_clients_do_not_fail(store: Store) -> None:
    store.create_session(SessionRecord("sid-race", digest("c-race"), "U", 1, NOW + 600))
    race(lambda i: store.upsert_user(UserRecord("U-race", None, {"n": i}, i)))
    race(lambda _: store.add_session_client("sid-race", "rp", NOW + 600))
    race(lambda i: store.save_upstream_tokens("U-race", f"c{i}", NOW + 60, NOW))
    user = store.get_user("U-race")
    assert user is not None and user.profile["n"] in range(RACERS)
    assert store.end_session("sid-race") == ["rp"]


def test_racing_client_syncs_leave_the_config_clients(store: Store) -> None:
    clients = [ClientRecord(f"c{i}", digest("s"), {"redirect_uris": ["x"]}) for i in range(3)]
    race(lambda _: store.sync_clients(clients), racers=4)
    assert all(store.get_client(f"c{i}") is not None for i in range(3))


# A revocation racing with the save of the tokens it must reach (the winner of a code
# or refresh race saves a moment after it won; another instance logs the user out).
# Whatever the interleaving, the saved tokens must end up revoked. Each race runs
# several rounds because any one round hits the bad timing only sometimes.

ROUNDS = 12


def issued(name: str, family: str, code: str | None = None, sid: str | None = None) -> tuple[
    TokenRecord, RefreshTokenRecord
]:
    access = TokenRecord(
        digest(f"at-{name}"), "rp", "U", "openid", NOW, NOW + 60, 1,
        sid=sid, family_id=family, code_digest=digest(code) if code else None,
    )  # fmt: skip
    refresh = dataclasses.replace(refresh_record(f"rt-{name}", family=family), sid=sid)
    return access, refresh


def save_racing(
    store: Store, access: TokenRecord, refresh: RefreshTokenRecord, revoke: Callable[[], object]
) -> None:
    """Save one token response while ``revoke`` runs on another thread; both must end
    revoked, whichever got there first."""
    race(lambda i: store.save_issued_tokens(access, refresh) if i == 0 else revoke(), racers=2)
    saved_access = store.get_token(access.token_digest)
    saved_refresh = store.get_refresh_token(refresh.token_digest)
    assert saved_access is not None and saved_access.revoked
    assert saved_refresh is not None and saved_refresh.revoked


def test_a_code_replay_racing_the_winners_save_revokes_what_it_saves(store: Store) -> None:
    for n in range(ROUNDS):
        code = f"raced-code-{n}"
        store.save_code(code_record(code))
        assert store.consume_code(digest(code), NOW) is not None  # the winner
        access, refresh = issued(f"code-{n}", f"code-fam-{n}", code=code)
        save_racing(store, access, refresh, lambda c=code: store.revoke_tokens_of_code(digest(c)))


def test_a_refresh_reuse_racing_the_winners_save_revokes_what_it_saves(store: Store) -> None:
    for n in range(ROUNDS):
        family = f"reuse-fam-{n}"
        store.save_refresh_token(refresh_record(f"first-{n}", family=family))
        assert store.rotate_refresh_token(digest(f"first-{n}"), NOW) is not None
        access, refresh = issued(f"reuse-{n}", family)
        save_racing(store, access, refresh, lambda f=family: store.revoke_family(f))


def test_a_logout_racing_a_token_save_revokes_what_it_saves(store: Store) -> None:
    for n in range(ROUNDS):
        sid = f"raced-sid-{n}"
        store.create_session(SessionRecord(sid, digest(f"cookie-{n}"), "U", 1, NOW + 600))
        access, refresh = issued(f"logout-{n}", f"logout-fam-{n}", sid=sid)
        save_racing(store, access, refresh, lambda s=sid: store.end_session(s))


# --------------------------------------------------------------------------- expiry


def test_expired_sessions_and_refresh_tokens_are_not_live(store: Store) -> None:
    store.create_session(SessionRecord("sid-old", digest("old-cookie"), "U", 1, NOW - 1))
    assert store.find_session(digest("old-cookie"), NOW) is None
    assert store.get_session("sid-old") is not None  # kept for logout until purged
    idle = dataclasses.replace(refresh_record("rt-idle"), expires_at=NOW - 1)
    family = dataclasses.replace(refresh_record("rt-fam"), family_expires_at=NOW - 1)
    store.save_refresh_token(idle)
    store.save_refresh_token(family)
    assert store.rotate_refresh_token(digest("rt-idle"), NOW) is None
    assert store.rotate_refresh_token(digest("rt-fam"), NOW) is None


def test_purge_covers_every_expiring_record_in_small_batches(store: Store) -> None:
    old = NOW - 10
    for i in range(5):
        store.save_code(code_record(f"old-code-{i}", expires_in=-10))
        store.create_login(
            LoginTransaction(digest(f"old-st-{i}"), "rp", {}, digest("b"), old - 600, old)
        )
    store.save_token(TokenRecord(digest("old-at"), "rp", "U", "openid", 0, old, 0))
    store.create_session(SessionRecord("sid-p", digest("p-cookie"), "U", 1, old))
    store.add_session_client("sid-p", "rp", old)
    store.remember_jti(digest("old-jti"), old, old - 60)
    store.save_upstream_tokens("U-old", "c", old, old - 60)
    # A used refresh link stays until its whole family expires (reuse detection).
    store.save_refresh_token(dataclasses.replace(refresh_record("rt-live"), expires_at=old))
    store.save_refresh_token(
        dataclasses.replace(refresh_record("rt-dead", family="dead"), family_expires_at=old)
    )
    store.save_code(code_record("fresh"))
    assert store.purge_expired(NOW, batch=2) == 5 + 5 + 1 + 1 + 1 + 1 + 1 + 1
    assert store.get_refresh_token(digest("rt-live")) is not None
    assert store.get_refresh_token(digest("rt-dead")) is None
    assert store.get_session("sid-p") is None
    assert store.get_upstream_tokens("U-old") is None
    assert store.consume_code(digest("fresh"), NOW) is not None
    assert store.purge_expired(NOW, batch=2) == 0


def test_purges_on_every_instance_at_once_remove_each_row_once(store: Store) -> None:
    for i in range(40):
        store.save_code(code_record(f"bulk-{i}", expires_in=-10))
    removed = race(lambda _: store.purge_expired(NOW, batch=3), racers=4)
    assert sum(int(r) for r in removed) == 40  # type: ignore[call-overload]


# --------------------------------------------------------------------------- keys, secrets, leases


def key_record(kid: str, activates_at: int) -> SigningKeyRecord:
    return SigningKeyRecord(kid, "RS256", f"v1.cipher-{kid}", activates_at - 10, activates_at)


def test_signing_keys_are_listed_in_activation_order_and_retired_once(store: Store) -> None:
    store.add_signing_key(key_record("k2", NOW + 100))
    store.add_signing_key(key_record("k1", NOW))
    assert [k.kid for k in store.list_signing_keys()] == ["k1", "k2"]
    assert store.list_signing_keys()[0] == key_record("k1", NOW)
    assert store.retire_signing_key("k1", NOW) is True
    assert store.retire_signing_key("k1", NOW + 1) is False
    assert store.retire_signing_key("nope", NOW) is False
    assert store.list_signing_keys()[0].retired_at == NOW
    with pytest.raises(StorageError):  # a kid is unique
        store.add_signing_key(key_record("k2", NOW))


def test_first_stored_secret_wins_for_every_racer(store: Store) -> None:
    values = race(lambda i: store.get_or_create_secret("secret_key", f"value-{i}"))
    assert len(set(values)) == 1
    assert store.get_or_create_secret("secret_key", "later") == values[0]


def test_a_lease_has_one_holder_until_it_expires(store: Store) -> None:
    won = race(lambda i: store.acquire_lease("rotation", f"h{i}", NOW, 60))
    assert won.count(True) == 1
    holder = f"h{won.index(True)}"
    assert store.acquire_lease("rotation", holder, NOW + 30, 60) is True  # renewal
    assert store.acquire_lease("rotation", "other", NOW + 60, 60) is False
    assert store.acquire_lease("rotation", "other", NOW + 91, 60) is True  # expired


# --------------------------------------------------------------------------- failures


def broken_stores(tmp_path: Path) -> list[SQLStore]:
    """A SQLite file in a missing directory, and a PostgreSQL port nobody listens on."""
    return [
        SQLStore(f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite3'}"),
        SQLStore(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"),
    ]


STORE_CALLS: list[tuple[str, tuple[object, ...]]] = [
    ("create_schema", ()),
    ("schema_revision", ()),
    ("ping", ()),
    ("get_client", ("c",)),
    ("sync_clients", ([ClientRecord("c", None, {})],)),
    ("list_clients", ()),
    ("add_client", (ClientRecord("c", None, {}, "cli"), NOW)),
    ("delete_client", ("c", NOW)),
    ("set_client_secret", ("c", "d")),
    ("revoke_client_tokens", ("rp", NOW)),
    ("revoke_user_tokens", ("U", NOW)),
    ("user_activity", ("U", NOW)),
    ("create_login", (LoginTransaction("d", "rp", {}, "b", 0, 1),)),
    ("consume_login", ("d", "b")),
    ("login_status", ("d",)),
    ("cap_pending_logins", ("b", 1)),
    ("save_code", (code_record("x"),)),
    ("consume_code", ("d", NOW)),
    ("code_was_used", ("d",)),
    ("save_token", (TokenRecord("d", "rp", "U", "openid", 0, 1, 0),)),
    ("save_issued_tokens", (TokenRecord("d", "rp", "U", "openid", 0, 1, 0), None)),
    ("get_token", ("d",)),
    ("revoke_access_token", ("d",)),
    ("revoke_tokens_of_code", ("d",)),
    ("save_refresh_token", (refresh_record("x"),)),
    ("get_refresh_token", ("d",)),
    ("rotate_refresh_token", ("d", NOW)),
    ("revoke_family", ("f",)),
    ("create_session", (SessionRecord("s", "d", "U", 1, 2),)),
    ("find_session", ("d", NOW)),
    ("get_session", ("s",)),
    ("end_session", ("s",)),
    ("add_session_client", ("s", "rp", 1)),
    ("upsert_user", (UserRecord("U", None, {}, 1),)),
    ("get_user", ("U",)),
    ("find_user_by_unionid", ("X",)),
    ("save_upstream_tokens", ("U", "c", 1, 0)),
    ("get_upstream_tokens", ("U",)),
    ("remember_jti", ("d", 1, 0)),
    ("list_signing_keys", ()),
    ("add_signing_key", (key_record("k", 1),)),
    ("retire_signing_key", ("k", 1)),
    ("get_or_create_secret", ("n", "v")),
    ("acquire_lease", ("n", "h", 0, 1)),
    ("purge_expired", (NOW,)),
]


def test_every_store_call_is_in_the_failure_matrix() -> None:
    public = {
        name
        for name in dir(SQLStore)
        if not name.startswith("_") and callable(getattr(SQLStore, name))
    }
    assert public - {"close"} == {name for name, _ in STORE_CALLS}


def test_driver_errors_never_escape_the_storage_package(tmp_path: Path) -> None:
    for broken in broken_stores(tmp_path):
        for name, args in STORE_CALLS:
            with pytest.raises(StorageError):
                getattr(broken, name)(*args)
        broken.close()


def test_a_table_that_disappears_gives_storage_errors_and_recovers(store: Store) -> None:
    """A table dropped under a running store (a restore gone wrong): errors, not crashes;
    once it is back, the same store object works again without a restart."""
    store.upsert_user(UserRecord("U-gone", None, {}, 1))
    engine = store._engine  # type: ignore[attr-defined]  # fault injection needs the engine
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE users"))
    with pytest.raises(StorageError):
        store.get_user("U-gone")
    with pytest.raises(StorageError):
        store.upsert_user(UserRecord("U-gone", None, {}, 2))
    schema.users.create(engine)
    assert store.get_user("U-gone") is None
    store.upsert_user(UserRecord("U-gone", None, {}, 3))
    assert store.get_user("U-gone") is not None


# --------------------------------------------------------------------------- clients, revocation


def cli_client(client_id: str, secret: str | None = "s") -> ClientRecord:
    metadata = {"redirect_uris": ["https://rp.test/cb"], "token_endpoint_auth_method": "none"}
    return ClientRecord(client_id, digest(secret) if secret else None, metadata, "cli")


def test_cli_clients_are_added_once_and_outlive_config_syncs(store: Store) -> None:
    store.sync_clients([ClientRecord("conf", digest("c"), {"redirect_uris": ["x"]})])
    assert store.add_client(cli_client("cli-b"), NOW) is True
    assert store.add_client(cli_client("cli-a"), NOW) is True
    assert store.add_client(cli_client("cli-a", "other"), NOW) is False  # nothing changed
    assert store.add_client(cli_client("conf"), NOW) is False
    assert store.get_client("cli-a") == cli_client("cli-a")
    assert store.get_client("conf").source == "config"  # type: ignore[union-attr]
    assert [c.client_id for c in store.list_clients()] == ["cli-a", "cli-b", "conf"]
    store.sync_clients([])  # a config without clients removes config rows only
    assert [c.client_id for c in store.list_clients()] == ["cli-a", "cli-b"]


def test_only_cli_clients_get_new_secrets_or_are_deleted(store: Store) -> None:
    store.sync_clients([ClientRecord("conf", digest("c"), {})])
    store.add_client(cli_client("cli"), NOW)
    assert store.set_client_secret("cli", digest("new")) is True
    assert store.get_client("cli").secret_digest == digest("new")  # type: ignore[union-attr]
    assert store.set_client_secret("conf", digest("new")) is False
    assert store.get_client("conf").secret_digest == digest("c")  # type: ignore[union-attr]
    assert store.set_client_secret("nobody", digest("new")) is False
    assert store.delete_client("conf", NOW) is None
    assert store.get_client("conf") is not None
    assert store.delete_client("cli", NOW) == Revocation()
    assert store.get_client("cli") is None
    assert store.delete_client("cli", NOW) is None


def seed_tokens(store: Store, client: str, user: str, name: str, sid: str | None = None) -> None:
    """For one client and user: a live access token and refresh family (with a used link),
    an expired access token, an unredeemed code and a redeemed one."""
    family = f"fam-{name}"
    store.save_refresh_token(
        dataclasses.replace(
            refresh_record(f"used-{name}", family=family), client_id=client, user_id=user, sid=sid
        )
    )
    assert store.rotate_refresh_token(digest(f"used-{name}"), NOW) is not None
    access, refresh = issued(name, family, sid=sid)
    store.save_issued_tokens(
        dataclasses.replace(access, client_id=client, user_id=user),
        dataclasses.replace(refresh, client_id=client, user_id=user),
    )
    store.save_token(TokenRecord(digest(f"old-{name}"), client, user, "openid", 0, NOW - 1, 0))
    for code in (f"code-{name}", f"redeemed-{name}"):
        store.save_code(dataclasses.replace(code_record(code), client_id=client, user_id=user))
    assert store.consume_code(digest(f"redeemed-{name}"), NOW) is not None


def revoked(store: Store, name: str) -> tuple[bool, bool, bool]:
    """(access token, refresh token, unredeemed code) of ``seed_tokens(name)`` are dead."""
    access = store.get_token(digest(f"at-{name}"))
    refresh = store.get_refresh_token(digest(f"rt-{name}"))
    assert access is not None and refresh is not None
    code_dead = store.consume_code(digest(f"code-{name}"), NOW) is None
    return access.revoked, refresh.revoked, code_dead


def test_revoking_a_clients_tokens_reaches_all_of_them_and_nothing_else(store: Store) -> None:
    seed_tokens(store, "rp-x", "U1", "x1")
    seed_tokens(store, "rp-x", "U2", "x2")
    seed_tokens(store, "rp-y", "U1", "y1")
    done = store.revoke_client_tokens("rp-x", NOW)
    assert done == Revocation(access_tokens=2, refresh_tokens=2, codes=2, sessions=0)
    assert revoked(store, "x1") == revoked(store, "x2") == (True, True, True)
    assert store.get_refresh_token(digest("used-x1")).revoked  # type: ignore[union-attr]
    assert store.get_token(digest("at-y1")).revoked is False  # type: ignore[union-attr]
    assert store.rotate_refresh_token(digest("rt-y1"), NOW) is not None
    # What is issued later from the revoked families or redeemed codes is born revoked.
    late, late_refresh = issued("late", "fam-x1", code="redeemed-x2")
    store.save_issued_tokens(
        dataclasses.replace(late, client_id="rp-x"),
        dataclasses.replace(late_refresh, client_id="rp-x"),
    )
    assert store.get_token(digest("at-late")).revoked  # type: ignore[union-attr]
    assert store.get_refresh_token(digest("rt-late")).revoked  # type: ignore[union-attr]
    assert store.revoke_client_tokens("rp-x", NOW) == Revocation()  # live ones only are counted


def test_revoking_a_users_tokens_ends_their_sessions(store: Store) -> None:
    store.create_session(SessionRecord("sid-u", digest("cookie-u"), "U1", 1, NOW + 600))
    store.create_session(SessionRecord("sid-v", digest("cookie-v"), "U2", 1, NOW + 600))
    seed_tokens(store, "rp-x", "U1", "u-x", sid="sid-u")
    seed_tokens(store, "rp-y", "U1", "u-y")
    seed_tokens(store, "rp-x", "U2", "v-x", sid="sid-v")
    done = store.revoke_user_tokens("U1", NOW)
    assert done == Revocation(access_tokens=2, refresh_tokens=2, codes=2, sessions=1)
    assert revoked(store, "u-x") == revoked(store, "u-y") == (True, True, True)
    assert store.find_session(digest("cookie-u"), NOW) is None
    assert store.find_session(digest("cookie-v"), NOW) is not None
    assert store.get_token(digest("at-v-x")).revoked is False  # type: ignore[union-attr]
    store.save_token(
        TokenRecord(digest("at-sso"), "rp-z", "U1", "openid", NOW, NOW + 60, 1, sid="sid-u")
    )
    assert store.get_token(digest("at-sso")).revoked  # type: ignore[union-attr]


def test_removing_a_client_revokes_its_tokens_and_a_new_one_inherits_none(store: Store) -> None:
    store.add_client(cli_client("rp-gone"), NOW)
    seed_tokens(store, "rp-gone", "U1", "gone")
    assert store.delete_client("rp-gone", NOW) == Revocation(1, 1, 1, 0)
    assert revoked(store, "gone") == (True, True, True)
    # Tokens saved for the id after its removal (an instance's stale cache) die when it
    # is registered again.
    seed_tokens(store, "rp-gone", "U1", "stale")
    assert store.add_client(cli_client("rp-gone"), NOW) is True
    assert revoked(store, "stale") == (True, True, True)


def test_user_activity_counts_live_sessions_and_tokens_per_client(store: Store) -> None:
    assert store.user_activity("U1", NOW) == UserActivity(sessions=0)
    store.create_session(SessionRecord("sid-a", digest("ca"), "U1", 1, NOW + 600))
    store.create_session(SessionRecord("sid-old", digest("co"), "U1", 1, NOW - 1))
    store.create_session(SessionRecord("sid-other", digest("cx"), "U2", 1, NOW + 600))
    store.add_session_client("sid-a", "rp-x", NOW + 600)
    store.add_session_client("sid-a", "rp-s", NOW + 600)
    store.add_session_client("sid-old", "rp-x", NOW + 600)
    store.add_session_client("sid-other", "rp-x", NOW + 600)
    seed_tokens(store, "rp-x", "U1", "a1", sid="sid-a")
    seed_tokens(store, "rp-y", "U1", "a2")
    seed_tokens(store, "rp-x", "U2", "a3")
    store.save_token(TokenRecord(digest("at-a4"), "rp-y", "U1", "openid", NOW, NOW + 60, 1))
    store.revoke_access_token(digest("at-a2"))
    assert store.user_activity("U1", NOW) == UserActivity(
        sessions=1,
        clients=(
            ClientActivity("rp-s", sessions=1),
            ClientActivity("rp-x", sessions=1, access_tokens=1, refresh_tokens=1),
            ClientActivity("rp-y", access_tokens=1, refresh_tokens=1),
        ),
    )


def test_a_client_revocation_racing_token_saves_revokes_what_they_save(store: Store) -> None:
    for n in range(ROUNDS):
        code = f"bulk-code-{n}"
        store.save_code(code_record(code))
        assert store.consume_code(digest(code), NOW) is not None  # the winner, about to save
        access, refresh = issued(f"bulk-c-{n}", f"bulk-c-fam-{n}", code=code)
        save_racing(store, access, refresh, lambda: store.revoke_client_tokens("rp", NOW))
        family = f"bulk-r-fam-{n}"
        store.save_refresh_token(refresh_record(f"bulk-first-{n}", family=family))
        assert store.rotate_refresh_token(digest(f"bulk-first-{n}"), NOW) is not None
        access, refresh = issued(f"bulk-r-{n}", family)
        save_racing(store, access, refresh, lambda: store.revoke_client_tokens("rp", NOW))


def test_a_user_revocation_racing_token_saves_revokes_what_they_save(store: Store) -> None:
    for n in range(ROUNDS):
        sid = f"bulk-sid-{n}"
        store.create_session(SessionRecord(sid, digest(f"bulk-cookie-{n}"), "U", 1, NOW + 600))
        code = f"bulk-u-code-{n}"
        store.save_code(code_record(code))
        assert store.consume_code(digest(code), NOW) is not None
        access, refresh = issued(f"bulk-u-{n}", f"bulk-u-fam-{n}", code=code, sid=sid)
        save_racing(store, access, refresh, lambda: store.revoke_user_tokens("U", NOW))
