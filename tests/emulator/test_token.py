"""/oauth2.0/token: both grants, both formats, every error in QQ's order (§2.2, §2.3, §3.1)."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.emulator.conftest import (
    APP_ID,
    APP_KEY,
    CALLBACK,
    Emulator,
    MakeEmulator,
    expected_openid,
)

HEX32 = "[0-9A-F]{32}"


def jsonp_error(code: int, description: str) -> str:
    return f'callback( {{"error":{code},"error_description":"{description}"}} );\n'


def json_error(code: int, description: str) -> str:
    return f'{{"error":{code},"error_description":"{description}"}}'


def test_default_success_is_form_encoded(emu: Emulator) -> None:
    response = emu.post("/oauth2.0/token", emu.token_params(emu.login()))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html"
    assert response.headers["Server"] == "tws"
    assert re.fullmatch(
        f"access_token={HEX32}&expires_in=5184000&refresh_token={HEX32}", response.text
    )


def test_need_openid_adds_openid_to_the_form_body(emu: Emulator) -> None:
    response = emu.post("/oauth2.0/token", emu.token_params(emu.login("lisi"), need_openid="1"))
    openid = expected_openid(APP_ID, "lisi")
    assert re.fullmatch(
        f"access_token={HEX32}&expires_in=5184000&refresh_token={HEX32}&openid={openid}",
        response.text,
    )


def test_fmt_json_success_has_string_expires_in_and_key_order(emu: Emulator) -> None:
    response = emu.post(
        "/oauth2.0/token", emu.token_params(emu.login(), fmt="json", need_openid="1")
    )
    body = response.text
    assert re.fullmatch(
        f'{{"access_token":"{HEX32}","expires_in":"5184000",'
        f'"refresh_token":"{HEX32}","openid":"{HEX32}"}}',
        body,
    )
    assert list(json.loads(body)) == ["access_token", "expires_in", "refresh_token", "openid"]


def test_expires_in_is_configurable(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(expires_in=7776000)
    assert emu.tokens()["expires_in"] == "7776000"


def test_get_with_query_parameters_works_too(emu: Emulator) -> None:
    response = emu.get("/oauth2.0/token", emu.token_params(emu.login(), fmt="json"))
    assert "access_token" in response.json()


def test_query_and_form_body_are_merged(emu: Emulator) -> None:
    params = emu.token_params(emu.login())
    query = {"grant_type": params.pop("grant_type"), "fmt": "json"}
    response = emu.post("/oauth2.0/token?" + "&".join(f"{k}={v}" for k, v in query.items()), params)
    assert "access_token" in response.json()


@pytest.mark.parametrize(
    ("override", "code", "description"),
    [
        ({"grant_type": ""}, 100004, "param grant_type is wrong or missing"),
        ({"grant_type": "password"}, 100004, "param grant_type is wrong or missing"),
        ({"client_id": ""}, 100001, "param client_id is missing"),
        ({"client_id": "101000009"}, 100008, "client id is illegal"),
        ({"client_secret": ""}, 100002, "param client_secret is missing"),
        ({"client_secret": "0" * 32}, 100009, "client secret is illegal"),
        ({"code": ""}, 100005, "param code is missing"),
        ({"code": "0" * 32}, 100019, "code to access token error"),
        ({"redirect_uri": CALLBACK + "?x=1"}, 100010, "redirect uri is illegal"),
        (
            {"redirect_uri": "http%3A%2F%2F127.0.0.1%3A8000%2Fqq%2Fcallback"},
            100010,
            "redirect uri is illegal",
        ),
    ],
)
@pytest.mark.parametrize("fmt", ["", "json"])
def test_errors_are_jsonp_by_default_and_json_with_fmt(
    emu: Emulator, override: dict[str, str], code: int, description: str, fmt: str
) -> None:
    params = emu.token_params(emu.login())
    params.update(override)
    if fmt:
        params["fmt"] = fmt
    response = emu.post("/oauth2.0/token", params)
    assert response.status_code == 200
    expected = json_error(code, description) if fmt else jsonp_error(code, description)
    assert response.text == expected


def test_check_order_secret_before_code(emu: Emulator) -> None:
    params = emu.token_params("", client_secret="bad", fmt="json")
    assert emu.post("/oauth2.0/token", params).json()["error"] == 100009


def test_code_is_single_use(emu: Emulator) -> None:
    params = emu.token_params(emu.login(), fmt="json")
    assert "access_token" in emu.post("/oauth2.0/token", params).json()
    second = emu.post("/oauth2.0/token", params)
    assert second.text == json_error(100020, "code is reused error")
    params.pop("fmt")
    assert emu.post("/oauth2.0/token", params).text == jsonp_error(100020, "code is reused error")


def test_redirect_mismatch_does_not_burn_the_code(emu: Emulator) -> None:
    code = emu.login()
    wrong = emu.post("/oauth2.0/token", emu.token_params(code, redirect_uri=CALLBACK + "/"))
    assert wrong.text == jsonp_error(100010, "redirect uri is illegal")
    right = emu.post("/oauth2.0/token", emu.token_params(code))
    assert right.text.startswith("access_token=")


def test_redirect_uri_must_be_the_authorize_one_byte_for_byte(emu: Emulator) -> None:
    """A callback with a query at authorize time needs the same query at the token step."""
    with_query = CALLBACK + "?next=%2Fhome"
    code = emu.login(redirect_uri=with_query)
    bare = emu.post("/oauth2.0/token", emu.token_params(code, redirect_uri=CALLBACK))
    assert bare.text == jsonp_error(100010, "redirect uri is illegal")
    same = emu.post("/oauth2.0/token", emu.token_params(code, redirect_uri=with_query))
    assert same.text.startswith("access_token=")


def test_codes_expire(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(code_ttl=1)
    code = emu.login()
    time.sleep(1.2)
    response = emu.post("/oauth2.0/token", emu.token_params(code))
    assert response.text == jsonp_error(100019, "code to access token error")


def test_codes_are_per_emulator(make_emulator: MakeEmulator) -> None:
    first, second = make_emulator(), make_emulator()
    code = first.login()
    assert second.post("/oauth2.0/token", second.token_params(code)).text == jsonp_error(
        100019, "code to access token error"
    )


def test_refresh_rotates_and_old_refresh_token_dies(emu: Emulator) -> None:
    tokens = emu.tokens()
    refreshed = emu.post("/oauth2.0/token", emu.refresh_params(tokens["refresh_token"], fmt="json"))
    new = refreshed.json()
    assert list(new) == ["access_token", "expires_in", "refresh_token"]
    assert new["expires_in"] == "5184000"
    assert new["access_token"] != tokens["access_token"]
    assert new["refresh_token"] != tokens["refresh_token"]

    reused = emu.post("/oauth2.0/token", emu.refresh_params(tokens["refresh_token"]))
    assert reused.text == jsonp_error(100021, "get access token error")

    again = emu.post("/oauth2.0/token", emu.refresh_params(new["refresh_token"]))
    assert re.fullmatch(
        f"access_token={HEX32}&expires_in=5184000&refresh_token={HEX32}", again.text
    )
    me = emu.get("/oauth2.0/me", {"access_token": new["access_token"], "fmt": "json"})
    assert me.json()["openid"] == expected_openid(APP_ID, "zhangsan")


def test_refresh_with_need_openid(emu: Emulator) -> None:
    tokens = emu.tokens("lisi")
    refreshed = emu.post(
        "/oauth2.0/token", emu.refresh_params(tokens["refresh_token"], fmt="json", need_openid="1")
    ).json()
    assert refreshed["openid"] == expected_openid(APP_ID, "lisi")


@pytest.mark.parametrize(
    ("override", "code", "description"),
    [
        ({"refresh_token": ""}, 100006, "param refresh_token is missing"),
        ({"refresh_token": "F" * 32}, 100021, "get access token error"),
        ({"client_secret": APP_KEY.upper()}, 100009, "client secret is illegal"),
    ],
)
def test_refresh_errors(
    emu: Emulator, override: dict[str, str], code: int, description: str
) -> None:
    tokens = emu.tokens()
    params = emu.refresh_params(tokens["refresh_token"], fmt="json")
    params.update(override)
    assert emu.post("/oauth2.0/token", params).text == json_error(code, description)


def test_access_tokens_are_not_refresh_tokens(emu: Emulator) -> None:
    tokens = emu.tokens()
    params = emu.refresh_params(tokens["access_token"], fmt="json")
    assert emu.post("/oauth2.0/token", params).json()["error"] == 100021
