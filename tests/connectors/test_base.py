"""The connector interface types and the QQ code table."""

from __future__ import annotations

import pickle

import pytest

from broker.connectors import (
    Connector,
    Identity,
    QQConnector,
    UpstreamCancelled,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamTokens,
    UpstreamUnavailable,
)
from broker.connectors.base import MESSAGE_KEYS, OAUTH_ERRORS
from broker.connectors.qq import QQ_ERROR_CODES, rule_for
from tests.connectors.fakeqq import ACCESS_TOKEN, APP_ID, APP_KEY, OPENID, REFRESH_TOKEN

# qq-connect.md section 5.1 (OAuth layer) and 5.2 (OpenAPI layer)
SECTION_5_CODES = [
    *range(100000, 100032),
    100044,
    100048,
    -1,
    -2,
    -3,
    -20,
    -21,
    -22,
    -23,
    -24,
    1002,
]


def test_every_documented_code_is_in_the_table() -> None:
    missing = [code for code in SECTION_5_CODES if code not in QQ_ERROR_CODES]
    assert missing == []


@pytest.mark.parametrize("code", sorted(QQ_ERROR_CODES))
def test_table_entries_are_well_formed(code: int) -> None:
    rule = QQ_ERROR_CODES[code]
    assert rule.oauth_error in OAUTH_ERRORS
    assert rule.message_key in MESSAGE_KEYS
    assert rule.summary.isascii()
    assert rule.action.isascii()


@pytest.mark.parametrize(
    ("code", "message_key", "oauth_error"),
    [
        (100008, "upstream.misconfigured", "server_error"),
        (100009, "upstream.misconfigured", "server_error"),
        (100010, "upstream.misconfigured", "server_error"),
        (100013, "upstream.token_expired", "invalid_grant"),
        (100014, "upstream.token_expired", "invalid_grant"),
        (100015, "upstream.token_expired", "invalid_grant"),
        (100016, "upstream.token_expired", "invalid_grant"),
        (100019, "upstream.code_invalid", "server_error"),
        (100020, "upstream.code_invalid", "server_error"),
        (100021, "upstream.token_expired", "invalid_grant"),
        (100030, "upstream.misconfigured", "server_error"),
        (100031, "upstream.misconfigured", "server_error"),
        (100048, "upstream.unionid_not_enabled", "server_error"),
        (987654, "upstream.rejected", "server_error"),
    ],
)
def test_code_table_choices(code: int, message_key: str, oauth_error: str) -> None:
    rule = rule_for(code)
    assert (rule.message_key, rule.oauth_error) == (message_key, oauth_error)


def test_callback_hint_names_the_registered_url() -> None:
    assert "{issuer}/qq/callback" in rule_for(100010).action
    assert "do not retry" in rule_for(100020).action
    assert "UnionID must be enabled" in rule_for(100048).action


@pytest.mark.parametrize(
    ("cls", "oauth_error", "message_key"),
    [
        (UpstreamCancelled, "access_denied", "upstream.cancelled"),
        (UpstreamUnavailable, "temporarily_unavailable", "upstream.unavailable"),
        (UpstreamProtocolError, "server_error", "upstream.protocol"),
        (UpstreamRejected, "server_error", "upstream.rejected"),
    ],
)
def test_error_defaults(cls: type[UpstreamError], oauth_error: str, message_key: str) -> None:
    error = cls(hint="h")
    assert isinstance(error, UpstreamError)
    assert (error.oauth_error, error.message_key) == (oauth_error, message_key)


def test_error_text_is_ascii_hint_plus_code() -> None:
    error = UpstreamRejected(
        oauth_error="server_error",
        message_key="upstream.misconfigured",
        hint="QQ rejected the app key (100009): check upstream.qq.app_key — ok",
        upstream_code=100009,
        upstream_message="client_secret(即appkey)非法",
        endpoint="token",
    )
    text = str(error)
    assert text.isascii()
    assert text.startswith("QQ rejected the app key (100009)")
    assert "qq_code=100009" in text
    assert "endpoint=token" in text
    assert "非法" not in text
    assert error.upstream_message == "client_secret(即appkey)非法"


def test_errors_pickle_round_trip() -> None:
    error = UpstreamRejected(
        oauth_error="invalid_grant",
        message_key="upstream.token_expired",
        hint="h",
        upstream_code=100021,
        upstream_message="get access token error",
        endpoint="token",
    )
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
    assert type(copy) is UpstreamRejected
    assert (copy.oauth_error, copy.message_key, copy.upstream_code, copy.endpoint) == (
        "invalid_grant",
        "upstream.token_expired",
        100021,
        "token",
    )


def test_reprs_hide_tokens() -> None:
    tokens = UpstreamTokens(
        access_token=ACCESS_TOKEN, refresh_token=REFRESH_TOKEN, expires_in=1, obtained_at=2
    )
    identity = Identity(
        openid=OPENID, unionid=None, nickname="n", picture=None, profile={}, tokens=tokens
    )
    for text in (repr(tokens), repr(identity), str(identity)):
        assert ACCESS_TOKEN not in text
        assert REFRESH_TOKEN not in text
    assert isinstance(hash(identity), int)  # frozen and hashable despite the dict profile


def test_qq_connector_satisfies_the_protocol() -> None:
    conn = QQConnector(app_id=APP_ID, app_key=APP_KEY)
    try:
        assert isinstance(conn, Connector)
        assert conn.name == "qq"
        assert APP_KEY not in repr(conn)
    finally:
        conn.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_url": "graph.qq.com"},
        {"base_url": "ftp://graph.qq.com"},
        {"app_id": ""},
        {"app_key": ""},
        {"read_timeout": 0},
        {"max_body_bytes": 0},
    ],
)
def test_constructor_rejects_nonsense(kwargs: dict[str, object]) -> None:
    params: dict[str, object] = {"app_id": APP_ID, "app_key": APP_KEY, **kwargs}
    with pytest.raises(ValueError) as info:
        QQConnector(**params)  # type: ignore[arg-type]
    assert APP_KEY not in str(info.value)
