"""Every QQ error code of qq-connect.md §5, end to end through a real broker.

A canned graph.qq.com (tests/connectors/fakeqq.py) answers the login's token call (§5.1
codes) or get_user_info (§5.2 ``ret`` codes) with that code and a Chinese message, the
way QQ's texts often are. For each code the relying party must get a well-formed OAuth
error response (RFC 6749 §4.1.2.1: an authorization-endpoint error code, an ASCII
description, ``state`` and ``iss``), and the operator a hint in the log naming the code
and what to do. QQ's non-ASCII text goes to the log, never into the redirect.

tests/connectors/test_base.py checks the table itself; this checks what comes out of
the broker for each entry.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from broker.app import create_app
from broker.connectors.qq import QQ_ERROR_CODES, rule_for
from broker.oidc.errors import UPSTREAM_DESCRIPTIONS
from tests.conftest import broker_config
from tests.connectors.fakeqq import APP_ID, APP_KEY, CODE, TOKEN, USER, Canned, FakeQQ, compact
from tests.flows import authorize_url, query_of
from tests.servers import ServedApp, free_port, serve

#: qq-connect.md §5.1 (OAuth layer, ``error``), including the 100023–100027 range.
OAUTH_LAYER = [*range(100000, 100032), 100044, 100048]
#: qq-connect.md §5.2 (OpenAPI layer, get_user_info ``ret``).
OPENAPI_LAYER = [-1, -2, -3, -20, -21, -22, -23, -24, 1002]
#: What the section's own words would be in QQ's Chinese texts (the worst case for a
#: redirect: non-ASCII, quotes, markup characters).
CHINESE_MESSAGE = '回调地址不合法 "<b>请先登录</b>" \\ 非法'
#: The only error codes an authorization response may carry for an upstream failure.
AUTHORIZATION_ERRORS = {"server_error", "temporarily_unavailable", "access_denied"}
REDIRECT_URI = "http://127.0.0.1:9/basic/callback"


@dataclass
class Rig:
    fake: FakeQQ
    qq: ServedApp
    broker: ServedApp
    issuer: str
    defaults: dict[str, Canned]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    fake = FakeQQ()
    qq = serve(fake.app)
    fake.url = qq.url
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    config = broker_config(
        Path(tmp_path_factory.mktemp("qq-errors")),
        issuer,
        qq.url,
        APP_KEY,
        upstream={"qq": {"app_id": APP_ID, "app_key": APP_KEY, "base_url": qq.url}},
    )
    broker = serve(create_app(config), port=port)
    try:
        yield Rig(fake, qq, broker, issuer, dict(fake.routes))
    finally:
        broker.stop()
        qq.stop()


def test_the_walk_covers_the_whole_table() -> None:
    assert set(OAUTH_LAYER + OPENAPI_LAYER) == set(QQ_ERROR_CODES)


def login_through(rig: Rig) -> tuple[str, dict[str, str]]:
    """RP → broker /authorize → (QQ, not followed) → broker /qq/callback; the RP's URL."""
    browser = requests.Session()
    state = secrets.token_urlsafe(8)
    start = browser.get(
        authorize_url(
            rig.issuer,
            response_type="code",
            client_id="rp-basic",
            redirect_uri=REDIRECT_URI,
            scope="openid profile",
            state=state,
            nonce="n",
        ),
        allow_redirects=False,
        timeout=10,
    )
    assert start.status_code == 302, start.text[:300]
    qq_state = query_of(start.headers["Location"])["state"]
    back = browser.get(
        f"{rig.issuer}/qq/callback",
        params={"code": CODE, "state": qq_state},
        allow_redirects=False,
        timeout=30,
    )
    assert back.status_code in (302, 303), back.text[:300]
    location = back.headers["Location"]
    assert location.isascii(), location  # a header: bytes beyond ASCII would break it
    query = query_of(location)
    assert query.get("state") == state
    return location, query


@pytest.mark.parametrize("code", OAUTH_LAYER + OPENAPI_LAYER)
def test_qq_error_reaches_the_rp_and_the_log(
    rig: Rig, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    rule = rule_for(code)
    if code in OPENAPI_LAYER:
        rig.fake.routes[USER] = Canned(compact(ret=code, msg=CHINESE_MESSAGE))
    else:
        body = compact(error=code, error_description=CHINESE_MESSAGE)
        rig.fake.routes[TOKEN] = Canned(f"callback( {body} );\n")
    try:
        with caplog.at_level(logging.INFO):
            location, query = login_through(rig)
    finally:
        rig.fake.routes.update(rig.defaults)

    # The relying party: an OAuth error response, not a code.
    assert location.startswith(REDIRECT_URI + "?")
    assert "code" not in query
    assert query["iss"] == rig.issuer
    assert query["error"] in AUTHORIZATION_ERRORS
    expected = "server_error" if rule.oauth_error == "invalid_grant" else rule.oauth_error
    assert query["error"] == expected
    description = query["error_description"]
    assert description == UPSTREAM_DESCRIPTIONS[rule.message_key]
    assert description.isascii() and not set(description) & set('"\\<>')

    # The operator: the hint names the code and the action; QQ's own text is kept too.
    hint = f"QQ {rule.summary} ({code}): {rule.action}"
    assert hint in caplog.text, caplog.text[-2000:]
    assert "请先登录" in caplog.text  # QQ's message, for the operator only
    assert APP_KEY not in caplog.text and CODE not in caplog.text
