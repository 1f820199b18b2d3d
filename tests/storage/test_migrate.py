"""Schema migrations: Alembic from an empty database, from a pre-migration (0.1)
database, concurrently from several instances, and the operator's commands."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from broker.storage import SQLStore, UserRecord, migrate, schema
from tests.pg import fresh_schema
from tests.test_cli import run, write_config


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.sqlite3'}"
        return
    with fresh_schema("mig") as pg_url:
        yield pg_url


def test_migrations_build_exactly_the_tables_the_code_uses(url: str) -> None:
    """A model change without a migration (or the reverse) fails here."""
    store = SQLStore(url)
    store.create_schema()
    with store._engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    assert diff == []
    assert store.schema_revision() == (migrate.head_revision(), migrate.head_revision())
    store.close()


def test_a_database_from_before_migrations_is_stamped_and_upgraded(url: str) -> None:
    """Version 0.1 made its tables with create_all and kept no alembic_version."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        config = migrate._alembic_config(conn)
        from alembic import command

        command.upgrade(config, migrate.BASELINE)
        conn.execute(sa.text("DROP TABLE alembic_version"))
        conn.execute(
            sa.insert(schema.users).values(user_id="OLD", unionid=None, profile={}, updated_at=1)
        )
    engine.dispose()
    store = SQLStore(url)
    assert store.schema_revision()[0] == migrate.BASELINE
    store.create_schema()
    assert store.schema_revision()[0] == migrate.head_revision()
    assert store.get_user("OLD") == UserRecord("OLD", None, {}, 1)  # data kept
    assert store.list_signing_keys() == []  # the new tables exist
    store.close()


LOOKUP_INDEXES = {
    ("login_transactions", "ix_login_transactions_browser_digest", ("browser_digest",)),
    ("refresh_tokens", "ix_refresh_tokens_family_expires_at", ("family_expires_at",)),
}


def _lookup_indexes(engine: sa.Engine) -> set[tuple[str, str, tuple[str, ...]]]:
    inspector = sa.inspect(engine)
    return {
        (table, str(index["name"]), tuple(str(c) for c in index["column_names"]))
        for table in ("login_transactions", "refresh_tokens")
        for index in inspector.get_indexes(table)
    } & LOOKUP_INDEXES


def test_0004_indexes_the_hot_lookups_and_downgrades(url: str) -> None:
    """cap_pending_logins (browser_digest) and purge_expired (family_expires_at) use them."""
    store = SQLStore(url)
    store.create_schema()
    engine = sa.create_engine(url)
    assert _lookup_indexes(engine) == LOOKUP_INDEXES
    from alembic import command

    with engine.begin() as conn:
        command.downgrade(migrate._alembic_config(conn), "0003")
    assert _lookup_indexes(engine) == set()
    assert store.schema_revision()[0] == "0003"
    store.create_schema()  # back to head, as an instance of the new version would
    assert _lookup_indexes(engine) == LOOKUP_INDEXES
    assert store.schema_revision()[0] == migrate.head_revision()
    engine.dispose()
    store.close()


def test_instances_starting_together_migrate_once_without_errors(url: str) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def start() -> None:
        store = SQLStore(url)
        barrier.wait()
        try:
            store.create_schema()
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert SQLStore(url).schema_revision()[0] == migrate.head_revision()


DB_CONFIG = """\
issuer: http://127.0.0.1:8000
storage: {{url: "{url}", auto_upgrade: {auto}}}
upstream: {{qq: {{app_id: "101000001", app_key: "${{QQ_APP_KEY}}", base_url: "http://127.0.0.1:9"}}}}
clients: []
"""


def test_db_commands_report_and_upgrade(url: str, tmp_path: Path) -> None:
    config = str(write_config(tmp_path, DB_CONFIG.format(url=url, auto="true")))
    status = run("db", "status", "--config", config, "--json")
    assert status.returncode == 1, status.stderr
    assert json.loads(status.stdout) == {
        "current": None,
        "head": migrate.head_revision(),
        "upgrade_needed": True,
    }
    upgraded = run("db", "upgrade", "--config", config)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"upgraded from empty to {migrate.head_revision()}" in upgraded.stdout
    assert "Traceback" not in upgraded.stderr
    again = run("db", "upgrade", "--config", config, "--json")
    assert json.loads(again.stdout)["before"] == migrate.head_revision()
    assert run("db", "status", "--config", config).returncode == 0
    purged = run("db", "purge", "--config", config, "--json")
    assert purged.returncode == 0 and json.loads(purged.stdout) == {"removed": 0}


def test_serve_without_auto_upgrade_refuses_an_old_schema_in_one_line(
    url: str, tmp_path: Path
) -> None:
    config = str(write_config(tmp_path, DB_CONFIG.format(url=url, auto="false")))
    result = run("serve", "--config", config)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("qq-oidc-broker:")]
    assert len(errors) == 1 and "qq-oidc-broker db upgrade" in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_db_commands_on_an_unreachable_database_fail_in_one_line(tmp_path: Path) -> None:
    url = "postgresql+psycopg://postgres@127.0.0.1:9/test"
    config = str(write_config(tmp_path, DB_CONFIG.format(url=url, auto="true")))
    for action in ("status", "upgrade", "purge"):
        result = run("db", action, "--config", config)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Connection refused" in result.stderr
