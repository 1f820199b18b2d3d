"""Time bounds: pending logins expire, and a slow QQ cannot hold a login hostage.

Per the project's rule these assert that a bound exists (timeout plus a wide
margin), never how fast anything is.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import Pair, start_pair
from tests.flows import authorize_url, follow_until, query_of
from tests.web.test_bad_input import assert_error_page, valid_params


@pytest.fixture
def short_login(tmp_path: Path) -> Iterator[Pair]:
    pair = start_pair(tmp_path, lifetimes={"login": 1})
    yield pair
    pair.stop()


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Pair]:
    pair = start_pair(tmp_path, connector_options={"connect_timeout": 1.0, "read_timeout": 1.0})
    yield pair
    pair.stop()


def test_pending_login_expires(short_login: Pair) -> None:
    broker, emulator = short_login.broker, short_login.emulator
    emulator.control(auto_login="zhangsan")
    browser = requests.Session()
    start = browser.get(
        authorize_url(broker.issuer, **valid_params(broker)), allow_redirects=False, timeout=5
    )
    callback = browser.get(start.headers["Location"], allow_redirects=False, timeout=5)
    time.sleep(2.1)
    late = browser.get(callback.headers["Location"], allow_redirects=False, timeout=5)
    assert_error_page(late)
    assert "expired" in late.text or "超时" in late.text
    assert [r["endpoint"] for r in emulator.requests()].count("token") == 0


def test_slow_qq_gives_temporarily_unavailable_within_the_timeout(impatient: Pair) -> None:
    broker, emulator = impatient.broker, impatient.emulator
    emulator.control(auto_login="zhangsan", latency_ms={"token": 8000})
    started = time.monotonic()
    url = authorize_url(broker.issuer, **valid_params(broker))
    response = follow_until(requests.Session(), url, broker.clients["rp-basic"]["redirect_uri"])
    elapsed = time.monotonic() - started
    query = query_of(response.headers["Location"])
    assert query["error"] == "temporarily_unavailable"
    assert query["state"] == "rp-state-123"
    assert elapsed < 6.0  # 1 s read timeout plus a wide margin; the emulator would take 8 s
