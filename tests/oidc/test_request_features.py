"""Authorization request features (issue 3 point 8): form_post, claims, display, locales."""

from __future__ import annotations

import html
import json
import re

import requests

from tests.conftest import Broker, Emulator
from tests.flows import authorize_url, follow_until, query_of
from tests.oidc.test_flow import RelyingParty


def form_of(page: str) -> tuple[str, dict[str, str]]:
    """The action and hidden fields of a form_post page (values HTML-unescaped)."""
    action = html.unescape(re.search(r'<form method="post" action="([^"]*)"', page).group(1))  # type: ignore[union-attr]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))
    return action, {k: html.unescape(v) for k, v in fields.items()}


def test_form_post_delivers_the_code_by_post(broker: Broker, emulator: Emulator) -> None:
    emulator.control(auto_login="zhangsan")
    rp = RelyingParty(broker, "rp-basic")
    url, state = rp.authorization_url(response_mode="form_post")
    page = follow_until(requests.Session(), url, rp.redirect_uri)
    assert page.status_code == 200 and "Location" not in page.headers
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"] == "no-store"
    action, fields = form_of(page.text)
    assert action == rp.redirect_uri
    assert fields["state"] == state and fields["iss"] == broker.issuer
    token = rp.session.fetch_token(
        rp.meta["token_endpoint"], code=fields["code"], code_verifier=rp.verifier
    )
    assert rp.verify(token["id_token"])[0]["sub"] == emulator.user("zhangsan")["openid"]


def test_form_post_errors_and_escaping(broker: Broker) -> None:
    hostile = '"><script>alert(1)</script>'
    url = authorize_url(
        broker.issuer,
        response_type="code",
        client_id="rp-multi",
        redirect_uri=broker.clients["rp-multi"]["redirect_uri"].replace(
            "/multi/cb", "/multi/cb2?tenant=1"
        ),
        scope="openid",
        state=hostile,
        prompt="none",
        response_mode="form_post",
    )
    page = requests.get(url, allow_redirects=False, timeout=5)
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.text
    action, fields = form_of(page.text)
    assert action == "http://127.0.0.1:9/multi/cb2?tenant=1"
    assert fields == {"error": "login_required", "state": hostile, "iss": broker.issuer} | {
        k: v for k, v in fields.items() if k == "error_description"
    }


def test_claims_parameter_for_id_token_and_userinfo(broker: Broker, emulator: Emulator) -> None:
    request = {"id_token": {"nickname": None}, "userinfo": {"picture": {"essential": True}}}
    rp = RelyingParty(broker, "rp-basic", scope="openid")
    result = rp.login(emulator, user="lisi", claims=json.dumps(request))
    assert result["claims"]["nickname"] == "李四" and "picture" not in result["claims"]
    assert result["userinfo"]["picture"].startswith("https://")
    assert "nickname" not in result["userinfo"]


def test_malformed_claims_parameter_is_invalid_request(broker: Broker) -> None:
    for bad in ("not json", "[]", '{"other": {}}', '{"userinfo": []}', '{"id_token": {"x": 1}}'):
        url = authorize_url(
            broker.issuer,
            response_type="code",
            client_id="rp-basic",
            redirect_uri=broker.clients["rp-basic"]["redirect_uri"],
            scope="openid",
            state="s",
            claims=bad,
        )
        response = requests.get(url, allow_redirects=False, timeout=5)
        assert query_of(response.headers["Location"])["error"] == "invalid_request", bad


def test_touch_display_selects_qqs_mobile_page(broker: Broker, emulator: Emulator) -> None:
    RelyingParty(broker, "rp-basic").login(emulator, display="touch")
    authorize = next(r for r in emulator.requests() if r["endpoint"] == "authorize")
    assert authorize["params"].get("display") == "mobile"
    RelyingParty(broker, "rp-basic").login(emulator, display="page")
    pages = [r for r in emulator.requests() if r["endpoint"] == "authorize"]
    assert "display" not in pages[-1]["params"]


def test_mobile_browser_gets_qqs_mobile_page(broker: Broker, emulator: Emulator) -> None:
    emulator.control(auto_login="zhangsan")
    rp = RelyingParty(broker, "rp-basic")
    url, _ = rp.authorization_url()
    phone = requests.Session()
    phone.headers["User-Agent"] = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile"
    follow_until(phone, url, rp.redirect_uri)
    authorize = next(r for r in emulator.requests() if r["endpoint"] == "authorize")
    assert authorize["params"].get("display") == "mobile"


def test_interop_parameters_are_accepted(broker: Broker, emulator: Emulator) -> None:
    result = RelyingParty(broker, "rp-basic").login(
        emulator,
        login_hint="someone",
        acr_values="urn:x",
        ui_locales="en zh-CN",
        claims_locales="zh-CN",
        extra="foobar",
    )
    assert result["claims"]["sub"] == emulator.user("zhangsan")["openid"]
