"""QQConnector against canned QQ bodies over real HTTP (qq-connect.md sections 2-5, 7.1)."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlsplit

import pytest

from broker.connectors import (
    Identity,
    UpstreamCancelled,
    UpstreamProtocolError,
    UpstreamRejected,
)
from broker.connectors.qq import DEFAULT_EXPIRES_IN, QQConnector
from tests.connectors.conftest import assert_safe
from tests.connectors.fakeqq import (
    ACCESS_TOKEN,
    APP_ID,
    APP_KEY,
    CODE,
    ME,
    ME_JSON,
    ME_JSON_UNIONID,
    ME_JSONP,
    ME_JSONP_UNIONID,
    NEW_ACCESS_TOKEN,
    NEW_REFRESH_TOKEN,
    OPENID,
    PICTURE_40,
    PICTURE_100,
    REDIRECT_URI,
    REFRESH_JSON,
    REFRESH_TOKEN,
    TOKEN,
    TOKEN_FORM,
    TOKEN_JSON_NO_OPENID,
    UNIONID,
    USER,
    USER_INFO,
    Canned,
    FakeQQ,
    compact,
)


def login(connector: QQConnector, want_unionid: bool = False) -> Identity:
    return connector.exchange(code=CODE, redirect_uri=REDIRECT_URI, want_unionid=want_unionid)


def query(seen_query: str) -> dict[str, list[str]]:
    return parse_qs(seen_query, keep_blank_values=True)


# ------------------------------------------------------------------ authorize URL


def test_authorization_url_parameters(connector: QQConnector) -> None:
    url = connector.authorization_url(redirect_uri=REDIRECT_URI, state="s" * 43)
    parts = urlsplit(url)
    assert (
        f"{parts.scheme}://{parts.netloc}{parts.path}" == connector.base_url + "/oauth2.0/authorize"
    )
    assert query(parts.query) == {
        "response_type": ["code"],
        "client_id": [APP_ID],
        "redirect_uri": [REDIRECT_URI],
        "state": ["s" * 43],
        "scope": ["get_user_info"],
    }
    assert APP_KEY not in url


def test_authorization_url_encodes_once_and_adds_display(connector: QQConnector) -> None:
    redirect = "https://broker.example/qq/callback?tenant=a b&x=/"
    url = connector.authorization_url(redirect_uri=redirect, state="abc", display="mobile")
    params = query(urlsplit(url).query)
    assert params["redirect_uri"] == [redirect]  # decodes back exactly once
    assert params["display"] == ["mobile"]
    assert (
        "redirect_uri=https%3A%2F%2Fbroker.example%2Fqq%2Fcallback%3Ftenant%3Da+b%26x%3D%2F&" in url
    )
    assert "%25" not in url  # not double-encoded


def test_authorization_url_rejects_bad_display(connector: QQConnector) -> None:
    with pytest.raises(ValueError):
        connector.authorization_url(redirect_uri=REDIRECT_URI, state="s", display="wap")


# ------------------------------------------------------------------ callback


def test_parse_callback_returns_code(connector: QQConnector) -> None:
    # QQ appends to a callback that already has a query (section 2.1); extras are ignored.
    args = {"tenant": "a", "code": CODE, "state": "s"}
    assert connector.parse_callback(args) == CODE


@pytest.mark.parametrize(
    "args",
    [
        {"usercancel": "1", "state": "s"},
        {"usercancel": "1", "code": CODE},
        {"state": "s"},
        {"code": "", "state": "s"},
    ],
)
def test_parse_callback_cancel(connector: QQConnector, args: dict[str, str]) -> None:
    with pytest.raises(UpstreamCancelled) as info:
        connector.parse_callback(args)
    assert info.value.oauth_error == "access_denied"
    assert info.value.message_key == "upstream.cancelled"
    assert info.value.endpoint == "callback"
    assert_safe(info.value)


@pytest.mark.parametrize(
    "code", ["A" * 129, "abc-123", "ABC DEF", "ABC%00", "ＡＢＣ", "abc\n", "../../x"]
)
def test_parse_callback_rejects_odd_codes(connector: QQConnector, code: str) -> None:
    with pytest.raises(UpstreamProtocolError) as info:
        connector.parse_callback({"code": code, "state": "s"})
    assert info.value.oauth_error == "server_error"
    assert info.value.message_key == "upstream.protocol"
    assert code not in str(info.value)


def test_exchange_rejects_odd_code_without_calling_qq(fake: FakeQQ, connector: QQConnector) -> None:
    with pytest.raises(UpstreamProtocolError):
        connector.exchange(code="x y", redirect_uri=REDIRECT_URI)
    assert fake.seen == []


# ------------------------------------------------------------------ exchange: happy paths


def test_exchange_with_openid_in_token_response_skips_me(
    fake: FakeQQ, connector: QQConnector
) -> None:
    before = int(time.time())
    identity = login(connector)

    assert identity.openid == OPENID
    assert identity.unionid is None
    assert identity.nickname == "Liuli"
    assert identity.picture == PICTURE_100
    assert identity.tokens.access_token == ACCESS_TOKEN
    assert identity.tokens.refresh_token == REFRESH_TOKEN
    assert identity.tokens.expires_in == 5184000  # "5184000" string under fmt=json
    assert before <= identity.tokens.obtained_at <= int(time.time())
    assert "ret" not in identity.profile
    assert "msg" not in identity.profile
    assert identity.profile["city"] == "深圳"
    assert identity.profile["figureurl_2"].endswith("/100")

    assert [seen.path for seen in fake.seen] == [TOKEN, USER]  # /me skipped


def test_token_request_is_a_form_post_with_the_key_in_the_body(
    fake: FakeQQ, connector: QQConnector
) -> None:
    login(connector)
    (token,) = fake.calls(TOKEN)
    assert token.method == "POST"
    assert token.query == ""  # nothing in the URL, so no access log carries the key
    assert token.form == {
        "grant_type": ["authorization_code"],
        "client_id": [APP_ID],
        "client_secret": [APP_KEY],
        "code": [CODE],
        "redirect_uri": [REDIRECT_URI],
        "fmt": ["json"],
        "need_openid": ["1"],
    }


def test_redirect_uri_identical_at_both_steps(fake: FakeQQ, connector: QQConnector) -> None:
    redirect = "https://broker.example/qq/callback?tenant=a%20b&y=中"
    url = connector.authorization_url(redirect_uri=redirect, state="s")
    connector.exchange(code=CODE, redirect_uri=redirect)
    (token,) = fake.calls(TOKEN)
    assert token.form["redirect_uri"] == query(urlsplit(url).query)["redirect_uri"] == [redirect]


def test_get_user_info_request(fake: FakeQQ, connector: QQConnector) -> None:
    login(connector)
    (user,) = fake.calls(USER)
    assert user.method == "GET"
    assert query(user.query) == {
        "access_token": [ACCESS_TOKEN],
        "oauth_consumer_key": [APP_ID],
        "openid": [OPENID],
    }


@pytest.mark.parametrize(
    "token_body",
    [TOKEN_FORM, TOKEN_FORM + "\n", TOKEN_FORM + "\r\n", TOKEN_JSON_NO_OPENID],
)
@pytest.mark.parametrize("me_body", [ME_JSONP, ME_JSON])
def test_exchange_without_openid_calls_me(
    fake: FakeQQ, connector: QQConnector, token_body: str | bytes, me_body: bytes
) -> None:
    fake.routes[TOKEN] = Canned(token_body)
    fake.routes[ME] = Canned(me_body)
    identity = login(connector)
    assert identity.openid == OPENID
    assert identity.tokens.refresh_token == REFRESH_TOKEN  # no trailing "\n" kept
    assert identity.tokens.expires_in == 7776000
    (me,) = fake.calls(ME)
    assert query(me.query) == {"access_token": [ACCESS_TOKEN], "fmt": ["json"]}
    assert [seen.path for seen in fake.seen] == [TOKEN, ME, USER]


@pytest.mark.parametrize(
    ("expires_in", "expected"),
    [
        ("5184000", 5184000),
        (7776000, 7776000),
        (" 7776000 ", 7776000),
        ("abc", DEFAULT_EXPIRES_IN),
        (None, DEFAULT_EXPIRES_IN),
        ("-5", DEFAULT_EXPIRES_IN),
        (True, DEFAULT_EXPIRES_IN),
        (0, DEFAULT_EXPIRES_IN),
        (1.5, DEFAULT_EXPIRES_IN),
    ],
)
def test_expires_in_coercion(
    fake: FakeQQ, connector: QQConnector, expires_in: object, expected: int
) -> None:
    fake.routes[TOKEN] = Canned(
        compact(access_token=ACCESS_TOKEN, expires_in=expires_in, openid=OPENID)
    )
    identity = login(connector)
    assert identity.tokens.expires_in == expected
    assert identity.tokens.refresh_token is None


def test_expires_in_absent_defaults(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(f"access_token={ACCESS_TOKEN}")
    assert login(connector).tokens.expires_in == DEFAULT_EXPIRES_IN == 5184000


@pytest.mark.parametrize("me_body", [ME_JSON_UNIONID, ME_JSONP_UNIONID])
def test_want_unionid_calls_me_with_unionid_1(
    fake: FakeQQ, connector: QQConnector, me_body: bytes
) -> None:
    fake.routes[ME] = Canned(me_body)
    identity = login(connector, want_unionid=True)
    assert (identity.openid, identity.unionid) == (OPENID, UNIONID)
    (me,) = fake.calls(ME)  # called although the token response had the openid
    assert query(me.query) == {"access_token": [ACCESS_TOKEN], "fmt": ["json"], "unionid": ["1"]}


def test_me_client_id_as_json_number_is_accepted(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(TOKEN_FORM)
    fake.routes[ME] = Canned(compact(client_id=int(APP_ID), openid=OPENID))
    assert login(connector).openid == OPENID


# ------------------------------------------------------------------ profile mapping


def user_info(**fields: str) -> str:
    items = ['"ret":0', '"msg":""', *[f'"{key}":{value}' for key, value in fields.items()]]
    return "{" + ",".join(items) + "}"


@pytest.mark.parametrize(
    ("fields", "nickname", "picture"),
    [
        ({"nickname": '""', "figureurl_qq_1": f'"{PICTURE_40}"'}, "", PICTURE_40),
        ({"figureurl_qq_1": f'"{PICTURE_40}"'}, "", PICTURE_40),
        (
            {"nickname": "42", "figureurl_qq_2": "null", "figureurl_qq_1": f'"{PICTURE_40}"'},
            "",
            PICTURE_40,
        ),
        (
            {
                "nickname": '"😀 <b>x</b>"',
                "figureurl_qq_2": '""',
                "figureurl_qq_1": f'"{PICTURE_40}"',
            },
            "😀 <b>x</b>",
            PICTURE_40,
        ),
        ({"nickname": '"n"', "figureurl_qq_2": "[1]"}, "n", None),
        ({"nickname": '"n"', "figureurl_2": '"http://qzapp.qlogo.cn/x/100"'}, "n", None),
    ],
)
def test_nickname_and_picture(
    fake: FakeQQ,
    connector: QQConnector,
    fields: dict[str, str],
    nickname: str,
    picture: str | None,
) -> None:
    fake.routes[USER] = Canned(user_info(**fields))
    identity = login(connector)
    assert identity.nickname == nickname
    assert identity.picture == picture


def test_is_lost_is_tolerated(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[USER] = Canned(USER_INFO.replace(b'"is_lost":0', b'"is_lost":1'))
    identity = login(connector)
    assert identity.profile["is_lost"] == 1
    assert identity.nickname == "Liuli"


# ------------------------------------------------------------------ exchange: fail closed


@pytest.mark.parametrize(
    "me_body",
    [
        '{"client_id":"101364207","openid":""}',
        '{"client_id":"101364207","openid":null}',
        '{"client_id":"101364207","openid":"None"}',
        '{"client_id":"101364207","openid":"null"}',
        '{"client_id":"101364207"}',
        '{"client_id":"101364207","openid":805}',
        compact(client_id=APP_ID, openid=[OPENID]),
        compact(client_id=APP_ID, openid="A" * 65),
        '{"client_id":"101364207","openid":"../../etc"}',
        '{"client_id":"101364207","openid":"805C FCB3"}',
        '{"client_id":"101364207","openid":"８０５Ｃ"}',
        'callback( {"client_id":"101364207","openid":""} );\n',
    ],
)
def test_unusable_openid_from_me(fake: FakeQQ, connector: QQConnector, me_body: str) -> None:
    fake.routes[TOKEN] = Canned(TOKEN_FORM)
    fake.routes[ME] = Canned(me_body)
    with pytest.raises(UpstreamProtocolError) as info:
        login(connector)
    assert (info.value.oauth_error, info.value.message_key) == ("server_error", "upstream.protocol")
    assert info.value.endpoint == "me"
    assert_safe(info.value)
    assert fake.calls(USER) == []  # nothing done with a placeholder identity


@pytest.mark.parametrize("openid", ["", None, "None", 123, "a/b", "x" * 65])
def test_unusable_openid_in_token_response(
    fake: FakeQQ, connector: QQConnector, openid: object
) -> None:
    fake.routes[TOKEN] = Canned(
        compact(access_token=ACCESS_TOKEN, expires_in="5184000", openid=openid)
    )
    with pytest.raises(UpstreamProtocolError) as info:
        login(connector)
    assert info.value.endpoint == "token"
    assert fake.calls(USER) == []


@pytest.mark.parametrize(
    "me_body",
    [
        compact(client_id="100000001", openid=OPENID),
        "callback( " + compact(client_id="100000001", openid=OPENID) + " );\n",
        compact(client_id=APP_ID + "0", openid=OPENID),
        compact(openid=OPENID),
        compact(client_id=None, openid=OPENID),
        compact(client_id=True, openid=OPENID),
    ],
)
def test_me_for_another_app_is_token_substitution(
    fake: FakeQQ, connector: QQConnector, me_body: str
) -> None:
    fake.routes[TOKEN] = Canned(TOKEN_FORM)
    fake.routes[ME] = Canned(me_body)
    with pytest.raises(UpstreamProtocolError) as info:
        login(connector)
    assert "client_id" in info.value.hint
    assert APP_ID in info.value.hint
    assert fake.calls(USER) == []


def test_token_response_for_another_app(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(compact(access_token=ACCESS_TOKEN, client_id="999", openid=OPENID))
    with pytest.raises(UpstreamProtocolError):
        login(connector)


def test_token_and_me_disagree_on_openid(fake: FakeQQ, connector: QQConnector) -> None:
    other = "0" * 32
    fake.routes[ME] = Canned(compact(client_id=APP_ID, openid=other, unionid=UNIONID))
    with pytest.raises(UpstreamProtocolError):
        login(connector, want_unionid=True)


@pytest.mark.parametrize(
    "me_body",
    [
        '{"error":100048,"error_description":"companyid not set"}',
        'callback( {"error":100048,"error_description":"companyid not set"} );\n',
    ],
)
def test_unionid_not_enabled(fake: FakeQQ, connector: QQConnector, me_body: str) -> None:
    fake.routes[ME] = Canned(me_body)
    with pytest.raises(UpstreamRejected) as info:
        login(connector, want_unionid=True)
    error = info.value
    assert error.message_key == "upstream.unionid_not_enabled"
    assert error.oauth_error == "server_error"
    assert error.upstream_code == 100048
    assert error.upstream_message == "companyid not set"
    assert "UnionID must be enabled" in error.hint
    assert error.endpoint == "me"
    assert_safe(error)


@pytest.mark.parametrize(
    "me_body",
    [
        compact(client_id=APP_ID, openid=OPENID),
        compact(client_id=APP_ID, openid=OPENID, unionid=""),
        compact(client_id=APP_ID, openid=OPENID, unionid="None"),
        compact(client_id=APP_ID, openid=OPENID, unionid=None),
        compact(client_id=APP_ID, openid=OPENID, unionid="U" * 65),
    ],
)
def test_want_unionid_never_falls_back_to_openid(
    fake: FakeQQ, connector: QQConnector, me_body: str
) -> None:
    fake.routes[ME] = Canned(me_body)
    with pytest.raises(UpstreamProtocolError) as info:
        login(connector, want_unionid=True)
    assert "unionid" in info.value.hint


@pytest.mark.parametrize(
    ("body", "code", "message_key", "hint_part"),
    [
        # default-mode JSONP error (section 3.1)
        (
            'callback( {"error":100019,"error_description":"code to access token error"} );\n',
            100019,
            "upstream.code_invalid",
            "do not retry",
        ),
        (
            'callback( {"error":100020,"error_description":"code is reused error"} );\n  ',
            100020,
            "upstream.code_invalid",
            "do not retry",
        ),
        # fmt=json errors, both key orders (section 3.1, X8)
        (
            '{"error":100010,"error_description":"redirect uri is illegal"}',
            100010,
            "upstream.misconfigured",
            "{issuer}/qq/callback",
        ),
        (
            '{"error_description":"redirect uri is illegal","error":100010}',
            100010,
            "upstream.misconfigured",
            "sent redirect_uri=" + REDIRECT_URI,
        ),
        (
            '{"error":100009,"error_description":"client secret is illegal"}',
            100009,
            "upstream.misconfigured",
            "upstream.qq.app_key",
        ),
        (
            '{"error":"100008","error_description":"appid is not exist"}',
            100008,
            "upstream.misconfigured",
            "upstream.qq.app_id",
        ),
        (
            '{"error":100016,"error_description":"access token check failed"}',
            100016,
            "upstream.token_expired",
            "log in",
        ),
        (
            '{"error":123456,"error_description":"something new"}',
            123456,
            "upstream.rejected",
            "(123456)",
        ),
        # legacy code/msg shape (section 3.1 notes)
        (
            "code=100019&msg=code%20to%20access%20token%20error",
            100019,
            "upstream.code_invalid",
            "do not retry",
        ),
    ],
)
def test_token_errors(
    fake: FakeQQ, connector: QQConnector, body: str, code: int, message_key: str, hint_part: str
) -> None:
    fake.routes[TOKEN] = Canned(body)
    with pytest.raises(UpstreamRejected) as info:
        login(connector)
    error = info.value
    assert error.upstream_code == code
    assert error.message_key == message_key
    assert error.oauth_error == "server_error"  # login time: never invalid_grant
    assert hint_part in error.hint
    assert f"qq_code={code}" in str(error)
    assert error.endpoint == "token"
    assert_safe(error)
    assert fake.calls(ME) == fake.calls(USER) == []


def test_qq_message_echoing_a_secret_is_masked(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(
        compact(error=100019, error_description=f"bad code {CODE} for key {APP_KEY}")
    )
    with pytest.raises(UpstreamRejected) as info:
        login(connector)
    assert info.value.upstream_message == "bad code *** for key ***"


@pytest.mark.parametrize(
    "body",
    [
        f"expires_in=7776000&refresh_token={REFRESH_TOKEN}",  # form without access_token
        '{"access_token":"","expires_in":"5184000"}',
        '{"access_token":null}',
        '{"access_token":12345678}',
        '{"access_token":"AB CD"}',
        compact(access_token=ACCESS_TOKEN, refresh_token=42),
        '{"expires_in":"5184000"}',
        '{"error":"abc","error_description":"?"}',
        "<html><body>系统繁忙</body></html>",
        "<!DOCTYPE html><html><title>redirect uri is illegal(100010)</title></html>",
        "",
        "\n",
        "callback( );",
        "[]",
    ],
)
def test_token_protocol_errors(fake: FakeQQ, connector: QQConnector, body: str) -> None:
    fake.routes[TOKEN] = Canned(body)
    with pytest.raises(UpstreamProtocolError) as info:
        login(connector)
    assert info.value.oauth_error == "server_error"
    assert info.value.message_key == "upstream.protocol"
    assert info.value.endpoint == "token"
    assert_safe(info.value)


@pytest.mark.parametrize(
    ("body", "code", "message_key"),
    [
        ('{"ret":100016,"msg":"access token check failed"}', 100016, "upstream.token_expired"),
        (
            '{"ret":-1,"msg":"client request\'s parameters are invalid, invalid openid"}',
            -1,
            "upstream.rejected",
        ),
        ('{"ret":"-22","msg":"openid is invalid"}', -22, "upstream.rejected"),
        ('{"ret":1002,"msg":"请先登录"}', 1002, "upstream.token_expired"),
        ('{"ret":-3,"msg":"no permission"}', -3, "upstream.misconfigured"),
        ('{"ret":77777,"msg":"?"}', 77777, "upstream.rejected"),
    ],
)
def test_get_user_info_errors(
    fake: FakeQQ, connector: QQConnector, body: str, code: int, message_key: str
) -> None:
    fake.routes[USER] = Canned(body)
    with pytest.raises(UpstreamRejected) as info:
        login(connector)
    error = info.value
    assert (error.upstream_code, error.message_key) == (code, message_key)
    assert error.oauth_error == "server_error"
    assert error.endpoint == "get_user_info"
    assert_safe(error)


@pytest.mark.parametrize(
    "body", ['{"msg":"","nickname":"x"}', '{"ret":"zero","msg":""}', '{"ret":null}', '{"ret":true}']
)
def test_get_user_info_without_numeric_ret(fake: FakeQQ, connector: QQConnector, body: str) -> None:
    fake.routes[USER] = Canned(body)
    with pytest.raises(UpstreamProtocolError) as info:
        login(connector)
    assert info.value.endpoint == "get_user_info"


# ------------------------------------------------------------------ refresh and check_token


def test_refresh_rotates(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(REFRESH_JSON)
    tokens = connector.refresh(REFRESH_TOKEN)
    assert tokens.access_token == NEW_ACCESS_TOKEN
    assert tokens.refresh_token == NEW_REFRESH_TOKEN
    assert tokens.expires_in == 5184000
    (call,) = fake.seen
    assert call.method == "POST"
    assert call.query == ""
    assert call.form == {
        "grant_type": ["refresh_token"],
        "client_id": [APP_ID],
        "client_secret": [APP_KEY],
        "refresh_token": [REFRESH_TOKEN],
        "fmt": ["json"],
    }


def test_refresh_default_mode_form_body(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned(
        f"access_token={NEW_ACCESS_TOKEN}&expires_in=7776000&refresh_token={NEW_REFRESH_TOKEN}\n"
    )
    tokens = connector.refresh(REFRESH_TOKEN)
    assert (tokens.refresh_token, tokens.expires_in) == (NEW_REFRESH_TOKEN, 7776000)


@pytest.mark.parametrize(
    "body",
    [
        'callback({"error":100021,"error_description":"get access token error"})',
        '{"error":100021,"error_description":"get access token error"}',
        '{"error":100013,"error_description":"access token is illegal"}',
        '{"error":100014,"error_description":"token expired"}',
        '{"error":100015,"error_description":"token revoked"}',
        'callback( {"error":100016,"error_description":"access token check failed"} );\n',
    ],
)
def test_refresh_token_expired_is_invalid_grant(
    fake: FakeQQ, connector: QQConnector, body: str
) -> None:
    fake.routes[TOKEN] = Canned(body)
    with pytest.raises(UpstreamRejected) as info:
        connector.refresh(REFRESH_TOKEN)
    assert info.value.oauth_error == "invalid_grant"
    assert info.value.message_key == "upstream.token_expired"
    assert_safe(info.value)


def test_refresh_misconfigured_is_not_invalid_grant(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[TOKEN] = Canned('{"error":100009,"error_description":"client secret is illegal"}')
    with pytest.raises(UpstreamRejected) as info:
        connector.refresh(REFRESH_TOKEN)
    assert (info.value.oauth_error, info.value.message_key) == (
        "server_error",
        "upstream.misconfigured",
    )


@pytest.mark.parametrize("refresh_token", ["", "a b", "x" * 600])
def test_refresh_without_usable_token_does_not_call_qq(
    fake: FakeQQ, connector: QQConnector, refresh_token: str
) -> None:
    with pytest.raises(UpstreamRejected) as info:
        connector.refresh(refresh_token)
    assert info.value.oauth_error == "invalid_grant"
    assert fake.seen == []


def test_check_token(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[ME] = Canned(ME_JSONP)
    assert connector.check_token(ACCESS_TOKEN) == (OPENID, None)
    fake.routes[ME] = Canned(ME_JSON_UNIONID)
    assert connector.check_token(ACCESS_TOKEN, want_unionid=True) == (OPENID, UNIONID)
    assert [query(seen.query).get("unionid") for seen in fake.calls(ME)] == [None, ["1"]]


def test_check_token_expired_is_invalid_grant(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[ME] = Canned('{"error":100016,"error_description":"access token check failed"}')
    with pytest.raises(UpstreamRejected) as info:
        connector.check_token(ACCESS_TOKEN)
    assert (info.value.oauth_error, info.value.message_key) == (
        "invalid_grant",
        "upstream.token_expired",
    )


def test_check_token_foreign_app(fake: FakeQQ, connector: QQConnector) -> None:
    fake.routes[ME] = Canned(compact(client_id="222", openid=OPENID))
    with pytest.raises(UpstreamProtocolError):
        connector.check_token(ACCESS_TOKEN)
