"""The /_emulator control plane: faults, latency, expire_tokens, reset, request log."""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.emulator.conftest import (
    APP_ID,
    APP_KEY,
    TIMEOUT,
    Emulator,
    expected_openid,
)

ZHANG_OPENID = expected_openid(APP_ID, "zhangsan")


def set_control(emu: Emulator, update: object) -> requests.Response:
    return requests.post(emu.url + "/_emulator/control", json=update, timeout=TIMEOUT)


def user_info_params(token: str) -> dict[str, str]:
    return {"access_token": token, "oauth_consumer_key": APP_ID, "openid": ZHANG_OPENID}


# --- control state ----------------------------------------------------------------------


def test_control_defaults_and_merge(emu: Emulator) -> None:
    state = requests.get(emu.url + "/_emulator/control", timeout=TIMEOUT).json()
    assert state == {
        "auto_login": None,
        "cancel_mode": "close",
        "latency_ms": 0,
        "faults": {},
        "expire_tokens": False,
    }
    emu.control(latency_ms={"token": 5})
    merged = emu.control(auto_login="lisi")
    assert merged["latency_ms"] == {"token": 5} and merged["auto_login"] == "lisi"


@pytest.mark.parametrize(
    "update",
    [
        {"nope": 1},
        {"auto_login": "nobody"},
        {"cancel_mode": "explode"},
        {"latency_ms": -1},
        {"latency_ms": True},
        {"latency_ms": {"tokens": 10}},
        {"faults": {"token": "other_client_id"}},
        {"faults": {"get_user_info": "ignore_fmt"}},
        {"faults": {"authorize": "html"}},
        {"faults": {"me": "error:abc"}},
        {"faults": "html"},
        {"expire_tokens": "yes"},
        ["not", "an", "object"],
    ],
)
def test_control_rejects_bad_updates(emu: Emulator, update: object) -> None:
    response = set_control(emu, update)
    assert response.status_code == 400
    assert response.json()["error"]
    assert requests.get(emu.url + "/_emulator/control", timeout=TIMEOUT).json()["faults"] == {}


def test_reset_clears_control_log_codes_and_tokens(emu: Emulator) -> None:
    code = emu.login()
    token = emu.tokens()["access_token"]
    emu.control(faults={"me": "html"}, auto_login="lisi")
    reset = requests.post(emu.url + "/_emulator/reset", timeout=TIMEOUT).json()
    assert reset["faults"] == {} and reset["auto_login"] is None
    assert emu.requests_log() == []
    assert emu.post("/oauth2.0/token", emu.token_params(code, fmt="json")).json()["error"] == 100019
    assert emu.get("/oauth2.0/me", {"access_token": token, "fmt": "json"}).json()["error"] == 100013


def test_expire_tokens_expires_current_tokens_only(emu: Emulator) -> None:
    tokens = emu.tokens()
    old = {"access_token": tokens["access_token"], "fmt": "json"}
    emu.control(expire_tokens=True)
    assert emu.get("/oauth2.0/me", old).json()["error"] == 100016
    info = emu.get("/user/get_user_info", user_info_params(tokens["access_token"]))
    assert info.json() == {"ret": 100016, "msg": "access token check failed"}

    new = emu.post(
        "/oauth2.0/token", emu.refresh_params(tokens["refresh_token"], fmt="json")
    ).json()
    assert (
        emu.get("/oauth2.0/me", {"access_token": new["access_token"], "fmt": "json"}).json()[
            "openid"
        ]
        == ZHANG_OPENID
    )

    emu.control(expire_tokens=False)
    assert emu.get("/oauth2.0/me", old).json()["openid"] == ZHANG_OPENID


def test_users_endpoint_lists_openid_and_unionid(emu: Emulator) -> None:
    users = requests.get(emu.url + "/_emulator/users", timeout=TIMEOUT).json()
    assert [user["id"] for user in users] == [user.id for user in emu.settings.users]
    zhang = users[0]
    assert zhang["openid"] == ZHANG_OPENID and zhang["unionid"] is None
    assert zhang["nickname"] == "张三"


# --- latency ----------------------------------------------------------------------------


def test_latency_per_endpoint(emu: Emulator) -> None:
    params = emu.token_params(emu.login(), fmt="json")
    emu.control(latency_ms={"token": 300})
    started = time.monotonic()
    response = emu.post("/oauth2.0/token", params)
    assert time.monotonic() - started >= 0.3
    assert "access_token" in response.json()


def test_latency_for_all_endpoints(emu: Emulator) -> None:
    token = emu.tokens()["access_token"]
    emu.control(latency_ms=200)
    for path, params in (
        ("/oauth2.0/me", {"access_token": token}),
        ("/user/get_user_info", user_info_params(token)),
        ("/oauth2.0/authorize", emu.authorize_params()),
    ):
        started = time.monotonic()
        emu.get(path, params)
        assert time.monotonic() - started >= 0.2, path


# --- faults -----------------------------------------------------------------------------


def token_with_fault(emu: Emulator, fault: str, **extra: str) -> requests.Response:
    params = emu.token_params(emu.login(), **extra)
    emu.control(faults={"token": fault})
    return emu.post("/oauth2.0/token", params)


def test_fault_http_500_keeps_the_code_usable(emu: Emulator) -> None:
    params = emu.token_params(emu.login(), fmt="json")
    emu.control(faults={"token": "http_500"})
    failed = emu.post("/oauth2.0/token", params)
    assert failed.status_code == 500
    assert failed.headers["Server"] == "tws"
    emu.control(faults={})
    assert "access_token" in emu.post("/oauth2.0/token", params).json()


def test_fault_html(emu: Emulator) -> None:
    response = token_with_fault(emu, "html", fmt="json")
    assert response.status_code == 200
    assert response.text.lstrip().lower().startswith("<!doctype html>")
    assert "access_token" not in response.text


def test_fault_jsonp_error_even_with_fmt_json(emu: Emulator) -> None:
    response = token_with_fault(emu, "jsonp_error", fmt="json")
    assert response.text == (
        'callback( {"error":100019,"error_description":"code to access token error"} );\n'
    )
    emu.control(faults={"me": "jsonp_error"})
    me = emu.get("/oauth2.0/me", {"access_token": "X", "fmt": "json"})
    assert me.text == (
        'callback( {"error":100016,"error_description":"access token check failed"} );\n'
    )
    emu.control(faults={"get_user_info": "jsonp_error"})
    info = emu.get("/user/get_user_info", user_info_params("X"))
    assert info.text == 'callback( {"ret":100016,"msg":"access token check failed"} );\n'


def test_fault_empty_and_garbage(emu: Emulator) -> None:
    assert token_with_fault(emu, "empty").content == b""
    garbage = token_with_fault(emu, "garbage")
    assert garbage.status_code == 200 and garbage.text
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbage.text)
    assert "access_token=" not in garbage.text and not garbage.text.startswith("callback(")


def test_fault_omit_openid(emu: Emulator) -> None:
    body = token_with_fault(emu, "omit_openid", fmt="json", need_openid="1").json()
    assert "access_token" in body and "openid" not in body
    form = token_with_fault(emu, "omit_openid", need_openid="1").text
    assert form.startswith("access_token=") and "openid" not in form


def test_fault_expires_in_int(emu: Emulator) -> None:
    assert token_with_fault(emu, "expires_in_int", fmt="json").json()["expires_in"] == 5184000


def test_fault_trailing_whitespace(emu: Emulator) -> None:
    text = token_with_fault(emu, "trailing_whitespace").text
    assert text != text.rstrip() and text.rstrip().startswith("access_token=")
    emu.control(faults={"me": "trailing_whitespace"})
    me = emu.get("/oauth2.0/me", {"access_token": "X"}).text
    assert me.startswith("callback( ") and me.endswith(" \n") and me != me.rstrip() + "\n"


def test_fault_ignore_fmt(emu: Emulator) -> None:
    token = emu.tokens()["access_token"]
    assert token_with_fault(emu, "ignore_fmt", fmt="json").text.startswith("access_token=")
    emu.control(faults={"me": "ignore_fmt"})
    me = emu.get("/oauth2.0/me", {"access_token": token, "fmt": "json"})
    assert me.text == f'callback( {{"client_id":"{APP_ID}","openid":"{ZHANG_OPENID}"}} );\n'


def test_fault_oversized(emu: Emulator) -> None:
    emu.control(faults={"get_user_info": "oversized"})
    response = emu.get("/user/get_user_info", user_info_params("X"))
    assert len(response.content) >= 5 * 1024 * 1024


def test_fault_other_client_id(emu: Emulator) -> None:
    token = emu.tokens()["access_token"]
    emu.control(faults={"me": "other_client_id"})
    body = emu.get("/oauth2.0/me", {"access_token": token, "fmt": "json"}).json()
    assert body["client_id"] != APP_ID and body["openid"] == ZHANG_OPENID


def test_fault_error_code_in_each_shape(emu: Emulator) -> None:
    assert token_with_fault(emu, "error:100020", fmt="json").text == (
        '{"error":100020,"error_description":"code is reused error"}'
    )
    assert token_with_fault(emu, "error:100020").text == (
        'callback( {"error":100020,"error_description":"code is reused error"} );\n'
    )
    emu.control(faults={"me": "error:100013"})
    assert emu.get("/oauth2.0/me", {"access_token": "X", "fmt": "json"}).text == (
        '{"error":100013,"error_description":"access token is illegal"}'
    )
    emu.control(faults={"get_user_info": "error:-22"})
    assert emu.get("/user/get_user_info", user_info_params("X")).text == (
        '{"ret":-22,"msg":"openid is invalid"}'
    )


def test_faults_apply_only_to_their_endpoint(emu: Emulator) -> None:
    token = emu.tokens()["access_token"]
    emu.control(faults={"token": "garbage"})
    assert (
        emu.get("/oauth2.0/me", {"access_token": token, "fmt": "json"}).json()["openid"]
        == ZHANG_OPENID
    )


# --- request log ------------------------------------------------------------------------


def test_request_log_records_everything_and_masks_secrets(emu: Emulator) -> None:
    tokens = emu.tokens()
    code_response = emu.post("/oauth2.0/authorize", {**emu.authorize_params(), "user": "lisi"})
    code = code_response.headers["Location"].split("code=")[1].split("&")[0]
    emu.post("/oauth2.0/token", emu.token_params(code))
    emu.post("/oauth2.0/token", emu.refresh_params(tokens["refresh_token"]))
    emu.get("/oauth2.0/me", {"access_token": tokens["access_token"]})
    emu.get("/user/get_user_info", user_info_params(tokens["access_token"]))
    emu.control(auto_login=None)  # control traffic is not logged

    log = emu.requests_log()
    assert [(e["endpoint"], e["method"]) for e in log] == [
        ("authorize", "POST"),
        ("token", "POST"),
        ("authorize", "POST"),
        ("token", "POST"),
        ("token", "POST"),
        ("me", "GET"),
        ("get_user_info", "GET"),
    ]
    assert log[5]["path"] == "/oauth2.0/me"
    dumped = json.dumps(log)
    for secret in (APP_KEY, code, tokens["access_token"], tokens["refresh_token"]):
        assert secret not in dumped
    assert log[3]["params"]["client_secret"] == "***"
    assert log[3]["params"]["code"] == "***"
    assert log[4]["params"]["refresh_token"] == "***"
    assert log[5]["params"] == {"access_token": "***"}
    assert log[6]["params"]["openid"] == ZHANG_OPENID


def test_request_log_can_be_cleared(emu: Emulator) -> None:
    emu.get("/oauth2.0/me", {})
    assert len(emu.requests_log()) == 1
    assert requests.delete(emu.url + "/_emulator/requests", timeout=TIMEOUT).json() == []
    assert emu.requests_log() == []
