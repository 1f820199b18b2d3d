"""The hostile-upstream faults used by the security suite (security-checklist UP-06..UP-16).

Each fault deliberately breaks one of QQ's invariants (an empty or null openid, a
conflicting unionid, a hostile nickname...). These tests pin the exact bytes on the wire,
so the broker-side security tests really exercise what they claim to.
"""

from __future__ import annotations

import json

import pytest
import requests

from broker.emulator.faults import (
    DUPLICATE_OPENID,
    FIXED_FIGUREURL,
    FIXED_NICKNAME,
    PAREN_NOTE,
)
from tests.emulator.conftest import APP_ID, TIMEOUT, Emulator, MakeEmulator, expected_openid

ZHANG_OPENID = expected_openid(APP_ID, "zhangsan")
FIGUREURL_KEYS = (
    "figureurl",
    "figureurl_1",
    "figureurl_2",
    "figureurl_qq_1",
    "figureurl_qq_2",
    "figureurl_qq",
)


def token_with_fault(emu: Emulator, fault: str, **extra: str) -> requests.Response:
    params = emu.token_params(emu.login(), **extra)
    emu.control(faults={"token": fault})
    return emu.post("/oauth2.0/token", params)


def me_with_fault(emu: Emulator, fault: str, **extra: str) -> requests.Response:
    token = emu.tokens()["access_token"]
    emu.control(faults={"me": fault})
    return emu.get("/oauth2.0/me", {"access_token": token, **extra})


def user_info(emu: Emulator, token: str, openid: str = ZHANG_OPENID) -> requests.Response:
    params = {"access_token": token, "oauth_consumer_key": APP_ID, "openid": openid}
    return emu.get("/user/get_user_info", params)


# --- token ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", None])
def test_no_access_token_is_a_form_body_without_it(emu: Emulator, fmt: str | None) -> None:
    extra = {"fmt": fmt} if fmt else {}
    body = token_with_fault(emu, "no_access_token", need_openid="1", **extra).text
    assert body.startswith("expires_in=5184000&refresh_token=")
    assert not [pair for pair in body.split("&") if pair.startswith("access_token=")]
    assert body.endswith(f"&openid={ZHANG_OPENID}")


def test_token_openid_null(emu: Emulator) -> None:
    json_body = token_with_fault(emu, "openid_null", fmt="json", need_openid="1").json()
    assert json_body["openid"] is None and json_body["access_token"]
    form = token_with_fault(emu, "openid_null", need_openid="1").text
    assert form.endswith("&openid=null")


@pytest.mark.parametrize("value", ["", "None", "A" * 65, "../etc/passwd", "张三"])
def test_token_openid_value(emu: Emulator, value: str) -> None:
    body = token_with_fault(emu, f"openid:{value}", fmt="json", need_openid="1")
    assert json.loads(body.content.decode("utf-8"))["openid"] == value


def test_token_openid_value_only_with_need_openid(emu: Emulator) -> None:
    body = token_with_fault(emu, "openid:FORCED", fmt="json").json()
    assert "openid" not in body and body["access_token"]


# --- me ---------------------------------------------------------------------------------


def test_me_openid_null_and_missing(emu: Emulator) -> None:
    assert me_with_fault(emu, "openid_null", fmt="json").text == (
        f'{{"client_id":"{APP_ID}","openid":null}}'
    )
    assert me_with_fault(emu, "openid_missing").text == f'callback( {{"client_id":"{APP_ID}"}} );\n'


@pytest.mark.parametrize("value", ["", "None", "null", "X" * 200])
def test_me_openid_value(emu: Emulator, value: str) -> None:
    body = me_with_fault(emu, f"openid:{value}", fmt="json").json()
    assert body == {"client_id": APP_ID, "openid": value}


def test_me_duplicate_openid_keeps_both_members(emu: Emulator) -> None:
    text = me_with_fault(emu, "duplicate_openid", fmt="json").text
    assert text == (
        f'{{"client_id":"{APP_ID}","openid":"{ZHANG_OPENID}","openid":"{DUPLICATE_OPENID}"}}'
    )


def test_me_paren_in_value_is_still_valid_jsonp(emu: Emulator) -> None:
    text = me_with_fault(emu, "paren_in_value").text
    assert text.startswith("callback( {") and text.endswith("} );\n")
    inner = json.loads(text[len("callback( ") : -len(" );\n")])
    assert inner == {"client_id": APP_ID, "openid": ZHANG_OPENID, "msg": PAREN_NOTE}
    naive = text[text.index("(") + 1 : text.index(")")]  # cut at the first parenthesis
    with pytest.raises(json.JSONDecodeError):
        json.loads(naive)


def test_me_unionid_value_only_when_asked(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(unionid_enabled=True)
    token = emu.tokens()["access_token"]
    emu.control(faults={"me": "unionid:UID_CONFLICT"})
    asked = emu.get("/oauth2.0/me", {"access_token": token, "unionid": "1", "fmt": "json"})
    assert asked.json() == {
        "client_id": APP_ID,
        "openid": ZHANG_OPENID,
        "unionid": "UID_CONFLICT",
    }
    plain = emu.get("/oauth2.0/me", {"access_token": token, "fmt": "json"}).json()
    assert "unionid" not in plain


def test_me_unionid_value_does_not_bypass_unionid_not_enabled(emu: Emulator) -> None:
    body = me_with_fault(emu, "unionid:UID_X", unionid="1", fmt="json").json()
    assert body["error"] == 100048


# --- get_user_info ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "nickname",
    ['"><svg onload=alert(1)>', "x" * 10_240, "a\x00b\x1bc\u202eevil", ""],
)
def test_user_info_nickname_value(emu: Emulator, nickname: str) -> None:
    token = emu.tokens()["access_token"]
    emu.control(faults={"get_user_info": f"nickname:{nickname}"})
    body = user_info(emu, token).json()
    assert body["ret"] == 0 and body["nickname"] == nickname
    assert body["figureurl_qq_1"].startswith("http://thirdqq.qlogo.cn/")


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "http://127.0.0.1:9/avatar", "https://evil.test/a.png"]
)
def test_user_info_figureurl_value(emu: Emulator, url: str) -> None:
    token = emu.tokens()["access_token"]
    emu.control(faults={"get_user_info": f"figureurl:{url}"})
    response = user_info(emu, token)
    body = response.json()
    assert [body[key] for key in FIGUREURL_KEYS] == [url] * len(FIGUREURL_KEYS)
    assert body["nickname"] == "张三"
    assert "\\/" in response.text or "/" not in url  # the qzapp keys keep QQ's escaping


def test_user_info_fixed_profile_is_the_same_for_everyone(emu: Emulator) -> None:
    emu.control(faults={"get_user_info": "fixed_profile"})
    zhang = user_info(emu, emu.tokens("zhangsan")["access_token"]).json()
    li = user_info(emu, emu.tokens("lisi")["access_token"], expected_openid(APP_ID, "lisi")).json()
    for body in (zhang, li):
        assert body["nickname"] == FIXED_NICKNAME
        assert {body[key] for key in FIGUREURL_KEYS} == {FIXED_FIGUREURL}


@pytest.mark.parametrize("endpoint", ["token", "me"])
def test_forced_openid_is_accepted_by_get_user_info(emu: Emulator, endpoint: str) -> None:
    token = emu.tokens()["access_token"]
    forced = "Ab" * 32
    emu.control(faults={endpoint: f"openid:{forced}"})
    body = user_info(emu, token, forced).json()
    assert body["ret"] == 0
    assert f"/{forced}/" in body["figureurl"]
    assert user_info(emu, token).json()["ret"] == 0  # the real openid still works
    assert user_info(emu, token, "C" * 32).json()["ret"] == -1


# --- validation -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        {"token": "nickname:x"},
        {"token": "unionid:x"},
        {"token": "duplicate_openid"},
        {"me": "no_access_token"},
        {"me": "figureurl:x"},
        {"get_user_info": "openid:x"},
        {"get_user_info": "openid_null"},
        {"get_user_info": "nickname:" + "x" * 70_000},
        {"me": "OPENID:x"},
    ],
)
def test_new_faults_are_validated_per_endpoint(emu: Emulator, faults: dict[str, str]) -> None:
    response = requests.post(
        emu.url + "/_emulator/control", json={"faults": faults}, timeout=TIMEOUT
    )
    assert response.status_code == 400
    assert len(response.json()["error"]) < 2_000  # a huge value is not echoed back whole
    assert requests.get(emu.url + "/_emulator/control", timeout=TIMEOUT).json()["faults"] == {}


def test_value_faults_appear_in_the_control_state(emu: Emulator) -> None:
    state = emu.control(faults={"me": "openid:", "get_user_info": "nickname:<b>"})
    assert state["faults"] == {"me": "openid:", "get_user_info": "nickname:<b>"}
