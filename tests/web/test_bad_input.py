"""Issue 2 point 9: bad input gets a clear answer, never a 500 or an unvetted redirect.

Requests are sent like a browser would (real HTTP, manual redirects) so the
tests see exactly what a user agent sees.
"""

from __future__ import annotations

from typing import Any

import pytest
import requests

from tests.conftest import Broker, Emulator
from tests.flows import authorize_url, follow_until, query_of


def valid_params(broker: Broker, client_id: str = "rp-basic", **overrides: Any) -> dict[str, Any]:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": broker.clients.get(client_id, broker.clients["rp-basic"])["redirect_uri"],
        "scope": "openid profile",
        "state": "rp-state-123",
        "nonce": "n-1",
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def assert_error_page(response: requests.Response, status: int = 400) -> None:
    assert response.status_code == status
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "overrides",
    [
        {"client_id": "no-such-client"},
        {"client_id": None},
        {"redirect_uri": "http://127.0.0.1:9/evil/callback"},
        {"redirect_uri": "http://127.0.0.1:9/basic/callback/"},
        {"redirect_uri": "http://127.0.0.1:9/basic/callback?x=1"},
        {"redirect_uri": None},
    ],
    ids=["unknown-client", "no-client", "foreign-uri", "trailing-slash", "added-query", "no-uri"],
)
def test_unverifiable_client_or_redirect_gets_a_page_not_a_redirect(
    broker: Broker, emulator: Emulator, overrides: dict[str, Any]
) -> None:
    response = requests.get(
        authorize_url(broker.issuer, **valid_params(broker, **overrides)),
        allow_redirects=False,
        timeout=5,
    )
    assert_error_page(response)
    assert emulator.requests() == []


def test_error_page_escapes_and_speaks_the_users_language(broker: Broker) -> None:
    params = valid_params(broker, redirect_uri='http://127.0.0.1:9/"><script>alert(1)</script>')
    response = requests.get(
        authorize_url(broker.issuer, **params),
        allow_redirects=False,
        headers={"Accept-Language": "en-US,en;q=0.9"},
        timeout=5,
    )
    assert_error_page(response)
    assert "<script>alert(1)" not in response.text
    assert "not registered" in response.text
    zh = requests.get(
        authorize_url(broker.issuer, **params),
        allow_redirects=False,
        headers={"Accept-Language": "zh-CN"},
        timeout=5,
    )
    assert "未注册" in zh.text


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "invalid_request"),
        ({"response_mode": "fragment"}, "invalid_request"),
        ({"max_age": "abc"}, "invalid_request"),
        ({"scope": "profile"}, "invalid_scope"),
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": "short"}, "invalid_request"),
        ({"prompt": "none"}, "login_required"),
        ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
        ({"request_uri": "http://127.0.0.1:9/r"}, "request_uri_not_supported"),
    ],
)
def test_invalid_request_redirects_error_with_state_and_iss(
    broker: Broker, emulator: Emulator, overrides: dict[str, Any], error: str
) -> None:
    params = valid_params(broker, **overrides)
    response = requests.get(
        authorize_url(broker.issuer, **params), allow_redirects=False, timeout=5
    )
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(params["redirect_uri"])
    query = query_of(location)
    assert query["error"] == error
    assert query["state"] == "rp-state-123"
    assert query["iss"] == broker.issuer
    assert "code" not in query
    assert emulator.requests() == []


def test_public_client_without_pkce_is_refused(broker: Broker) -> None:
    params = valid_params(broker, "rp-public", code_challenge=None, code_challenge_method=None)
    response = requests.get(
        authorize_url(broker.issuer, **params), allow_redirects=False, timeout=5
    )
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_duplicated_parameter_is_refused(broker: Broker) -> None:
    url = authorize_url(broker.issuer, **valid_params(broker)) + "&nonce=second"
    response = requests.get(url, allow_redirects=False, timeout=5)
    assert query_of(response.headers["Location"])["error"] == "invalid_request"
    twice = authorize_url(broker.issuer, **valid_params(broker)) + "&client_id=rp-post"
    assert_error_page(requests.get(twice, allow_redirects=False, timeout=5))


def test_error_description_is_plain_ascii(broker: Broker) -> None:
    params = valid_params(broker, response_type='code"\u4e2d\r\nSet-Cookie: x=1')
    response = requests.get(
        authorize_url(broker.issuer, **params), allow_redirects=False, timeout=5
    )
    assert response.status_code == 302
    description = query_of(response.headers["Location"]).get("error_description", "")
    assert description.isascii() and "\n" not in description and '"' not in description


def start_login(broker: Broker, browser: requests.Session, **overrides: Any) -> str:
    """Start a login and return the emulator authorize URL the broker sent us to."""
    params = valid_params(broker, **overrides)
    response = browser.get(authorize_url(broker.issuer, **params), allow_redirects=False, timeout=5)
    assert response.status_code == 302
    return response.headers["Location"]


def qq_callback_url(emulator: Emulator, browser: requests.Session, upstream: str) -> str:
    """Let the emulator answer the QQ authorize request; return the callback URL it sends back."""
    response = browser.get(upstream, allow_redirects=False, timeout=10)
    assert response.status_code == 302
    return response.headers["Location"]


def test_upstream_state_is_fresh_and_unguessable(broker: Broker) -> None:
    states = {query_of(start_login(broker, requests.Session()))["state"] for _ in range(20)}
    assert len(states) == 20
    assert all(len(s) >= 43 for s in states)  # 256 bits, base64url


@pytest.mark.parametrize("query", ["", "?code=ABC", "?state=", "?state=bogus&code=ABC"])
def test_callback_without_a_known_state_is_a_400_page(
    broker: Broker, emulator: Emulator, query: str
) -> None:
    response = requests.get(f"{broker.issuer}/qq/callback{query}", allow_redirects=False, timeout=5)
    assert_error_page(response)
    assert emulator.requests() == []


def test_callback_replay_is_refused(broker: Broker, emulator: Emulator) -> None:
    emulator.control(auto_login="zhangsan")
    browser = requests.Session()
    callback = qq_callback_url(emulator, browser, start_login(broker, browser))
    first = browser.get(callback, allow_redirects=False, timeout=10)
    assert "code" in query_of(first.headers["Location"])
    replay = browser.get(callback, allow_redirects=False, timeout=10)
    assert_error_page(replay)
    assert [r["endpoint"] for r in emulator.requests()].count("token") == 1


def test_callback_in_another_browser_is_refused(broker: Broker, emulator: Emulator) -> None:
    emulator.control(auto_login="zhangsan")
    attacker = requests.Session()
    callback = qq_callback_url(emulator, attacker, start_login(broker, attacker))
    victim = requests.Session()
    start_login(broker, victim)
    assert_error_page(victim.get(callback, allow_redirects=False, timeout=10))
    assert [r["endpoint"] for r in emulator.requests()].count("token") == 0


def finish(broker: Broker, emulator: Emulator, **control: Any) -> dict[str, str]:
    """Run a login with the emulator behaving as ``control`` says; return the RP's query."""
    emulator.control(**control)
    browser = requests.Session()
    response = follow_until(
        browser,
        authorize_url(broker.issuer, **valid_params(broker)),
        broker.clients["rp-basic"]["redirect_uri"],
    )
    assert response.status_code == 302, response.text[:300]
    return query_of(response.headers["Location"])


def test_cancel_with_usercancel_gives_access_denied(broker: Broker, emulator: Emulator) -> None:
    query = finish(broker, emulator, auto_login="cancel", cancel_mode="redirect")
    assert query["error"] == "access_denied"
    assert query["state"] == "rp-state-123" and query["iss"] == broker.issuer


def test_cancel_on_the_pc_page_never_returns(broker: Broker, emulator: Emulator) -> None:
    emulator.control(auto_login="cancel", cancel_mode="close")
    browser = requests.Session()
    response = follow_until(
        browser,
        authorize_url(broker.issuer, **valid_params(broker)),
        broker.clients["rp-basic"]["redirect_uri"],
    )
    assert response.status_code == 200  # QQ's page; nothing comes back to the broker
    assert [r["endpoint"] for r in emulator.requests()] == ["authorize"]


def test_callback_without_code_gives_access_denied(broker: Broker, emulator: Emulator) -> None:
    emulator.control(auto_login="zhangsan")
    browser = requests.Session()
    callback = qq_callback_url(emulator, browser, start_login(broker, browser))
    state = query_of(callback)["state"]
    response = browser.get(
        f"{broker.issuer}/qq/callback?state={state}", allow_redirects=False, timeout=10
    )
    query = query_of(response.headers["Location"])
    assert query["error"] == "access_denied" and query["state"] == "rp-state-123"


@pytest.mark.parametrize(
    ("faults", "error"),
    [
        ({"token": "http_500"}, "temporarily_unavailable"),
        ({"token": "html"}, "server_error"),
        ({"token": "garbage"}, "server_error"),
        ({"token": "error:100009"}, "server_error"),
        ({"token": "error:100010"}, "server_error"),
        ({"get_user_info": "error:100016"}, "server_error"),
        ({"get_user_info": "http_500"}, "temporarily_unavailable"),
        ({"token": "omit_openid", "me": "other_client_id"}, "server_error"),
        ({"token": "oversized"}, "temporarily_unavailable"),
    ],
)
def test_qq_failures_reach_the_rp_as_oauth_errors(
    broker: Broker, emulator: Emulator, faults: dict[str, str], error: str
) -> None:
    query = finish(broker, emulator, auto_login="zhangsan", faults=faults)
    assert query["error"] == error
    assert query["state"] == "rp-state-123" and query["iss"] == broker.issuer
    assert query["error_description"].isascii()
    assert "code" not in query


def test_token_endpoint_errors_are_json(broker: Broker) -> None:
    token_url = f"{broker.issuer}/token"
    get = requests.get(token_url, timeout=5)
    assert get.status_code == 405 and get.json()["error"] == "invalid_request"
    bad = requests.post(token_url, data={"grant_type": "password", "username": "x"}, timeout=5)
    assert bad.status_code in (400, 401) and "error" in bad.json()
    weird = requests.post(token_url, data={"grant_type": 'x"\\\u4e2d'}, timeout=5)
    assert weird.status_code in (400, 401) and "error" in weird.json()
    secret = broker.clients["rp-basic"]["client_secret"]
    wrong = requests.post(
        token_url,
        data={
            "grant_type": "authorization_code",
            "code": "nope",
            "redirect_uri": broker.clients["rp-basic"]["redirect_uri"],
        },
        auth=("rp-basic", secret + "x"),
        timeout=5,
    )
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    big = requests.post(token_url, data={"x": "y" * 200_000}, timeout=10)
    assert big.status_code == 413


def test_userinfo_requires_a_valid_bearer_token(broker: Broker) -> None:
    url = f"{broker.issuer}/userinfo"
    missing = requests.get(url, timeout=5)
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"  # RFC 6750 §3.1: no error code
    garbage = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=5)
    assert garbage.status_code == 401
    assert 'error="invalid_token"' in garbage.headers["WWW-Authenticate"]
    assert "sub" not in garbage.json()
    basic = requests.get(url, headers={"Authorization": "Basic eDp5"}, timeout=5)
    assert basic.status_code == 400 and basic.json()["error"] == "invalid_request"


def test_unknown_path_is_a_clean_404(broker: Broker) -> None:
    response = requests.get(f"{broker.issuer}/console", timeout=5)
    assert response.status_code == 404 and "Traceback" not in response.text


@pytest.mark.parametrize(
    ("client_id", "faults", "fragment"),
    [
        ("rp-basic", {"token": "error:100009"}, "misconfigured"),
        ("rp-basic", {"token": "error:100020"}, "invalid or reused"),
        ("rp-unionid", {"me": "error:100048"}, "UnionID is not enabled"),
    ],
)
def test_error_description_names_the_upstream_problem(
    broker: Broker, emulator: Emulator, client_id: str, faults: dict[str, str], fragment: str
) -> None:
    emulator.control(auto_login="zhangsan", faults=faults)
    params = valid_params(broker, client_id)
    response = follow_until(
        requests.Session(), authorize_url(broker.issuer, **params), params["redirect_uri"]
    )
    query = query_of(response.headers["Location"])
    assert query["error"] == "server_error"
    assert fragment in query["error_description"]
    assert "code" not in query


@pytest.mark.parametrize(
    ("path", "status"),
    [("/authorize", 413), ("/token", 413), ("/qq/callback", 405), ("/no-such-page", 404)],
)
def test_oversized_bodies_never_break_error_pages(broker: Broker, path: str, status: int) -> None:
    response = requests.post(f"{broker.issuer}{path}", data={"x": "y" * 70_000}, timeout=10)
    assert response.status_code == status
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    "overrides",
    [
        {"response_type": "<svg/onload=alert(1)>"},
        {"scope": "openid <b>x</b>", "response_type": "code token"},
        {"<img src=x onerror=alert(1)>" + "x" * 80: "1", "nonce": "<script>" * 100},
    ],
)
def test_error_descriptions_never_echo_markup(broker: Broker, overrides: dict[str, str]) -> None:
    params = valid_params(broker, **overrides)
    response = requests.get(
        authorize_url(broker.issuer, **params), allow_redirects=False, timeout=5
    )
    assert response.status_code == 302
    description = query_of(response.headers["Location"]).get("error_description", "")
    assert description and not set('<>\\"&') & set(description)
    assert "svg" not in description and "script" not in description and "img" not in description


def test_pending_logins_store_only_known_parameters(broker: Broker) -> None:
    from sqlalchemy import create_engine, text

    params = valid_params(broker, state="unique-state-for-storage-test", extra_junk="z" * 500)
    response = requests.get(
        authorize_url(broker.issuer, **params), allow_redirects=False, timeout=5
    )
    assert response.status_code == 302
    engine = create_engine(broker.config.storage.url)
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT request_params FROM login_transactions")).fetchall()
    engine.dispose()
    stored = [r[0] for r in rows if "unique-state-for-storage-test" in str(r[0])]
    assert stored and "extra_junk" not in stored[0]


def test_health_and_readiness(broker: Broker) -> None:
    assert requests.get(f"{broker.issuer}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{broker.issuer}/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_every_connector_message_key_speaks_both_languages() -> None:
    """Point 1 of the ops issue: each QQ error (through its message key) has a
    plain-language message for the user in zh-CN and en, never the generic fallback."""
    from broker.connectors.base import MESSAGE_KEYS
    from broker.web.messages import LOCALES, MESSAGES

    for key in MESSAGE_KEYS:
        assert key in MESSAGES, key
        assert set(MESSAGES[key]) == set(LOCALES), key
