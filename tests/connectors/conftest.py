"""Fixtures: a canned QQ served over real HTTP, a connector pointed at it, and leak checks."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from waitress import wasyncore

from broker.connectors.base import UpstreamError
from broker.connectors.qq import QQConnector
from tests.connectors.fakeqq import APP_ID, APP_KEY, SECRETS, FakeQQ
from tests.servers import ServedApp, serve


@contextmanager
def serving(app: Any) -> Iterator[ServedApp]:
    """tests.servers.serving, but closed from inside waitress's loop thread.

    ServedApp.stop() closes the sockets from the test thread while the loop sits in
    select(), which now and then ends the loop thread with EBADF (a pytest warning).
    """
    served = serve(app)
    try:
        yield served
    finally:
        server = served.server
        closed = threading.Event()

        def close_in_loop() -> None:
            try:
                wasyncore.close_all(server.map)  # empty map: the loop returns
            finally:
                closed.set()

        server.trigger.pull_trigger(close_in_loop)
        closed.wait(5)
        server.task_dispatcher.shutdown()


@pytest.fixture
def fake() -> Iterator[FakeQQ]:
    fake = FakeQQ()
    with serving(fake.app) as served:
        fake.url = served.url
        yield fake
    # Whatever the test did: the app key only ever travelled in a POST body (section 2.2).
    for seen in fake.seen:
        assert APP_KEY not in seen.path + "?" + seen.query


@pytest.fixture
def connector(fake: FakeQQ) -> Iterator[QQConnector]:
    conn = QQConnector(
        app_id=APP_ID,
        app_key=APP_KEY,
        base_url=fake.url,
        connect_timeout=2.0,
        read_timeout=3.0,
    )
    yield conn
    conn.close()


@pytest.fixture(autouse=True)
def no_secrets_in_broker_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every test: nothing the broker logs contains a token, code or the app key."""
    caplog.set_level(logging.DEBUG, logger="broker")
    yield
    for record in caplog.records:
        if record.name.startswith("broker"):
            message = record.getMessage()
            for secret in SECRETS:
                assert secret not in message, f"secret leaked into log: {record.name}"


def assert_safe(error: UpstreamError) -> None:
    """str(error) is ASCII and no secret is reachable from the exception."""
    text = str(error)
    assert text.isascii()
    assert error.hint.isascii()
    for secret in SECRETS:
        for part in (text, repr(error), error.hint, error.upstream_message or ""):
            assert secret not in part
    # A chained requests/JSON exception would carry URLs with tokens or the raw body.
    assert error.__cause__ is None
    assert error.__context__ is None
