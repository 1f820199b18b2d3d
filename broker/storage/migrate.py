"""Schema migrations with Alembic: ``qq-oidc-broker db upgrade`` and the upgrade on start.

Why it is built this way:

* **One lock, many instances.** Several instances may start at once with
  ``storage.auto_upgrade``; the migration runs under a PostgreSQL advisory lock
  (or an ``flock`` beside a SQLite file), and whoever waits finds the schema at
  head and does nothing.
* **Databases from before migrations.** Version 0.1 created its tables with
  ``metadata.create_all`` and has no ``alembic_version``; such a database is
  stamped at the first revision (which is exactly that schema) and upgraded.
* **No ini file.** The script location is inside the package, so an installed
  wheel migrates the same way as a checkout.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("broker.storage")

MIGRATIONS: Final = Path(__file__).with_name("migrations")
#: The revision whose schema is what ``create_all`` built before Alembic was used.
BASELINE: Final = "0001"
#: Any constant works; it only has to be the same in every instance.
_PG_LOCK_ID: Final = 0x71710001


def _alembic_config(connection: Connection) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None, "the migrations directory has no revisions"
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision; ``BASELINE`` for a pre-Alembic database, None when empty."""
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
        if revision is None and sa.inspect(conn).has_table("clients"):
            return BASELINE
        return revision


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Migrate to head under the migration lock; returns (revision before, revision after)."""
    with _migration_lock(engine), engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_LOCK_ID)))
        config = _alembic_config(conn)
        before = MigrationContext.configure(conn).get_current_revision()
        if before is None and sa.inspect(conn).has_table("clients"):
            command.stamp(config, BASELINE)
            before = BASELINE
        command.upgrade(config, "head")
        head = head_revision()
        if before != head:
            log.info("database schema upgraded from %s to %s", before or "empty", head)
        return before, head


@contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """SQLite has no advisory locks: an ``flock`` beside the database file stands in."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or database.startswith("file:"):
        yield
        return
    lock_path = f"{database}.migrate.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
