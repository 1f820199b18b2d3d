"""/oauth2.0/me (§2.4, §3.2) and /user/get_user_info (§2.5, §4, §5.2)."""

from __future__ import annotations

import json
import time

import pytest

from broker.emulator import EmulatorUser
from tests.emulator.conftest import (
    APP_ID,
    Emulator,
    MakeEmulator,
    expected_openid,
    expected_unionid,
)

USER_INFO_KEYS = [
    "ret",
    "msg",
    "is_lost",
    "nickname",
    "gender",
    "gender_type",
    "province",
    "city",
    "year",
    "constellation",
    "figureurl",
    "figureurl_1",
    "figureurl_2",
    "figureurl_qq_1",
    "figureurl_qq_2",
    "figureurl_qq",
    "figureurl_type",
    "is_yellow_vip",
    "vip",
    "yellow_vip_level",
    "level",
    "is_yellow_year_vip",
]


def me_jsonp(body: str) -> str:
    return f"callback( {body} );\n"


# --- /oauth2.0/me -----------------------------------------------------------------------


def test_me_default_is_jsonp_with_exact_bytes(emu: Emulator) -> None:
    token = emu.tokens("zhangsan")["access_token"]
    response = emu.get("/oauth2.0/me", {"access_token": token})
    openid = expected_openid(APP_ID, "zhangsan")
    assert response.status_code == 200
    assert response.content == (
        f'callback( {{"client_id":"{APP_ID}","openid":"{openid}"}} );\n'.encode()
    )
    assert response.headers["Content-Type"] == "text/html"
    assert response.headers["Server"] == "tws"
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Connection"] == "close"


def test_me_fmt_json(emu: Emulator) -> None:
    token = emu.tokens("lisi")["access_token"]
    response = emu.get("/oauth2.0/me", {"access_token": token, "fmt": "json"})
    assert response.text == (
        f'{{"client_id":"{APP_ID}","openid":"{expected_openid(APP_ID, "lisi")}"}}'
    )


def test_me_unionid_when_enabled(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(unionid_enabled=True, developer_id="dev-42")
    token = emu.tokens("xiaoming")["access_token"]
    openid = expected_openid(APP_ID, "xiaoming")
    unionid = expected_unionid("dev-42", "xiaoming")
    default = emu.get("/oauth2.0/me", {"access_token": token, "unionid": "1"})
    assert default.text == me_jsonp(
        f'{{"client_id":"{APP_ID}","openid":"{openid}","unionid":"{unionid}"}}'
    )
    plain = emu.get("/oauth2.0/me", {"access_token": token, "fmt": "json"})
    assert "unionid" not in plain.json()


def test_unionid_is_shared_across_one_developers_apps(make_emulator: MakeEmulator) -> None:
    first = make_emulator(app_id="101000001", unionid_enabled=True)
    second = make_emulator(app_id="101000002", unionid_enabled=True)
    answers = []
    for emu in (first, second):
        token = emu.tokens("lisi")["access_token"]
        answers.append(
            emu.get("/oauth2.0/me", {"access_token": token, "unionid": "1", "fmt": "json"}).json()
        )
    assert answers[0]["unionid"] == answers[1]["unionid"]
    assert answers[0]["openid"] != answers[1]["openid"]


@pytest.mark.parametrize("fmt", ["", "json"])
def test_me_unionid_not_enabled_is_100048(emu: Emulator, fmt: str) -> None:
    token = emu.tokens()["access_token"]
    params = {"access_token": token, "unionid": "1"}
    if fmt:
        params["fmt"] = fmt
    body = '{"error":100048,"error_description":"companyid not set"}'
    expected = body if fmt else me_jsonp(body)
    assert emu.get("/oauth2.0/me", params).text == expected


@pytest.mark.parametrize(
    ("params", "body"),
    [
        ({}, '{"error":100007,"error_description":"param access_token is missing"}'),
        (
            {"access_token": "A" * 32},
            '{"error":100013,"error_description":"access token is illegal"}',
        ),
    ],
)
def test_me_token_errors(emu: Emulator, params: dict[str, str], body: str) -> None:
    assert emu.get("/oauth2.0/me", params).text == me_jsonp(body)
    assert emu.get("/oauth2.0/me", {**params, "fmt": "json"}).text == body


def test_me_expired_token_is_100016(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(expires_in=1)
    token = emu.tokens()["access_token"]
    time.sleep(1.2)
    assert emu.get("/oauth2.0/me", {"access_token": token}).text == me_jsonp(
        '{"error":100016,"error_description":"access token check failed"}'
    )


def test_me_does_not_accept_post(emu: Emulator) -> None:
    """Unverified upstream (§9): the emulator stays strict so the connector uses GET."""
    token = emu.tokens()["access_token"]
    assert emu.post("/oauth2.0/me", {"access_token": token}).status_code == 405


# --- /user/get_user_info --------------------------------------------------------------


def user_info(emu: Emulator, user: str = "zhangsan") -> tuple[str, dict[str, object]]:
    token = emu.tokens(user)["access_token"]
    response = emu.get(
        "/user/get_user_info",
        {
            "access_token": token,
            "oauth_consumer_key": emu.settings.app_id,
            "openid": expected_openid(emu.settings.app_id, user),
        },
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    text = response.content.decode("utf-8")
    return text, json.loads(text)


def test_user_info_layout_matches_real_qq(emu: Emulator) -> None:
    text, info = user_info(emu)
    assert list(info) == USER_INFO_KEYS
    lines = text.split("\n")
    assert lines[0] == "{" and lines[-1] == "}"
    assert lines[1] == '\t"ret": 0,'
    assert lines[2] == '\t"msg": "",'
    assert lines[3] == '\t"is_lost":0,'
    assert lines[4] == '\t"nickname": "张三",'
    assert len(lines) == len(USER_INFO_KEYS) + 2
    openid = expected_openid(APP_ID, "zhangsan")
    escaped = f"http:\\/\\/qzapp.qlogo.cn\\/qzapp\\/{APP_ID}\\/{openid}\\/30"
    assert f'\t"figureurl": "{escaped}",' in lines
    assert '\t"figureurl_qq_1": "http://thirdqq.qlogo.cn/g?b=oidb&k=' in text


def test_user_info_values(emu: Emulator) -> None:
    _, info = user_info(emu)
    openid = expected_openid(APP_ID, "zhangsan")
    assert {key: info[key] for key in USER_INFO_KEYS[:10]} == {
        "ret": 0,
        "msg": "",
        "is_lost": 0,
        "nickname": "张三",
        "gender": "男",
        "gender_type": 2,
        "province": "广东",
        "city": "深圳",
        "year": "1990",
        "constellation": "",
    }
    for key, size in (("figureurl", 30), ("figureurl_1", 50), ("figureurl_2", 100)):
        assert info[key] == f"http://qzapp.qlogo.cn/qzapp/{APP_ID}/{openid}/{size}"
    for key, size in (("figureurl_qq_1", 40), ("figureurl_qq_2", 100), ("figureurl_qq", 640)):
        value = str(info[key])
        assert value.startswith("http://thirdqq.qlogo.cn/g?b=oidb&k=")
        assert f"&s={size}&t=" in value and "&kti=" in value
    assert info["figureurl_type"] == "1"
    for key in ("is_yellow_vip", "vip", "yellow_vip_level", "level", "is_yellow_year_vip"):
        assert info[key] == "0"


def test_user_without_big_avatar_gets_40px_in_figureurl_qq_2(emu: Emulator) -> None:
    _, info = user_info(emu, "zhaoliu")
    assert info["figureurl_qq_2"] == info["figureurl_qq_1"]
    assert "&s=40&" in str(info["figureurl_qq_2"])


def test_avatar_key_is_used(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(users=[EmulatorUser("a", "A", avatar_key="dALcKey123")])
    _, info = user_info(emu, "a")
    assert "&k=dALcKey123&" in str(info["figureurl_qq_1"])


@pytest.mark.parametrize(("user", "nickname"), [("xiaoming", "小明🐧✨"), ("noname", "")])
def test_nicknames_round_trip(emu: Emulator, user: str, nickname: str) -> None:
    text, info = user_info(emu, user)
    assert info["nickname"] == nickname
    assert f'"nickname": "{nickname}",' in text  # raw UTF-8, not \u escapes


def test_user_info_is_json_even_with_fmt(emu: Emulator) -> None:
    token = emu.tokens()["access_token"]
    response = emu.get(
        "/user/get_user_info",
        {
            "access_token": token,
            "oauth_consumer_key": APP_ID,
            "fmt": "xml",
            "openid": expected_openid(APP_ID, "zhangsan"),
        },
    )
    assert json.loads(response.text)["ret"] == 0


MISSING = '{"ret":-1,"msg":"client request\'s parameters are invalid"}'
INVALID_OPENID = '{"ret":-1,"msg":"client request\'s parameters are invalid, invalid openid"}'
BAD_TOKEN = '{"ret":100016,"msg":"access token check failed"}'


@pytest.mark.parametrize(
    ("override", "body"),
    [
        ({"access_token": ""}, MISSING),
        ({"oauth_consumer_key": ""}, MISSING),
        ({"openid": ""}, MISSING),
        ({"access_token": "B" * 32}, BAD_TOKEN),
        ({"oauth_consumer_key": "101000009"}, INVALID_OPENID),
        ({"openid": expected_openid(APP_ID, "lisi")}, INVALID_OPENID),
        ({"openid": expected_openid("101000009", "zhangsan")}, INVALID_OPENID),
    ],
)
def test_user_info_errors(emu: Emulator, override: dict[str, str], body: str) -> None:
    params = {
        "access_token": emu.tokens()["access_token"],
        "oauth_consumer_key": APP_ID,
        "openid": expected_openid(APP_ID, "zhangsan"),
    }
    params.update(override)
    response = emu.get("/user/get_user_info", params)
    assert response.status_code == 200
    assert response.text == body


def test_user_info_expired_token(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(expires_in=1)
    token = emu.tokens()["access_token"]
    time.sleep(1.2)
    response = emu.get(
        "/user/get_user_info",
        {
            "access_token": token,
            "oauth_consumer_key": APP_ID,
            "openid": expected_openid(APP_ID, "zhangsan"),
        },
    )
    assert response.text == BAD_TOKEN
