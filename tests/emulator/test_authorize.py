"""Browser side: /oauth2.0/authorize, the /oauth2.0/show login page, login and cancel
(qq-connect.md §2.1, §2.7, §8)."""

from __future__ import annotations

from urllib.parse import urljoin

import pytest

from broker.emulator import EmulatorUser
from tests.emulator.conftest import APP_ID, CALLBACK, Emulator, MakeEmulator, parse_page, query_of

QQ_HEADERS = {
    "Content-Type": "text/html",
    "Server": "tws",
    "Cache-Control": "no-cache",
    "Connection": "close",
}


def assert_qq_headers(headers: object) -> None:
    for name, value in QQ_HEADERS.items():
        assert headers[name] == value, name  # type: ignore[index]


def assert_error_page(emu: Emulator, params: dict[str, str], marker: str) -> None:
    """Authorize errors are HTML pages on QQ with ``desc(code)`` and never redirect (§2.1)."""
    response = emu.get("/oauth2.0/authorize", params)
    assert response.status_code == 200
    assert "Location" not in response.headers
    assert marker in response.content.decode("utf-8")
    assert_qq_headers(response.headers)


def test_authorize_redirects_to_the_show_login_page(emu: Emulator) -> None:
    response = emu.get("/oauth2.0/authorize", emu.authorize_params(scope="get_user_info"))
    assert response.status_code == 302
    assert_qq_headers(response.headers)
    location = response.headers["Location"]
    assert location.startswith(emu.url + "/oauth2.0/show?")
    assert query_of(location) == {
        "which": "Login",
        "display": "pc",
        "client_id": APP_ID,
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "state": "st-1",
        "scope": "get_user_info",
    }


@pytest.mark.parametrize(
    ("override", "marker"),
    [
        ({"response_type": ""}, "(100000)"),
        ({"response_type": "token"}, "(100000)"),
        ({"client_id": ""}, "(100001)"),
        ({"client_id": "999999999"}, "(100008)"),
        ({"redirect_uri": ""}, "redirect uri is illegal(100010)"),
        ({"redirect_uri": "http://127.0.0.1:8000/qq/other"}, "redirect uri is illegal(100010)"),
        ({"redirect_uri": "http://127.0.0.1:8001/qq/callback"}, "redirect uri is illegal(100010)"),
        ({"redirect_uri": "http://evil.example/qq/callback"}, "redirect uri is illegal(100010)"),
        ({"redirect_uri": CALLBACK + "/"}, "redirect uri is illegal(100010)"),
        ({"redirect_uri": CALLBACK + "#frag"}, "redirect uri is illegal(100010)"),
        ({"redirect_uri": CALLBACK + "?" + "x" * 1100}, "redirect uri is illegal(100010)"),
    ],
)
def test_authorize_errors_are_pages_without_redirect(
    emu: Emulator, override: dict[str, str], marker: str
) -> None:
    assert_error_page(emu, emu.authorize_params(**override), marker)


def test_response_type_is_checked_before_client_id(emu: Emulator) -> None:
    assert_error_page(emu, emu.authorize_params(response_type="x", client_id=""), "(100000)")


def test_extra_query_on_the_callback_is_allowed(emu: Emulator) -> None:
    """§2.7: only host+path must match; the query part is ignored."""
    params = emu.authorize_params(redirect_uri=CALLBACK + "?next=/a")
    assert emu.get("/oauth2.0/authorize", params).status_code == 302


def test_ports_and_localhost_are_refused_unless_loopback_is_allowed(
    make_emulator: MakeEmulator,
) -> None:
    strict = make_emulator(
        allow_loopback_ports=False,
        callbacks=[CALLBACK, "http://localhost/cb", "https://a.example/cb"],
    )
    for uri in (CALLBACK, "http://localhost/cb"):
        assert_error_page(strict, strict.authorize_params(redirect_uri=uri), "(100010)")
    ok = strict.get(
        "/oauth2.0/authorize", strict.authorize_params(redirect_uri="https://a.example/cb")
    )
    assert ok.status_code == 302


def test_non_loopback_hosts_never_get_ports(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(callbacks=["http://a.example:8080/cb"])
    assert_error_page(
        emu, emu.authorize_params(redirect_uri="http://a.example:8080/cb"), "(100010)"
    )


def test_show_without_which_is_100028(emu: Emulator) -> None:
    params = emu.authorize_params()
    response = emu.get("/oauth2.0/show", params)
    assert response.status_code == 200
    assert "(100028)" in response.content.decode("utf-8")


def test_show_revalidates_the_request(emu: Emulator) -> None:
    params = emu.authorize_params(which="Login", redirect_uri="http://evil.example/x")
    assert "(100010)" in emu.get("/oauth2.0/show", params).content.decode("utf-8")


def test_login_page_lists_users_and_posts_back(emu: Emulator) -> None:
    """Follow the real flow: authorize → show → submit a user's button → callback."""
    first = emu.get("/oauth2.0/authorize", emu.authorize_params(state="s/1 ?&=", scope="x"))
    page = emu.get(first.headers["Location"][len(emu.url) :])
    assert page.status_code == 200
    html = page.content.decode("utf-8")
    parsed = parse_page(html)
    assert parsed.scripts == 0
    [form] = parsed.forms
    assert (form.method, form.action) == ("post", "/oauth2.0/authorize")
    assert form.hidden == {
        "client_id": APP_ID,
        "redirect_uri": CALLBACK,
        "response_type": "code",
        "state": "s/1 ?&=",
        "scope": "x",
        "display": "pc",
    }
    user_buttons = [(value, text) for name, value, text in form.buttons if name == "user"]
    assert [value for value, _ in user_buttons] == [user.id for user in emu.settings.users]
    assert any("张三" in text for _, text in user_buttons)
    assert ("action", "cancel", "取消 / Cancel") in form.buttons

    submitted = emu.post(
        urljoin(emu.url, form.action)[len(emu.url) :], {**form.hidden, "user": "lisi"}
    )
    assert submitted.status_code == 302
    location = submitted.headers["Location"]
    assert location.startswith(CALLBACK + "?code=")
    code = query_of(location)["code"]
    assert len(code) == 32 and code == code.upper()
    assert location == f"{CALLBACK}?code={code}&state=s%2F1%20%3F%26%3D"


def test_login_page_escapes_everything(make_emulator: MakeEmulator) -> None:
    nasty = "<script>alert(\"x\")</script> & 'q'"
    emu = make_emulator(users=[EmulatorUser("u<1>", nasty)])
    params = emu.authorize_params(which="Login", state='"><img src=x onerror=alert(1)>')
    html = emu.get("/oauth2.0/show", params).content.decode("utf-8")
    assert "<script" not in html and "<img" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;q&#39;" in html
    assert 'value="u&lt;1&gt;"' in html
    [form] = parse_page(html).forms
    assert form.hidden["state"] == '"><img src=x onerror=alert(1)>'


def test_code_is_appended_with_ampersand_when_callback_has_a_query(emu: Emulator) -> None:
    data = emu.authorize_params(redirect_uri=CALLBACK + "?a=1", state="S")
    response = emu.post("/oauth2.0/authorize", {**data, "user": "zhangsan"})
    code = query_of(response.headers["Location"])["code"]
    assert response.headers["Location"] == f"{CALLBACK}?a=1&code={code}&state=S"


def test_post_revalidates_and_rejects_unknown_users(emu: Emulator) -> None:
    bad = emu.post(
        "/oauth2.0/authorize",
        {**emu.authorize_params(redirect_uri="http://evil.example/"), "user": "lisi"},
    )
    assert bad.status_code == 200 and "(100010)" in bad.content.decode("utf-8")
    unknown = emu.post("/oauth2.0/authorize", {**emu.authorize_params(), "user": "nobody"})
    assert unknown.status_code == 200 and "Location" not in unknown.headers


def test_cancel_closes_the_window_without_redirect(emu: Emulator) -> None:
    """Real PC QQ: the login page closes, the client is never told (§2.1)."""
    response = emu.post("/oauth2.0/authorize", {**emu.authorize_params(), "action": "cancel"})
    assert response.status_code == 200
    assert "Location" not in response.headers
    assert "closed" in response.content.decode("utf-8")


def test_cancel_redirect_mode_uses_usercancel(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(cancel_mode="redirect")
    response = emu.post(
        "/oauth2.0/authorize", {**emu.authorize_params(state="a b"), "action": "cancel"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == CALLBACK + "?usercancel=1&state=a%20b"


def test_cancel_mode_can_be_switched_by_control(emu: Emulator) -> None:
    emu.control(cancel_mode="redirect")
    response = emu.post("/oauth2.0/authorize", {**emu.authorize_params(), "action": "cancel"})
    assert response.headers["Location"] == CALLBACK + "?usercancel=1&state=st-1"


def test_auto_login_redirects_straight_to_the_callback(emu: Emulator) -> None:
    emu.control(auto_login="wangxiaohong")
    response = emu.get("/oauth2.0/authorize", emu.authorize_params())
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(CALLBACK + "?code=") and location.endswith("&state=st-1")
    token = emu.post(
        "/oauth2.0/token", emu.token_params(query_of(location)["code"], need_openid="1", fmt="json")
    )
    users = {user["id"]: user for user in emu.get("/_emulator/users").json()}
    assert token.json()["openid"] == users["wangxiaohong"]["openid"]


def test_auto_login_still_validates(emu: Emulator) -> None:
    emu.control(auto_login="zhangsan")
    assert_error_page(emu, emu.authorize_params(client_id="1"), "(100008)")


def test_auto_login_cancel_behaves_like_the_cancel_button(emu: Emulator) -> None:
    emu.control(auto_login="cancel")
    response = emu.get("/oauth2.0/authorize", emu.authorize_params())
    assert response.status_code == 200 and "Location" not in response.headers
    emu.control(cancel_mode="redirect")
    response = emu.get("/oauth2.0/authorize", emu.authorize_params())
    assert response.headers["Location"] == CALLBACK + "?usercancel=1&state=st-1"
