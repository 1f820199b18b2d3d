"""The SQLAlchemy backend: SQLite by default, PostgreSQL for several instances.

Single use is enforced by the database, not by the process: a code or a login
is redeemed with one conditional UPDATE, so two threads (or two instances)
racing for it cannot both win.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine

from broker.storage import schema
from broker.storage.base import (
    AuthorizationCodeRecord,
    ClientRecord,
    LoginTransaction,
    StorageError,
    TokenRecord,
    UserRecord,
)

P = ParamSpec("P")
R = TypeVar("R")


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Turn any driver exception into StorageError so none escapes this package."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sa.exc.SQLAlchemyError as exc:
            name = type(exc).__name__
            raise StorageError(f"database error in {method.__name__}: {name}") from exc

    return wrapper


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """WAL lets readers run beside the writer; busy_timeout waits instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_engine(url: str) -> Engine:
    """An engine with settings fit for a threaded server on either backend."""
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 5})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)


class SQLStore:
    """:class:`broker.storage.base.Store` on SQLAlchemy Core."""

    def __init__(self, url: str) -> None:
        try:
            self._engine = create_engine(url)
        except (sa.exc.ArgumentError, ImportError) as exc:
            raise StorageError(f"cannot use storage.url: {exc}") from exc

    @_guarded
    def create_schema(self) -> None:
        schema.metadata.create_all(self._engine)

    @_guarded
    def ping(self) -> None:
        with self._engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def close(self) -> None:
        self._engine.dispose()

    # -- clients ---------------------------------------------------------

    @_guarded
    def sync_clients(self, clients: Sequence[ClientRecord]) -> None:
        table = schema.clients
        with self._engine.begin() as conn:
            conn.execute(sa.delete(table).where(table.c.source == "config"))
            for client in clients:
                conn.execute(sa.delete(table).where(table.c.client_id == client.client_id))
                conn.execute(
                    sa.insert(table).values(
                        client_id=client.client_id,
                        secret_digest=client.secret_digest,
                        metadata=dict(client.metadata),
                        source=client.source,
                    )
                )

    @_guarded
    def get_client(self, client_id: str) -> ClientRecord | None:
        table = schema.clients
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.client_id == client_id)).first()
        if row is None:
            return None
        return ClientRecord(
            client_id=row.client_id,
            secret_digest=row.secret_digest,
            metadata=row.metadata,
            source=row.source,
        )

    # -- login transactions ------------------------------------------------

    @_guarded
    def create_login(self, tx: LoginTransaction) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                sa.insert(schema.login_transactions).values(
                    state_digest=tx.state_digest,
                    client_id=tx.client_id,
                    request_params=dict(tx.request_params),
                    browser_digest=tx.browser_digest,
                    created_at=tx.created_at,
                    expires_at=tx.expires_at,
                    used=False,
                )
            )

    @_guarded
    def consume_login(self, state_digest: str, browser_digest: str) -> LoginTransaction | None:
        table = schema.login_transactions
        with self._engine.begin() as conn:
            taken = conn.execute(
                sa.update(table)
                .where(
                    table.c.state_digest == state_digest,
                    table.c.browser_digest == browser_digest,
                    table.c.used.is_(False),
                )
                .values(used=True)
            ).rowcount
            if taken != 1:
                return None
            row = conn.execute(sa.select(table).where(table.c.state_digest == state_digest)).one()
        return LoginTransaction(
            state_digest=row.state_digest,
            client_id=row.client_id,
            request_params=row.request_params,
            browser_digest=row.browser_digest,
            created_at=row.created_at,
            expires_at=row.expires_at,
        )

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

    # -- authorization codes -------------------------------------------------

    @_guarded
    def save_code(self, code: AuthorizationCodeRecord) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                sa.insert(schema.authorization_codes).values(
                    code_digest=code.code_digest,
                    client_id=code.client_id,
                    redirect_uri=code.redirect_uri,
                    scope=code.scope,
                    user_id=code.user_id,
                    auth_time=code.auth_time,
                    expires_at=code.expires_at,
                    nonce=code.nonce,
                    code_challenge=code.code_challenge,
                    code_challenge_method=code.code_challenge_method,
                    used=False,
                )
            )

    @_guarded
    def consume_code(self, code_digest: str, now: int) -> AuthorizationCodeRecord | None:
        table = schema.authorization_codes
        with self._engine.begin() as conn:
            taken = conn.execute(
                sa.update(table)
                .where(
                    table.c.code_digest == code_digest,
                    table.c.used.is_(False),
                    table.c.expires_at > now,
                )
                .values(used=True)
            ).rowcount
            if taken != 1:
                return None
            row = conn.execute(sa.select(table).where(table.c.code_digest == code_digest)).one()
        return AuthorizationCodeRecord(
            code_digest=row.code_digest,
            client_id=row.client_id,
            redirect_uri=row.redirect_uri,
            scope=row.scope,
            user_id=row.user_id,
            auth_time=row.auth_time,
            expires_at=row.expires_at,
            nonce=row.nonce,
            code_challenge=row.code_challenge,
            code_challenge_method=row.code_challenge_method,
        )

    # -- tokens ----------------------------------------------------------------

    @_guarded
    def save_token(self, token: TokenRecord) -> None:
        with self._engine.begin() as conn:
            conn.execute(
                sa.insert(schema.tokens).values(
                    token_digest=token.token_digest,
                    client_id=token.client_id,
                    user_id=token.user_id,
                    scope=token.scope,
                    issued_at=token.issued_at,
                    expires_at=token.expires_at,
                    auth_time=token.auth_time,
                    revoked=token.revoked,
                )
            )

    @_guarded
    def get_token(self, token_digest: str) -> TokenRecord | None:
        table = schema.tokens
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.token_digest == token_digest)).first()
        if row is None:
            return None
        return TokenRecord(
            token_digest=row.token_digest,
            client_id=row.client_id,
            user_id=row.user_id,
            scope=row.scope,
            issued_at=row.issued_at,
            expires_at=row.expires_at,
            auth_time=row.auth_time,
            revoked=bool(row.revoked),
        )

    # -- users -------------------------------------------------------------------

    @_guarded
    def upsert_user(self, user: UserRecord) -> None:
        table = schema.users
        values = {"profile": dict(user.profile), "updated_at": user.updated_at}
        with self._engine.begin() as conn:
            # A login that did not ask for the UnionID must not erase the known one.
            updated = conn.execute(
                sa.update(table)
                .where(table.c.user_id == user.user_id)
                .values(unionid=sa.func.coalesce(user.unionid, table.c.unionid), **values)
            ).rowcount
            if updated == 0:
                conn.execute(
                    sa.insert(table).values(user_id=user.user_id, unionid=user.unionid, **values)
                )

    @_guarded
    def get_user(self, user_id: str) -> UserRecord | None:
        table = schema.users
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(table).where(table.c.user_id == user_id)).first()
        if row is None:
            return None
        return UserRecord(
            user_id=row.user_id, unionid=row.unionid, profile=row.profile, updated_at=row.updated_at
        )

    # -- housekeeping ----------------------------------------------------------------

    @_guarded
    def purge_expired(self, now: int) -> int:
        removed = 0
        with self._engine.begin() as conn:
            for table in (schema.login_transactions, schema.authorization_codes, schema.tokens):
                removed += conn.execute(sa.delete(table).where(table.c.expires_at <= now)).rowcount
        return removed
