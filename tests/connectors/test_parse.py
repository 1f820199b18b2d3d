"""parse_qq_body: the three QQ body formats and everything that is none of them (section 3, 7.1)."""

from __future__ import annotations

import pytest

from broker.connectors.qq import QQBodyError, parse_qq_body
from tests.connectors.fakeqq import (
    ACCESS_TOKEN,
    ME_JSONP,
    ME_JSONP_UNIONID,
    OPENID,
    REFRESH_TOKEN,
    TOKEN_FORM,
    UNIONID,
    USER_INFO,
)


def test_jsonp_me_exact_bytes() -> None:
    assert len(ME_JSONP) == 83  # Content-Length 83 in yii2-authclient#231 (section 3.2)
    assert parse_qq_body(ME_JSONP.decode()) == {"client_id": "101364207", "openid": OPENID}


def test_jsonp_unionid_after_openid() -> None:
    body = parse_qq_body(ME_JSONP_UNIONID.decode())
    assert body["openid"] == OPENID
    assert body["unionid"] == UNIONID


@pytest.mark.parametrize(
    "text",
    [
        'callback( {"error":100016,"error_description":"access token check failed"} );',
        'callback( {"error":100016,"error_description":"access token check failed"} );\n  ',
        'callback({"error":100016,"error_description":"access token check failed"})',
        'callback(\n {"error":100016,\n "error_description":"access token check failed"}\n);\n',
    ],
)
def test_jsonp_error_variants(text: str) -> None:
    body = parse_qq_body(text)
    assert body["error"] == 100016
    assert body["error_description"] == "access token check failed"


def test_close_paren_inside_json_string() -> None:
    # indexOf(")") parsers break here (section 7)
    text = 'callback( {"client_id":"1","openid":"ABC","note":"a) b ); c)"} );\n'
    assert parse_qq_body(text)["note"] == "a) b ); c)"


@pytest.mark.parametrize("suffix", ["", "\n", "\r\n", "  \n"])
def test_form_body_trailing_whitespace_is_stripped(suffix: str) -> None:
    body = parse_qq_body(TOKEN_FORM + suffix)
    assert body == {
        "access_token": ACCESS_TOKEN,
        "expires_in": "7776000",
        "refresh_token": REFRESH_TOKEN,
    }


def test_fmt_json_expires_in_stays_as_sent() -> None:
    body = parse_qq_body('{"access_token":"A","expires_in":"5184000","refresh_token":"R"}')
    assert body["expires_in"] == "5184000"
    body = parse_qq_body('{"access_token":"A","expires_in":7776000}')
    assert body["expires_in"] == 7776000


def test_user_info_multiline_with_escaped_slashes() -> None:
    body = parse_qq_body(USER_INFO.decode())
    assert body["ret"] == 0
    assert body["is_lost"] == 0
    assert body["nickname"] == "Liuli"
    assert body["figureurl_2"].startswith("http://qzapp.qlogo.cn/qzapp/101364207/")
    assert body["gender"] == "男"


def test_byte_order_mark_tolerated() -> None:
    assert parse_qq_body('\ufeff{"ret":0}') == {"ret": 0}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ('<html><head><title>502</title></head><body lang="zh">error</body></html>', "form"),
        ("<!DOCTYPE html>\n<html>redirect uri is illegal(100010)</html>", "form"),
        ("hello world", "form"),
        ("{not json}", "malformed"),
        ("[1, 2]", "form"),
        ("callback( [1] );", "form"),
        ('{"a": NaN}', "malformed"),
        ('{"openid":"A","openid":"B"}', "duplicate"),
        ("access_token=A&access_token=B", "duplicate"),
        ('callback( {"error":100016,"error_description":"x",\n} );', "malformed"),
        ("[" * 100_000, "form"),
        ("{" + '"a":[' * 100_000, "JSON"),
    ],
)
def test_not_a_qq_body(text: str, reason: str) -> None:
    with pytest.raises(QQBodyError) as info:
        parse_qq_body(text)
    message = str(info.value)
    assert reason in message
    assert message.isascii()
    assert info.value.__context__ is None  # a JSONDecodeError would carry the body (.doc)


def test_error_message_never_quotes_the_body() -> None:
    with pytest.raises(QQBodyError) as info:
        parse_qq_body(f"<html>{ACCESS_TOKEN}</html>")
    assert ACCESS_TOKEN not in str(info.value)
