"""The machine's real PostgreSQL for tests: one throwaway schema per use.

``BROKER_TEST_PG`` overrides the server URL. When the server does not answer the
tests that need it are skipped with the reason, and under ``CI=true`` a skip fails
the run (tests/conftest.py), so CI can never pass without PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from urllib.parse import quote

import pytest
import sqlalchemy as sa

PG_URL = os.environ.get("BROKER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@cache
def pg_unavailable() -> str | None:
    """Why PostgreSQL cannot be used, or None when it answers."""
    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__})"
    finally:
        engine.dispose()
    return None


def require_pg() -> None:
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason + "; start it: pg_ctlcluster --skip-systemctl-redirect 15 main start")


def url_with_search_path(schema: str, base: str = PG_URL) -> str:
    """A URL whose connections see only ``schema`` (libpq ``options``)."""
    separator = "&" if "?" in base else "?"
    return f"{base}{separator}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def fresh_schema(prefix: str = "t") -> Iterator[str]:
    """Create an empty schema, yield a storage URL confined to it, drop it afterwards."""
    require_pg()
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
        yield url_with_search_path(name)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()
