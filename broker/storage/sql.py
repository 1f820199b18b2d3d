"""The SQLAlchemy backend: SQLite by default, PostgreSQL for several instances.

Single use is enforced by the database, not by the process: a code, a login
or a refresh token is redeemed with one conditional UPDATE, so two threads (or
two instances) racing for it cannot both win.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from alembic.util import CommandError
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from broker.storage import migrate, schema
from broker.storage.base import (
    AuthorizationCodeRecord,
    ClientActivity,
    ClientRecord,
    LoginTransaction,
    RefreshTokenRecord,
    Revocation,
    SessionRecord,
    SigningKeyRecord,
    StorageError,
    TokenRecord,
    UserActivity,
    UserRecord,
)
from broker.storage.prepared import Cursor, Statements

P = ParamSpec("P")
R = TypeVar("R")
Rec = TypeVar("Rec")


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn any driver exception into StorageError so none escapes this package."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except _STORAGE_ERRORS as exc:
            raise StorageError(f"database error in {method.__name__}: {_describe(exc)}") from exc

    return wrapper


def _describe(exc: Exception) -> str:
    """The error class, and for a failed connection the driver's first line (it names the
    host and port, never the password); never the SQL or its parameters."""
    name = type(exc).__name__
    orig = exc.orig if isinstance(exc, sa.exc.OperationalError) else None
    if isinstance(exc, _DRIVER_OPERATIONAL_ERRORS):  # the prepared statements' path
        orig = exc
    if orig is not None:
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
        return f"{name} ({first[:200]})" if first else name
    return name


def _driver_modules() -> list[Any]:
    """The drivers whose own errors the prepared statements (prepared.py) raise: they run
    on the driver's cursor, without SQLAlchemy wrapping the errors."""
    import sqlite3

    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return [sqlite3]
    return [sqlite3, psycopg]


_DRIVER_OPERATIONAL_ERRORS: tuple[type[Exception], ...] = tuple(
    module.OperationalError for module in _driver_modules()
)
_STORAGE_ERRORS: tuple[type[Exception], ...] = (
    sa.exc.SQLAlchemyError,
    *(module.Error for module in _driver_modules()),
)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer; busy_timeout waits instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


#: Seconds to wait for PostgreSQL to accept a connection, and for a free pooled one:
#: when the database is down, requests fail fast with 503 instead of hanging.
CONNECT_TIMEOUT = 5
POOL_TIMEOUT = 10


def create_engine(url: str, *, pool_size: int = 10, max_overflow: int = 10) -> Engine:
    """An engine with settings fit for a threaded server on either backend."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(
        url,
        # A connection that died with the server (restart, failover) is noticed at
        # checkout and replaced, so the broker recovers without a restart.
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=POOL_TIMEOUT,
        connect_args={"connect_timeout": CONNECT_TIMEOUT},
    )


def _owners(client_id: str, user_id: str) -> tuple[str, str]:
    """Lock keys of what a bulk revocation covers (``_lock``, ``_revoke_all``), in lock order."""
    return f"client:{client_id}", f"user:{user_id}"


_FIELD_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _field_names(cls: type[Any]) -> tuple[str, ...]:
    """A record dataclass's field names, looked up once per class."""
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _values(record: Any) -> dict[str, Any]:
    """A record dataclass as column values (mappings copied to plain dicts for JSON).

    Field by field rather than ``dataclasses.asdict``, which deep-copies every value:
    records are flat, and this runs for every row the token endpoint writes.
    """
    values = {name: getattr(record, name) for name in _field_names(type(record))}
    return {k: dict(v) if isinstance(v, Mapping) else v for k, v in values.items()}


def _record(cls: type[Rec], row: Any) -> Rec:
    """Build a record dataclass from a row with the same column names."""
    return _from_mapping(cls, row._mapping)


def _from_mapping(cls: type[Rec], mapping: Mapping[str, Any]) -> Rec:
    return cls(**{name: mapping[name] for name in _field_names(cls) if name in mapping})


# Statements of the per-request paths (token, userinfo), built once. A statement object
# built per call costs more Python than the database spends on it (construction plus
# SQLAlchemy's cache key, which is memoized per object); values go in as bind parameters.
_codes, _tokens, _users = schema.authorization_codes, schema.tokens, schema.users
#: Redeem a code and read it back in one statement (RETURNING: SQLite >= 3.35, PostgreSQL).
_CONSUME_CODE = (
    sa.update(_codes)
    .where(
        _codes.c.code_digest == sa.bindparam("key"),
        _codes.c.used.is_(False),
        _codes.c.expires_at > sa.bindparam("now"),
    )
    .values(used=True)
    .returning(*_codes.c)
)
_logins = schema.login_transactions
#: Take a pending login (its browser must match) and read it back, in one statement.
_CONSUME_LOGIN = (
    sa.update(_logins)
    .where(
        _logins.c.state_digest == sa.bindparam("key"),
        _logins.c.browser_digest == sa.bindparam("browser"),
        _logins.c.used.is_(False),
    )
    .values(used=True)
    .returning(*_logins.c)
)
_GET_USER = sa.select(_users).where(_users.c.user_id == sa.bindparam("key"))
_GET_TOKEN = sa.select(_tokens).where(_tokens.c.token_digest == sa.bindparam("key"))
_INSERT_TOKEN = sa.insert(_tokens)
_INSERT_REFRESH_TOKEN = sa.insert(schema.refresh_tokens)
_REVOKE_TOKEN = (
    sa.update(_tokens).where(_tokens.c.token_digest == sa.bindparam("key")).values(revoked=True)
)
_REVOKE_FAMILY_TOKENS, _REVOKE_FAMILY_REFRESH_TOKENS = (
    sa.update(table).where(table.c.family_id == sa.bindparam("family")).values(revoked=True)
    for table in (_tokens, schema.refresh_tokens)
)


@functools.cache
def _insert_into(table: sa.Table) -> sa.Insert:
    """``INSERT INTO table``, built once; the columns come from the parameters."""
    return sa.insert(table)


@functools.cache
def _born_revoked_query(code: bool, family: bool, sid: bool) -> sa.Select[Any]:
    """The ``_born_revoked`` check for the revocations that apply (built once per shape)."""
    codes, refresh, sessions = _codes, schema.refresh_tokens, schema.sessions
    checks = []
    if code:
        checks.append(
            sa.exists().where(codes.c.code_digest == sa.bindparam("code"), codes.c.replayed)
        )
    if family:
        checks.append(
            sa.exists().where(
                refresh.c.family_id == sa.bindparam("family"), refresh.c.revoked.is_(True)
            )
        )
    if sid:
        checks.append(
            sa.exists().where(sessions.c.sid == sa.bindparam("sid"), sessions.c.ended.is_(True))
        )
    return sa.select(sa.or_(*checks))


def _lock_key(name: Any) -> Any:
    """The 64-bit advisory lock key of a lock name (PostgreSQL's own string hash)."""
    return sa.func.hashtextextended(name, 0)


@functools.cache
def _lock_statement(shared: int, exclusive: int) -> sa.Select[Any]:
    """Take ``shared`` then ``exclusive`` advisory locks (names ``s0``.., ``x0``..) in one
    round trip: PostgreSQL evaluates a select list left to right, so in that order."""
    locks = [
        sa.func.pg_advisory_xact_lock_shared(_lock_key(sa.bindparam(f"s{i}", type_=sa.Text)))
        for i in range(shared)
    ]
    locks += [
        sa.func.pg_advisory_xact_lock(_lock_key(sa.bindparam(f"x{i}", type_=sa.Text)))
        for i in range(exclusive)
    ]
    return sa.select(*locks)


class SQLiteWriterLock:
    """Queue SQLite's writers (threads, and the workers of ``server.workers``) on a lock.

    SQLite has one writer at a time. Writers that race for it meet SQLite's busy
    handler, which sleeps 1, 2, 5 ... 100 ms between retries: under load that sleep is
    most of a request's latency (a p99 of half a second and more) while the core idles.
    A lock hands over at once instead: a reentrant lock for this process's threads, then
    an ``flock`` on a file beside the database for the other processes on that file
    (pre-forked workers, ``qq-oidc-broker`` commands). ``busy_timeout`` still covers a
    writer that takes no such lock (an older version, the sqlite3 shell).
    """

    def __init__(self, database: str | None) -> None:
        self._threads = threading.RLock()
        self._depth = 0
        # A plain file path; an in-memory database (or a ``file:`` URI) has no other process.
        on_disk = database not in (None, "", ":memory:") and not str(database).startswith("file:")
        self._path = f"{database}.writer.lock" if on_disk else None
        self._fd: int | None = None

    def __enter__(self) -> None:
        self._threads.acquire()
        self._depth += 1
        if self._depth == 1 and self._path is not None:
            try:
                if self._fd is None:
                    # Opened lazily: the store may be built before a fork (serve's parent).
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except OSError:
                # No lock file (read-only directory): SQLite's busy handler still
                # serializes the processes, only more slowly.
                self._path = None

    def __exit__(self, *_exc: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._path is not None and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def close(self) -> None:
        with self._threads:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


class SQLStore:
    """:class:`broker.storage.base.Store` on SQLAlchemy Core."""

    def __init__(self, url: str, *, pool_size: int = 10, max_overflow: int = 10) -> None:
        try:
            self._engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StorageError(f"cannot use storage.url: {exc}") from exc
        self._statements = Statements(self._engine)
        # PostgreSQL locks rows, not the database: no writer lock there.
        self._writer: AbstractContextManager[Any] = (
            SQLiteWriterLock(self._engine.url.database)
            if self._engine.dialect.name == "sqlite"
            else nullcontext()
        )

    @_guarded
    def create_schema(self) -> None:
        """Migrate to the current schema (Alembic; safe when instances start together)."""
        try:
            migrate.upgrade(self._engine)
        except (OSError, CommandError) as exc:  # the lock file; a revision we do not know
            raise StorageError(f"cannot migrate the database schema: {exc}") from exc

    @_guarded
    def schema_revision(self) -> tuple[str | None, str]:
        return migrate.current_revision(self._engine), migrate.head_revision()

    @_guarded
    def ping(self) -> None:
        with self._engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self._engine.dispose()
        if isinstance(self._writer, SQLiteWriterLock):
            self._writer.close()

    @contextmanager
    def _prepared(self, *, write: bool) -> Iterator[Cursor]:
        """A cursor for the per-request statements (prepared.py), committed at the end of
        a write, which queues behind the other writers like ``_begin``."""
        with (
            self._writer if write else nullcontext(),
            self._statements.cursor(commit=write) as cursor,
        ):
            yield cursor

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        """A write transaction (``engine.begin()``), queued behind this process's other
        writers on SQLite (see ``__init__``)."""
        with self._writer, self._engine.begin() as conn:
            yield conn

    def _one(self, cls: type[Rec], table: sa.Table, *where: Any) -> Rec | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(table).where(*where)).first()
        return None if row is None else _record(cls, row)

    def _insert(self, table: sa.Table, record: Any) -> None:
        with self._begin() as conn:
            conn.execute(_insert_into(table), _values(record))

    def _upsert(
        self, conn: Connection, table: sa.Table, values: dict[str, Any], update: dict[str, Any]
    ) -> None:
        """INSERT, or UPDATE ``update`` on a primary-key conflict (nothing when empty).

        One statement, so instances doing it at once cannot both insert and fail.
        """
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(table).values(**values)
        keys = [column.name for column in table.primary_key.columns]
        if update:
            conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=update))
        else:
            conn.execute(stmt.on_conflict_do_nothing(index_elements=keys))

    @staticmethod
    def _take(conn: Connection, table: sa.Table, *where: Any) -> bool:
        """The atomic single-use step: flip ``used`` where it is still false."""
        result = conn.execute(
            sa.update(table).where(table.c.used.is_(False), *where).values(used=True)
        )
        return bool(result.rowcount == 1)

    # -- clients ---------------------------------------------------------

    @_guarded
    def sync_clients(self, clients: Sequence[ClientRecord]) -> None:
        table = schema.clients
        ids = [client.client_id for client in clients]
        with self._begin() as conn:
            conn.execute(
                sa.delete(table).where(table.c.source == "config", table.c.client_id.not_in(ids))
            )
            for client in clients:
                values = _values(client)
                self._upsert(conn, table, values, values)

    @_guarded
    def get_client(self, client_id: str) -> ClientRecord | None:
        return self._one(ClientRecord, schema.clients, schema.clients.c.client_id == client_id)

    @_guarded
    def list_clients(self) -> list[ClientRecord]:
        table = schema.clients
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(table).order_by(table.c.client_id))
            return [_record(ClientRecord, row) for row in rows]

    @_guarded
    def add_client(self, client: ClientRecord, now: int) -> bool:
        table = schema.clients
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(table).values(**_values(client))
        with self._begin() as conn:
            # One statement decides: of two operators adding the same id, one gets it.
            inserted = conn.execute(
                insert.on_conflict_do_nothing(index_elements=["client_id"]).returning(
                    table.c.client_id
                )
            ).first()
            if inserted is None:
                return False
            self._revoke_all(conn, "client_id", client.client_id, now)
            return True

    @_guarded
    def delete_client(self, client_id: str, now: int) -> Revocation | None:
        table = schema.clients
        with self._begin() as conn:
            deleted = conn.execute(
                sa.delete(table).where(table.c.client_id == client_id, table.c.source != "config")
            )
            if deleted.rowcount != 1:
                return None
            return self._revoke_all(conn, "client_id", client_id, now)

    @_guarded
    def set_client_secret(self, client_id: str, secret_digest: str) -> bool:
        table = schema.clients
        with self._begin() as conn:
            updated = conn.execute(
                sa.update(table)
                .where(table.c.client_id == client_id, table.c.source != "config")
                .values(secret_digest=secret_digest)
            )
            return bool(updated.rowcount == 1)

    # -- login transactions ------------------------------------------------

    @_guarded
    def create_login(self, tx: LoginTransaction) -> None:
        self._insert(schema.login_transactions, tx)

    @_guarded
    def consume_login(self, state_digest: str, browser_digest: str) -> LoginTransaction | None:
        params = {"key": state_digest, "browser": browser_digest}
        with self._begin() as conn:
            row = conn.execute(_CONSUME_LOGIN, params).first()
        return None if row is None else _record(LoginTransaction, row)

    @_guarded
    def login_status(self, state_digest: str) -> str:
        table = schema.login_transactions
        with self._engine.connect() as conn:
            used = conn.execute(
                sa.select(table.c.used).where(table.c.state_digest == state_digest)
            ).scalar()
        if used is None:
            return "unknown"
        return "used" if used else "pending"

    @_guarded
    def cap_pending_logins(self, browser_digest: str, keep: int) -> None:
        table = schema.login_transactions
        pending = (table.c.browser_digest == browser_digest, table.c.used.is_(False))
        with self._begin() as conn:
            newest = (
                sa.select(table.c.state_digest)
                .where(*pending)
                .order_by(table.c.created_at.desc(), table.c.state_digest)
                .limit(keep)
            )
            conn.execute(sa.delete(table).where(*pending, table.c.state_digest.not_in(newest)))

    # -- authorization codes -------------------------------------------------

    @_guarded
    def save_code(self, code: AuthorizationCodeRecord) -> None:
        self._insert(schema.authorization_codes, code)

    @_guarded
    def consume_code(self, code_digest: str, now: int) -> AuthorizationCodeRecord | None:
        with self._prepared(write=True) as db:
            row = db.first(_CONSUME_CODE, {"key": code_digest, "now": now})
        return None if row is None else _from_mapping(AuthorizationCodeRecord, row)

    @_guarded
    def code_was_used(self, code_digest: str) -> bool:
        table = schema.authorization_codes
        with self._engine.connect() as conn:
            used = conn.execute(sa.select(table.c.used).where(table.c.code_digest == code_digest))
            return bool(used.scalar())

    # -- access tokens ----------------------------------------------------------

    @_guarded
    def save_token(self, token: TokenRecord) -> None:
        self.save_issued_tokens(token, None)

    @_guarded
    def save_issued_tokens(self, access: TokenRecord, refresh: RefreshTokenRecord | None) -> None:
        """Store what one token response issued, in one transaction, born revoked if a
        revocation got there first.

        A revocation (code replay, refresh reuse, logout) updates the rows that exist;
        the request that passed its checks may save its tokens a moment later. Under
        the same lock as the revocations (``_lock``), the save sees whether one of its
        code, family or session was revoked meanwhile, and the revocation sees every
        saved row: no interleaving lets a token escape.
        """
        family = access.family_id or (refresh.family_id if refresh else None)
        code, sid = access.code_digest, access.sid
        # Prepared statements (prepared.py): this runs once per token response.
        with self._prepared(write=True) as db:
            # SQLite: the INSERT comes first, so the transaction holds the write lock
            # before it reads (writers are serialized; PostgreSQL needs the locks below).
            db.execute(_INSERT_TOKEN, _values(access))
            if refresh is not None:
                db.execute(_INSERT_REFRESH_TOKEN, _values(refresh))
            locks = self._locks(
                owners=_owners(access.client_id, access.user_id),
                code=code,
                families=[family],
                sid=sid,
            )
            if locks is not None:
                db.scalar(*locks)
            if not (code or family or sid):
                return
            revoked = _born_revoked_query(bool(code), bool(family), bool(sid))
            if db.scalar(revoked, {"code": code, "family": family, "sid": sid}):
                if family:
                    db.execute(_REVOKE_FAMILY_REFRESH_TOKENS, {"family": family})
                    db.execute(_REVOKE_FAMILY_TOKENS, {"family": family})
                db.execute(_REVOKE_TOKEN, {"key": access.token_digest})

    @_guarded
    def get_token(self, token_digest: str) -> TokenRecord | None:
        with self._prepared(write=False) as db:
            row = db.first(_GET_TOKEN, {"key": token_digest})
        return None if row is None else _from_mapping(TokenRecord, row)

    @_guarded
    def revoke_access_token(self, token_digest: str) -> None:
        with self._begin() as conn:
            conn.execute(_REVOKE_TOKEN, {"key": token_digest})

    @_guarded
    def revoke_tokens_of_code(self, code_digest: str) -> None:
        codes = schema.authorization_codes
        with self._begin() as conn:
            # Marked first (a write: SQLite's lock), so the winner of the race, if it has
            # not saved its tokens yet, saves them revoked (save_issued_tokens).
            conn.execute(
                sa.update(codes).where(codes.c.code_digest == code_digest).values(replayed=True)
            )
            self._lock(conn, code=code_digest)
            families = [
                f
                for f in conn.execute(
                    sa.select(schema.tokens.c.family_id).where(
                        schema.tokens.c.code_digest == code_digest
                    )
                ).scalars()
                if f
            ]
            self._lock(conn, families=families)
            self._revoke_families(conn, families)
            conn.execute(
                sa.update(schema.tokens)
                .where(schema.tokens.c.code_digest == code_digest)
                .values(revoked=True)
            )

    # -- refresh tokens -------------------------------------------------------------

    @_guarded
    def save_refresh_token(self, token: RefreshTokenRecord) -> None:
        with self._begin() as conn:
            conn.execute(sa.insert(schema.refresh_tokens).values(**_values(token)))
            self._lock(
                conn,
                owners=_owners(token.client_id, token.user_id),
                families=[token.family_id],
                sid=token.sid,
            )
            if self._born_revoked(conn, None, token.family_id, token.sid):
                self._revoke_families(conn, [token.family_id])

    def _lock(
        self,
        conn: Connection,
        *,
        owners: Sequence[str] = (),
        code: str | None = None,
        families: Sequence[str | None] = (),
        sid: str | None = None,
    ) -> None:
        """PostgreSQL: serialize issuing and revoking per code, family and session.

        Transaction-scoped advisory locks, always taken in the order owners, code, families
        (sorted), session, so two transactions never wait for each other in a cycle.
        ``owners`` (the client and the user a save issues for) are taken *shared*: saves
        never wait for each other on them, only for a bulk revocation holding one of them
        exclusively (``_revoke_all``), which takes no other lock.
        SQLite needs none: its writers are serialized, and these transactions write first.
        """
        locks = self._locks(owners=owners, code=code, families=families, sid=sid)
        if locks is not None:
            conn.execute(*locks)

    def _locks(
        self,
        *,
        owners: Sequence[str] = (),
        code: str | None = None,
        families: Sequence[str | None] = (),
        sid: str | None = None,
    ) -> tuple[sa.Select[Any], dict[str, str]] | None:
        """The statement and parameters of ``_lock`` (None: no lock to take)."""
        if self._engine.dialect.name != "postgresql":
            return None
        keys = [f"code:{code}"] if code else []
        keys += [f"family:{f}" for f in sorted({f for f in families if f})]
        keys += [f"session:{sid}"] if sid else []
        if not (owners or keys):
            return None
        names = {f"s{i}": owner for i, owner in enumerate(owners)}
        names.update({f"x{i}": key for i, key in enumerate(keys)})
        return _lock_statement(len(owners), len(keys)), names

    @staticmethod
    def _born_revoked(
        conn: Connection, code: str | None, family: str | None, sid: str | None
    ) -> bool:
        """Whether a revocation already covers new tokens of this code, family or session."""
        if not (code or family or sid):
            return False
        query = _born_revoked_query(bool(code), bool(family), bool(sid))
        return bool(conn.execute(query, {"code": code, "family": family, "sid": sid}).scalar())

    @_guarded
    def get_refresh_token(self, token_digest: str) -> RefreshTokenRecord | None:
        table = schema.refresh_tokens
        return self._one(RefreshTokenRecord, table, table.c.token_digest == token_digest)

    @_guarded
    def rotate_refresh_token(self, token_digest: str, now: int) -> RefreshTokenRecord | None:
        table = schema.refresh_tokens
        key = table.c.token_digest == token_digest
        live = (
            table.c.revoked.is_(False),
            table.c.expires_at > now,
            table.c.family_expires_at > now,
        )
        with self._begin() as conn:
            if not self._take(conn, table, key, *live):
                return None
            row = conn.execute(sa.select(table).where(key)).one()
        return _record(RefreshTokenRecord, row)

    @_guarded
    def revoke_family(self, family_id: str) -> None:
        with self._begin() as conn:
            self._revoke_families(conn, [family_id])  # SQLite: write first
            self._lock(conn, families=[family_id])
            self._revoke_families(conn, [family_id])  # again: rows saved while we waited

    @staticmethod
    def _revoke_families(conn: Connection, family_ids: Sequence[str]) -> None:
        if not family_ids:
            return
        for table in (schema.refresh_tokens, schema.tokens):
            conn.execute(
                sa.update(table).where(table.c.family_id.in_(family_ids)).values(revoked=True)
            )

    # -- bulk revocation (clients remove, tokens revoke), what a user has ---------------------

    @_guarded
    def revoke_client_tokens(self, client_id: str, now: int) -> Revocation:
        with self._begin() as conn:
            return self._revoke_all(conn, "client_id", client_id, now)

    @_guarded
    def revoke_user_tokens(self, user_id: str, now: int) -> Revocation:
        with self._begin() as conn:
            return self._revoke_all(conn, "user_id", user_id, now)

    def _revoke_all(self, conn: Connection, column: str, value: str, now: int) -> Revocation:
        """Revoke everything of one client or one user (``column``), counting the live rows.

        PostgreSQL: the owner's advisory lock is taken first and exclusively, so a token
        save for this owner (which holds it shared, ``_lock``) either finished before and
        is updated here, or waits and then finds its code marked replayed, its family
        revoked or its session ended, and is born revoked (``save_issued_tokens``). No
        per-family locks: a client may have more live families than PostgreSQL has lock
        slots. Tables are updated in the order the other revocations use (sessions,
        codes, refresh tokens, access tokens). SQLite: the first UPDATE takes the lock.
        """
        if self._engine.dialect.name == "postgresql":
            owner = f"{column.removesuffix('_id')}:{value}"  # as in _owners
            lock = sa.func.pg_advisory_xact_lock(sa.func.hashtextextended(owner, 0))
            conn.execute(sa.select(lock))
        sessions, codes = schema.sessions, schema.authorization_codes
        refresh, tokens = schema.refresh_tokens, schema.tokens
        ended = 0
        if column == "user_id":
            ended = conn.execute(
                sa.update(sessions)
                .where(
                    sessions.c.user_id == value,
                    sessions.c.ended.is_(False),
                    sessions.c.expires_at > now,
                )
                .values(ended=True)
            ).rowcount
        unexpired = (codes.c[column] == value, codes.c.expires_at > now)
        voided = conn.execute(
            sa.update(codes)
            .where(*unexpired, codes.c.used.is_(False))
            .values(used=True, replayed=True)
        ).rowcount
        # Redeemed a moment ago: the tokens being saved from them are born revoked.
        conn.execute(sa.update(codes).where(*unexpired).values(replayed=True))
        live_refresh = conn.execute(
            sa.update(refresh)
            .where(
                refresh.c[column] == value,
                refresh.c.revoked.is_(False),
                refresh.c.used.is_(False),
                refresh.c.expires_at > now,
                refresh.c.family_expires_at > now,
            )
            .values(revoked=True)
        ).rowcount
        # Every link, so the families read as revoked when a racing rotation saves.
        conn.execute(
            sa.update(refresh)
            .where(refresh.c[column] == value, refresh.c.revoked.is_(False))
            .values(revoked=True)
        )
        live_access = conn.execute(
            sa.update(tokens)
            .where(
                tokens.c[column] == value, tokens.c.revoked.is_(False), tokens.c.expires_at > now
            )
            .values(revoked=True)
        ).rowcount
        conn.execute(
            sa.update(tokens)
            .where(tokens.c[column] == value, tokens.c.revoked.is_(False))
            .values(revoked=True)
        )
        return Revocation(int(live_access), int(live_refresh), int(voided), int(ended))

    @_guarded
    def user_activity(self, user_id: str, now: int) -> UserActivity:
        sessions, links = schema.sessions, schema.session_clients
        tokens, refresh = schema.tokens, schema.refresh_tokens
        live_session = (
            sessions.c.user_id == user_id,
            sessions.c.ended.is_(False),
            sessions.c.expires_at > now,
        )
        per_client = {
            "sessions": sa.select(links.c.client_id, sa.func.count())
            .select_from(links.join(sessions, sessions.c.sid == links.c.sid))
            .where(*live_session, links.c.expires_at > now)
            .group_by(links.c.client_id),
            "access_tokens": sa.select(tokens.c.client_id, sa.func.count())
            .where(
                tokens.c.user_id == user_id,
                tokens.c.revoked.is_(False),
                tokens.c.expires_at > now,
            )
            .group_by(tokens.c.client_id),
            "refresh_tokens": sa.select(refresh.c.client_id, sa.func.count())
            .where(
                refresh.c.user_id == user_id,
                refresh.c.revoked.is_(False),
                refresh.c.used.is_(False),
                refresh.c.expires_at > now,
                refresh.c.family_expires_at > now,
            )
            .group_by(refresh.c.client_id),
        }
        counts: dict[str, dict[str, int]] = {}
        with self._engine.connect() as conn:
            live = conn.execute(
                sa.select(sa.func.count()).select_from(sessions).where(*live_session)
            ).scalar_one()
            for name, query in per_client.items():
                for client_id, count in conn.execute(query):
                    counts.setdefault(client_id, {})[name] = int(count)
        clients = tuple(ClientActivity(cid, **counted) for cid, counted in sorted(counts.items()))
        return UserActivity(int(live), clients)

    # -- sessions -----------------------------------------------------------------------

    @_guarded
    def create_session(self, session: SessionRecord) -> None:
        self._insert(schema.sessions, session)

    @_guarded
    def find_session(self, secret_digest: str, now: int) -> SessionRecord | None:
        table = schema.sessions
        return self._one(
            SessionRecord,
            table,
            table.c.secret_digest == secret_digest,
            table.c.ended.is_(False),
            table.c.expires_at > now,
        )

    @_guarded
    def get_session(self, sid: str) -> SessionRecord | None:
        return self._one(SessionRecord, schema.sessions, schema.sessions.c.sid == sid)

    @_guarded
    def end_session(self, sid: str) -> list[str]:
        refresh, tokens = schema.refresh_tokens, schema.tokens
        with self._begin() as conn:
            conn.execute(
                sa.update(schema.sessions).where(schema.sessions.c.sid == sid).values(ended=True)
            )
            # Codes not yet redeemed die with the session.
            codes = schema.authorization_codes
            conn.execute(sa.update(codes).where(codes.c.sid == sid).values(used=True))
            families_of_session = sa.select(refresh.c.family_id).where(refresh.c.sid == sid)
            self._lock(conn, families=list(conn.execute(families_of_session).scalars()), sid=sid)
            # After the locks: families saved meanwhile are visible now, and any saved later
            # see the session ended (save_issued_tokens).
            self._revoke_families(conn, sorted(set(conn.execute(families_of_session).scalars())))
            conn.execute(sa.update(tokens).where(tokens.c.sid == sid).values(revoked=True))
            clients = conn.execute(
                sa.select(schema.session_clients.c.client_id).where(
                    schema.session_clients.c.sid == sid
                )
            ).scalars()
            return sorted(clients)

    @_guarded
    def add_session_client(self, sid: str, client_id: str, expires_at: int) -> None:
        table = schema.session_clients
        values = {"sid": sid, "client_id": client_id, "expires_at": expires_at}
        with self._begin() as conn:
            self._upsert(conn, table, values, {})

    # -- users -----------------------------------------------------------------------------

    @_guarded
    def upsert_user(self, user: UserRecord) -> None:
        table = schema.users
        values = {"profile": dict(user.profile), "updated_at": user.updated_at}
        # A login that did not ask for the UnionID must not erase the known one.
        unionid = sa.func.coalesce(user.unionid, table.c.unionid)
        with self._begin() as conn:
            self._upsert(
                conn,
                table,
                {"user_id": user.user_id, "unionid": user.unionid, **values},
                {"unionid": unionid, **values},
            )

    @_guarded
    def get_user(self, user_id: str) -> UserRecord | None:
        with self._prepared(write=False) as db:
            row = db.first(_GET_USER, {"key": user_id})
        return None if row is None else _from_mapping(UserRecord, row)

    @_guarded
    def find_user_by_unionid(self, unionid: str) -> UserRecord | None:
        return self._one(UserRecord, schema.users, schema.users.c.unionid == unionid)

    # -- upstream tokens, replay cache ------------------------------------------------------

    @_guarded
    def save_upstream_tokens(
        self, user_id: str, ciphertext: str, expires_at: int, now: int
    ) -> None:
        table = schema.upstream_tokens
        values = {"ciphertext": ciphertext, "expires_at": expires_at, "updated_at": now}
        with self._begin() as conn:
            self._upsert(conn, table, {"user_id": user_id, **values}, values)

    @_guarded
    def get_upstream_tokens(self, user_id: str) -> tuple[str, int] | None:
        table = schema.upstream_tokens
        with self._engine.connect() as conn:
            row = conn.execute(
                sa.select(table.c.ciphertext, table.c.expires_at).where(table.c.user_id == user_id)
            ).first()
        return None if row is None else (row.ciphertext, row.expires_at)

    @_guarded
    def remember_jti(self, jti_digest: str, expires_at: int, now: int) -> bool:
        table = schema.used_jtis
        try:
            with self._begin() as conn:
                conn.execute(sa.delete(table).where(table.c.expires_at <= now))
                conn.execute(sa.insert(table).values(jti_digest=jti_digest, expires_at=expires_at))
        except sa.exc.IntegrityError:
            return False
        return True

    # -- keys, shared secrets, leases -------------------------------------------------------

    @_guarded
    def list_signing_keys(self) -> list[SigningKeyRecord]:
        table = schema.signing_keys
        with self._engine.connect() as conn:
            rows = conn.execute(sa.select(table).order_by(table.c.activates_at, table.c.kid))
            return [_record(SigningKeyRecord, row) for row in rows]

    @_guarded
    def add_signing_key(self, key: SigningKeyRecord) -> None:
        self._insert(schema.signing_keys, key)

    @_guarded
    def retire_signing_key(self, kid: str, now: int) -> bool:
        table = schema.signing_keys
        with self._begin() as conn:
            result = conn.execute(
                sa.update(table)
                .where(table.c.kid == kid, table.c.retired_at.is_(None))
                .values(retired_at=now)
            )
            return bool(result.rowcount == 1)

    @_guarded
    def get_or_create_secret(self, name: str, value: str) -> str:
        table = schema.broker_secrets
        with self._begin() as conn:
            self._upsert(conn, table, {"name": name, "value": value}, {})
            stored: str = conn.execute(
                sa.select(table.c.value).where(table.c.name == name)
            ).scalar_one()
            return stored

    @_guarded
    def acquire_lease(self, name: str, holder: str, now: int, ttl: int) -> bool:
        table = schema.leases
        with self._begin() as conn:
            self._upsert(conn, table, {"name": name, "holder": holder, "expires_at": 0}, {})
            # One conditional UPDATE: of instances racing for a free lease, one matches.
            taken = conn.execute(
                sa.update(table)
                .where(
                    table.c.name == name,
                    sa.or_(table.c.expires_at <= now, table.c.holder == holder),
                )
                .values(holder=holder, expires_at=now + ttl)
            )
            return bool(taken.rowcount == 1)

    # -- housekeeping ----------------------------------------------------------------------

    @_guarded
    def purge_expired(self, now: int, batch: int = 500) -> int:
        """Delete expired rows, ``batch`` at a time, each batch its own short transaction.

        Refresh tokens go when their whole family has expired (a used link must stay
        until then so that its reuse is recognised), authorization codes when they have
        expired and no token issued from them is left (tokens go first, in this call).
        On PostgreSQL rows another instance is deleting are skipped (``SKIP LOCKED``), so
        purges never queue.
        """
        expiring = [
            (table, table.c.expires_at <= now)
            for table in (
                schema.login_transactions,
                schema.tokens,
                schema.sessions,
                schema.session_clients,
                schema.used_jtis,
                schema.upstream_tokens,
            )
        ]
        refresh, codes, tokens = schema.refresh_tokens, schema.authorization_codes, schema.tokens
        expiring.append((refresh, refresh.c.family_expires_at <= now))
        # A redeemed code stays while a token issued from it is stored, so that a replay
        # still revokes them (RFC 6749 §4.1.2) however long after the code's own minute.
        issued = sa.exists().where(tokens.c.code_digest == codes.c.code_digest)
        expiring.append((codes, sa.and_(codes.c.expires_at <= now, ~issued)))
        removed = 0
        for table, expired in expiring:
            while True:
                count = self._purge_batch(table, expired, batch)
                removed += count
                if count < batch:
                    break
        return removed

    def _purge_batch(self, table: sa.Table, expired: Any, batch: int) -> int:
        key = sa.tuple_(*table.primary_key.columns)
        victims = (
            sa.select(*table.primary_key.columns)
            .where(expired)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        with self._begin() as conn:
            return int(conn.execute(sa.delete(table).where(key.in_(victims))).rowcount)
