"""Housekeeping: the background purge runs on its own, survives failures, and a broker
built by create_app purges expired rows without any request arriving."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy as sa

from broker.app import create_app
from broker.housekeeping import Housekeeper, Job
from broker.storage import SQLStore, schema
from broker.storage.base import AuthorizationCodeRecord, digest
from tests.conftest import broker_config

BOUND = 20.0  # seconds: a generous bound, not a speed assertion


def wait_for(event: threading.Event) -> bool:
    return event.wait(BOUND)


def test_a_failing_job_is_retried_and_does_not_stop_the_others() -> None:
    calls = {"bad": 0, "good": 0}
    good_twice = threading.Event()

    def bad(_now: int) -> None:
        calls["bad"] += 1
        raise RuntimeError("database down")

    def good(_now: int) -> None:
        calls["good"] += 1
        if calls["good"] >= 2:
            good_twice.set()

    keeper = Housekeeper([Job("bad", 0.05, bad), Job("good", 0.05, good)])
    keeper.start()
    try:
        assert wait_for(good_twice)
    finally:
        keeper.stop()
    assert calls["bad"] >= 1


def test_disabled_jobs_never_start_a_thread() -> None:
    keeper = Housekeeper([Job("purge", 0, lambda _now: None)])
    keeper.start()
    assert keeper._thread is None


def test_a_running_broker_purges_expired_rows_by_itself(tmp_path: Path) -> None:
    config = broker_config(
        tmp_path,
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        "k" * 32,
        storage={"url": "sqlite:///broker.sqlite3", "purge_interval": 1},
    )
    store = SQLStore(config.storage.url)
    store.create_schema()
    expired = AuthorizationCodeRecord(
        digest("old"), "rp", "https://rp/cb", "openid", "U", 1, int(time.time()) - 5
    )
    store.save_code(expired)
    app = create_app(config)
    try:
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline and not _purged(store, expired):
            time.sleep(0.2)
        assert _purged(store, expired)
    finally:
        app.extensions["qq_oidc_broker.housekeeper"].stop()


def _purged(store: SQLStore, code: AuthorizationCodeRecord) -> bool:
    """Read-only: the Store interface has no "get code", so look at the table directly
    (purging here would make the test pass without the housekeeper)."""
    table = schema.authorization_codes
    with store._engine.connect() as conn:
        row = conn.execute(
            sa.select(table.c.code_digest).where(table.c.code_digest == code.code_digest)
        )
        return row.first() is None
