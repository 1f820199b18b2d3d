"""End-to-end QQ login against the emulator, identifiers, headers, settings and state."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs

import pytest

from broker.emulator import EmulatorSettings, EmulatorUser, create_emulator_app
from broker.emulator.state import EXTENSION_KEY, REFRESH_CHAIN_SECONDS, EmulatorState
from broker.emulator.wire import QQError
from tests.emulator.conftest import (
    APP_ID,
    APP_KEY,
    CALLBACK,
    Emulator,
    MakeEmulator,
    expected_openid,
    parse_page,
    query_of,
)


def test_full_legacy_flow_like_social_core(emu: Emulator) -> None:
    """authorize → show → login → form token → JSONP me → get_user_info, all default mode."""
    start = emu.get("/oauth2.0/authorize", emu.authorize_params(state="xyz"))
    page = emu.get(start.headers["Location"][len(emu.url) :])
    [form] = parse_page(page.content.decode("utf-8")).forms
    callback = emu.post(form.action, {**form.hidden, "user": "wangxiaohong"})
    returned = query_of(callback.headers["Location"])
    assert returned["state"] == "xyz"

    token_body = emu.post("/oauth2.0/token", emu.token_params(returned["code"])).text
    access_token = parse_qs(token_body)["access_token"][0]
    me = emu.get("/oauth2.0/me", {"access_token": access_token}).text
    openid = json.loads(me[10:-3])["openid"]  # social-core's fixed slice works on our bytes
    assert openid == expected_openid(APP_ID, "wangxiaohong")

    info = emu.get(
        "/user/get_user_info",
        {"access_token": access_token, "oauth_consumer_key": APP_ID, "openid": openid},
    )
    assert json.loads(info.text)["nickname"] == "王小红"


def test_modern_flow_with_fmt_json_and_need_openid(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(unionid_enabled=True)
    emu.control(auto_login="lisi")
    start = emu.get("/oauth2.0/authorize", emu.authorize_params())
    code = query_of(start.headers["Location"])["code"]
    token = emu.get("/oauth2.0/token", emu.token_params(code, fmt="json", need_openid="1")).json()
    me = emu.get(
        "/oauth2.0/me", {"access_token": token["access_token"], "unionid": "1", "fmt": "json"}
    ).json()
    assert me["openid"] == token["openid"] == expected_openid(APP_ID, "lisi")
    listed = {user["id"]: user for user in emu.get("/_emulator/users").json()}
    assert me["unionid"] == listed["lisi"]["unionid"]
    assert re.fullmatch("UID_[0-9A-F]{32}", me["unionid"])


def test_openid_is_stable_per_app_and_differs_across_apps(make_emulator: MakeEmulator) -> None:
    def openid_of(emu: Emulator) -> str:
        token = emu.tokens("zhangsan")["access_token"]
        return str(emu.get("/oauth2.0/me", {"access_token": token, "fmt": "json"}).json()["openid"])

    same_a, same_b = make_emulator(app_id="101000001"), make_emulator(app_id="101000001")
    other = make_emulator(app_id="101000002")
    first = openid_of(same_a)
    assert first == openid_of(same_a) == openid_of(same_b)
    assert first == expected_openid("101000001", "zhangsan")
    assert openid_of(other) != first
    assert re.fullmatch("[0-9A-F]{32}", first)


def test_codes_and_tokens_are_fresh_upper_hex(emu: Emulator) -> None:
    codes = {emu.login() for _ in range(3)}
    assert len(codes) == 3
    tokens = emu.tokens()
    for value in [*codes, tokens["access_token"], tokens["refresh_token"]]:
        assert re.fullmatch("[0-9A-F]{32}", value)


def test_every_qq_endpoint_sends_qq_headers(emu: Emulator) -> None:
    token = emu.tokens()["access_token"]
    responses = [
        emu.get("/oauth2.0/authorize", emu.authorize_params(client_id="")),
        emu.get("/oauth2.0/show", emu.authorize_params(which="Login")),
        emu.post("/oauth2.0/token", {}),
        emu.get("/oauth2.0/me", {"access_token": token}),
        emu.get("/user/get_user_info", {}),
    ]
    for response in responses:
        assert response.status_code == 200, response.url
        assert response.headers["Server"] == "tws"
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["Connection"] == "close"
        assert response.headers["Content-Type"].startswith("text/html")


def test_connection_close_header_outside_waitress() -> None:
    """With a server that allows hop-by-hop headers the app sends Connection itself."""
    app = create_emulator_app(EmulatorSettings(APP_ID, APP_KEY, [CALLBACK]))
    response = app.test_client().get("/oauth2.0/me")
    assert response.headers["Connection"] == "close"
    assert response.headers["Content-Type"] == "text/html"
    assert response.headers["Content-Length"] == str(len(response.data))


def test_each_app_has_its_own_state() -> None:
    first = create_emulator_app(EmulatorSettings(APP_ID, APP_KEY, [CALLBACK]))
    second = create_emulator_app(EmulatorSettings(APP_ID, APP_KEY, [CALLBACK]))
    assert first.extensions[EXTENSION_KEY] is not second.extensions[EXTENSION_KEY]
    first.test_client().post("/_emulator/control", json={"auto_login": "lisi"})
    control = second.test_client().get("/_emulator/control").get_json()
    assert control["auto_login"] is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"app_id": ""},
        {"app_key": ""},
        {"users": []},
        {"cancel_mode": "maybe"},
        {"code_ttl": 0},
        {"users": [EmulatorUser("a", "x"), EmulatorUser("a", "y")]},
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, object]) -> None:
    values: dict[str, object] = {"app_id": APP_ID, "app_key": APP_KEY, "callbacks": [CALLBACK]}
    values.update(overrides)
    with pytest.raises(ValueError, match="emulator"):
        create_emulator_app(EmulatorSettings(**values))  # type: ignore[arg-type]


def test_settings_defaults() -> None:
    settings = EmulatorSettings(APP_ID, APP_KEY, [CALLBACK])
    assert (settings.unionid_enabled, settings.developer_id, settings.cancel_mode) == (
        False,
        "dev-account",
        "close",
    )
    assert (settings.expires_in, settings.code_ttl, settings.allow_loopback_ports) == (
        5184000,
        600,
        True,
    )
    assert len(settings.users) >= 4
    assert EmulatorSettings(APP_ID, APP_KEY, []).users is not settings.users


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_state_lifetimes_with_a_fake_clock() -> None:
    """Access tokens die after expires_in; the refresh chain after ~3 months (§2.3, §6)."""
    clock = FakeClock()
    state = EmulatorState(
        EmulatorSettings(APP_ID, APP_KEY, [CALLBACK], expires_in=100), clock=clock
    )
    user = state.users[0]
    grant = state.exchange_code(state.issue_code(user, CALLBACK), CALLBACK)
    clock.now += 99
    assert state.token_user(grant.access_token) == user
    clock.now += 1
    with pytest.raises(QQError) as expired:
        state.token_user(grant.access_token)
    assert expired.value.code == 100016

    rotated = state.refresh(grant.refresh_token)
    assert state.token_user(rotated.access_token) == user
    clock.now += REFRESH_CHAIN_SECONDS
    with pytest.raises(QQError) as chain_over:
        state.refresh(rotated.refresh_token)
    assert chain_over.value.code == 100021
