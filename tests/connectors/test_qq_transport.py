"""HTTP behaviour: timeouts, size caps, status codes, redirects, pooling, no leaks (UP-15)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from broker.connectors import Identity, QQConnector, UpstreamProtocolError, UpstreamUnavailable
from tests.connectors.conftest import assert_safe
from tests.connectors.fakeqq import (
    ACCESS_TOKEN,
    APP_ID,
    APP_KEY,
    CODE,
    ME,
    ME_JSONP,
    REDIRECT_URI,
    TOKEN,
    TOKEN_FORM,
    TOKEN_JSON_WITH_OPENID,
    USER,
    Canned,
    FakeQQ,
    dribbling_server,
)
from tests.servers import free_port


def login(connector: QQConnector) -> Identity:
    return connector.exchange(code=CODE, redirect_uri=REDIRECT_URI)


@pytest.fixture
def small(fake: FakeQQ) -> Iterator[QQConnector]:
    """A connector with a 1 KiB body cap and short timeouts."""
    conn = QQConnector(
        app_id=APP_ID,
        app_key=APP_KEY,
        base_url=fake.url,
        max_body_bytes=1024,
        connect_timeout=0.5,
        read_timeout=0.5,
    )
    yield conn
    conn.close()


def test_slow_server_beyond_read_timeout(fake: FakeQQ, small: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(TOKEN_JSON_WITH_OPENID, delay=2.0)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable) as info:
        login(small)
    assert time.monotonic() - started < 1.9  # gave up before the answer came
    error = info.value
    assert (error.oauth_error, error.message_key) == (
        "temporarily_unavailable",
        "upstream.unavailable",
    )
    assert error.endpoint == "token"
    assert "timeout" in error.hint
    assert_safe(error)


def test_dribbling_server_hits_the_total_deadline() -> None:
    # One byte per 0.1 s never trips a 0.5 s read timeout; 100 kB would take hours.
    with dribbling_server() as url:
        conn = QQConnector(
            app_id=APP_ID, app_key=APP_KEY, base_url=url, connect_timeout=0.5, read_timeout=0.5
        )
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable) as info:
            login(conn)
        elapsed = time.monotonic() - started
        conn.close()
    assert elapsed < 5.0  # deadline 1 s (connect + read timeout), wide margin
    assert "too long" in info.value.hint or "stalled" in info.value.hint
    assert_safe(info.value)


@pytest.mark.parametrize("chunked", [False, True])
def test_oversized_body_is_capped(fake: FakeQQ, small: QQConnector, chunked: bool) -> None:
    # 50 kB of valid-looking JSON: rejected unread, not parsed (UP-15)
    padding = " " * 50_000
    fake.routes[TOKEN] = Canned(TOKEN_JSON_WITH_OPENID + padding.encode(), chunked=chunked)
    with pytest.raises(UpstreamUnavailable) as info:
        login(small)
    assert "oversized" in info.value.hint
    assert_safe(info.value)


@pytest.mark.parametrize("chunked", [False, True])
def test_body_exactly_at_the_cap_is_fine(fake: FakeQQ, small: QQConnector, chunked: bool) -> None:
    body = TOKEN_JSON_WITH_OPENID
    body += b" " * (1024 - len(body))
    assert len(body) == 1024
    fake.routes[TOKEN] = Canned(body, chunked=chunked)
    fake.routes[USER] = Canned('{"ret":0,"msg":"","nickname":"n"}')
    assert login(small).nickname == "n"


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_http_5xx_is_unavailable(fake: FakeQQ, connector: QQConnector, status: int) -> None:
    fake.routes[TOKEN] = Canned(TOKEN_JSON_WITH_OPENID, status=status)
    with pytest.raises(UpstreamUnavailable) as info:
        login(connector)
    assert f"HTTP {status}" in info.value.hint


def test_http_5xx_on_get_user_info(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[USER] = Canned("<html>Internal Server Error</html>", status=500)
    with pytest.raises(UpstreamUnavailable) as info:
        login(connector)
    assert info.value.endpoint == "get_user_info"
    assert_safe(info.value)


def test_html_404_is_a_protocol_error(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[ME] = Canned("<html>not here</html>", status=404)
    fake.routes[TOKEN] = Canned(TOKEN_FORM)
    with pytest.raises(UpstreamProtocolError) as info:
        login(connector)
    assert info.value.endpoint == "me"


def test_status_is_ignored_for_qq_error_bodies(fake: FakeQQ, connector: QQConnector) -> None:
    # Errors normally come with 200; a 4xx carrying a QQ error is still that error.
    fake.routes[TOKEN] = Canned('{"error":100009,"error_description":"x"}', status=400)
    with pytest.raises(Exception) as info:
        login(connector)
    assert getattr(info.value, "upstream_code", None) == 100009


def test_redirects_are_not_followed(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned("", status=302, headers={"Location": "/elsewhere"})
    fake.routes["/elsewhere"] = Canned(TOKEN_JSON_WITH_OPENID)
    with pytest.raises(UpstreamProtocolError):
        login(connector)
    assert fake.calls("/elsewhere") == []


def test_body_that_is_not_utf8(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(TOKEN_FORM)
    fake.routes[ME] = Canned('{"ret":-1,"msg":"参数错误"}'.encode("gbk"))
    with pytest.raises(UpstreamProtocolError) as info:
        login(connector)
    assert "UTF-8" in info.value.hint


def test_connection_refused() -> None:
    conn = QQConnector(
        app_id=APP_ID,
        app_key=APP_KEY,
        base_url=f"http://127.0.0.1:{free_port()}",
        connect_timeout=0.5,
    )
    with pytest.raises(UpstreamUnavailable) as info:
        login(conn)
    conn.close()
    assert "connection failed" in info.value.hint
    assert_safe(info.value)


class ExplodingSession(requests.Session):
    """Fails the way requests does: the message names the URL, access token included."""

    closed = False

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        if url.endswith(ME):
            full = f"{url}?{urlencode(kwargs.get('params') or {})}"
            raise requests.ConnectionError(f"Max retries exceeded with url: {full}")
        return super().request(method, url, *args, **kwargs)

    def close(self) -> None:
        self.closed = True
        super().close()


def test_transport_errors_do_not_chain_urls_with_tokens(fake: FakeQQ) -> None:
    fake.routes[TOKEN] = Canned(TOKEN_FORM)  # no openid: /me is needed
    session = ExplodingSession()
    conn = QQConnector(app_id=APP_ID, app_key=APP_KEY, base_url=fake.url, session=session)
    with pytest.raises(UpstreamUnavailable) as info:
        login(conn)
    assert info.value.endpoint == "me"
    assert ACCESS_TOKEN not in repr(info.value.args)
    assert_safe(info.value)  # no __cause__ / __context__ holding the URL
    conn.close()
    assert not session.closed  # a caller's session is the caller's to close
    session.close()


def test_owned_session_is_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = QQConnector(app_id=APP_ID, app_key=APP_KEY)
    closed: list[bool] = []
    monkeypatch.setattr(conn._session, "close", lambda: closed.append(True))
    with conn:
        pass
    assert closed == [True]


def test_connections_are_kept_alive(fake: FakeQQ, connector: QQConnector) -> None:
    # (Content-Length bodies only: waitress closes after a chunked response.)
    fake.routes[TOKEN] = Canned(TOKEN_FORM)  # token, me, get_user_info
    fake.routes[ME] = Canned(ME_JSONP)
    login(connector)
    login(connector)
    ports = {seen.remote_port for seen in fake.seen}
    assert len(fake.seen) == 6
    assert len(ports) == 1  # one pooled connection reused for every call


def test_connection_is_not_reused_after_an_aborted_read(fake: FakeQQ, small: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(TOKEN_JSON_WITH_OPENID + b" " * 5000)
    with pytest.raises(UpstreamUnavailable):
        login(small)
    fake.routes[TOKEN] = Canned(TOKEN_JSON_WITH_OPENID)
    fake.routes[USER] = Canned('{"ret":0,"msg":"","nickname":"n"}')
    assert login(small).nickname == "n"  # a fresh connection, no leftover bytes


def test_no_cookies_carry_over_between_calls(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(TOKEN_FORM, headers={"Set-Cookie": "uin=o123; Path=/"})
    login(connector)
    login(connector)
    assert [seen.cookie for seen in fake.seen] == [""] * 6
