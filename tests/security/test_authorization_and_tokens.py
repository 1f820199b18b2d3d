"""Security checklist, authorization and token rows (shared/security-checklist.md).

One or more tests per row AZ-01..AZ-12, TK-01..TK-09, PK-01..PK-04, IT-01..IT-05,
UI-01..UI-04, RT-01..RT-04 and DS-01..DS-03, named ``test_<row>_<what>``. Everything is
black-box HTTP against a running broker and QQ emulator; each browser (victim, attacker)
is its own ``requests.Session`` cookie jar. Registered RP redirect URIs are loopback
``http://127.0.0.1:9/...`` (never followed), so the row's near-miss matrices are built on
those. Where DESIGN.md overrides the checklist, the test proves the product's contract
and says so. Rows the product does not meet yet are ``xfail(strict=True)`` with the
repro in the reason. Time and memory figures assert that a bound exists, with a wide
margin.

TK-02 (code replay after 30 s) redeems its code when this module starts and is the last
test in the file, so the 30-second wait overlaps the rest of the suite.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from broker.config import ConfigError, parse_config
from tests.conftest import APP_ID, RP, Broker, Emulator, Pair, client_definitions, start_pair
from tests.flows import authorize_url, follow_until, query_of
from tests.security.conftest import (
    REFRESH_LOGGED_OUT,
    SPECIAL_SECRET,
    TIMEOUT,
    U1,
    U2,
    BrokerProcess,
    Listener,
    Login,
    assert_error_page,
    assert_error_redirect,
    auth_params,
    authorize_code,
    b64url,
    broker_key_pem,
    full_login,
    get,
    public,
    qq_logins,
    redeem,
    redirect_uri_of,
    refresh,
    s256,
    silent_authorize,
    token_post,
    userinfo,
    verify_id_token,
)

R_BASIC = f"{RP}/basic/callback"
R_MULTI = f"{RP}/multi/cb"
R_MULTI2 = f"{RP}/multi/cb2?tenant=1"
PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
FORBIDDEN_CLAIMS = {
    "email", "email_verified", "gender", "birthdate", "address", "qq_openid", "qq_unionid",
    "openid", "unionid", "appid", "app_id", "client_secret", "access_token", "refresh_token",
    "qq_access_token", "figureurl", "figureurl_qq_1", "figureurl_qq_2",
}  # fmt: skip

# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sso(broker: Broker, emulator: Emulator) -> tuple[requests.Session, Login]:
    """A browser with a broker session for U1: a valid request there yields a code at once,
    so every "never a code" assertion below is meaningful. Used read-only."""
    browser = requests.Session()
    return browser, full_login(broker, emulator, "rp-basic", U1, browser)


@pytest.fixture(scope="module", autouse=True)
def early_redemption(broker: Broker, emulator: Emulator) -> dict[str, Any]:
    """TK-02: a code redeemed as this module starts; replayed by the last test, >= 30 s later."""
    login = full_login(
        broker, emulator, "rp-refresh", U2, requests.Session(), scope="openid offline_access"
    )
    return {"login": login, "redeemed_at": time.monotonic()}


@pytest.fixture(scope="module")
def attacker_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def discovery(broker: Broker) -> dict[str, Any]:
    return broker.metadata()


def code_from(response: requests.Response) -> str:
    assert response.status_code in (302, 303), (response.status_code, response.text[:300])
    query = query_of(response.headers["Location"])
    assert "code" in query, query
    return query["code"]


def logged_in_via(
    broker: Broker, emulator: Emulator, user: str, client_id: str = "rp-refresh"
) -> tuple[requests.Session, Login]:
    browser = requests.Session()
    scope = "openid offline_access" if client_id.startswith("rp-refresh") else "openid"
    return browser, full_login(broker, emulator, client_id, user, browser, scope=scope)


def still_logged_in(broker: Broker, browser: requests.Session) -> bool:
    _, response = silent_authorize(broker, browser, "rp-refresh")
    return "code" in query_of(response.headers["Location"])


# =========================================================================== AZ: /authorize


@pytest.mark.parametrize(
    "case", ["unregistered-uri", "other-clients-uri", "unknown-client", "no-client", "empty-client"]
)
def test_az01_unverifiable_client_or_redirect_uri_gets_an_error_page(
    broker: Broker, emulator: Emulator, sso: tuple[requests.Session, Login], case: str
) -> None:
    cases: dict[str, dict[str, Any]] = {
        "unregistered-uri": {"redirect_uri": f"{R_BASIC}/callback/{secrets.token_hex(6)}"},
        "other-clients-uri": {"redirect_uri": f"{RP}/post/callback"},
        "unknown-client": {"client_id": "nope"},
        "no-client": {"client_id": None},
        "empty-client": {"client_id": ""},
    }
    overrides = cases[case]
    url = authorize_url(broker.issuer, **public(auth_params(broker, **overrides)))
    for browser in (requests.Session(), sso[0]):  # a fresh jar and a logged-in one
        response = get(browser, url)
        assert_error_page(response)
        assert "code=" not in response.text
    assert emulator.requests() == []  # never sent to QQ either


def test_az01_error_page_shows_the_uri_html_escaped_only(broker: Broker) -> None:
    hostile = f'{RP}/"><script>alert(1)</script><img src=x onerror=alert(2)>'
    response = get(
        None, authorize_url(broker.issuer, **public(auth_params(broker, redirect_uri=hostile)))
    )
    assert_error_page(response)
    assert "<script>alert(1)" not in response.text
    assert "<img src=x" not in response.text


NEAR_MISSES = [
    pytest.param(R_BASIC + "/", id="trailing-slash"),
    pytest.param(R_BASIC + "/x", id="sub-path"),
    pytest.param(R_BASIC + "/../x", id="dot-segment"),
    pytest.param(R_BASIC + "%2f..%2fx", id="encoded-dot-segment"),
    pytest.param(R_BASIC + "/..;/x", id="semicolon-dot-segment"),
    pytest.param(f"{RP}/basic/CALLBACK", id="path-case"),
    pytest.param(f"{RP}/Basic/callback", id="path-case-2"),
    pytest.param("HTTP://127.0.0.1:9/basic/callback", id="scheme-case"),
    pytest.param("http://localhost:9/basic/callback", id="host-alias"),
    pytest.param("http://127.0.0.1:09/basic/callback", id="port-leading-zero"),
    pytest.param("http://127.0.0.1/basic/callback", id="port-dropped"),
    pytest.param("http://127.0.0.1:80/basic/callback", id="port-default"),
    pytest.param("https://127.0.0.1:9/basic/callback", id="scheme-https"),
    pytest.param(R_BASIC + "?x=1", id="query-added"),
    pytest.param(R_BASIC + "?", id="empty-query"),
    pytest.param(R_BASIC + "#f", id="fragment"),
    pytest.param(R_BASIC + "#", id="empty-fragment"),
    pytest.param("http://127.0.0.1.evil.test:9/basic/callback", id="host-suffix"),
    pytest.param("http://127.0.0.1:9.evil.test/basic/callback", id="port-suffix"),
    pytest.param("http://127.0.0.1:9@evil.test/basic/callback", id="userinfo"),
    pytest.param("http://a@b@evil.test/basic/callback", id="double-at"),
    pytest.param("http://evil.test%40127.0.0.1:9/basic/callback", id="encoded-at"),
    pytest.param("http://evil.test\\@127.0.0.1:9/basic/callback", id="backslash-at"),
    pytest.param(R_BASIC + "%0d%0a", id="crlf-literal"),
    pytest.param(R_BASIC + "\r\n", id="crlf"),
    pytest.param(R_BASIC + " ", id="trailing-space"),
    pytest.param(" " + R_BASIC, id="leading-space"),
    pytest.param(R_BASIC + "%20", id="encoded-space"),
    pytest.param(R_BASIC + "\t", id="tab"),
    pytest.param(R_BASIC + "\x00", id="nul"),
    pytest.param("http://127.0.0.1:9/basic/callb\u0430ck", id="idn-lookalike-path"),
    pytest.param("http://\uff11\uff12\uff17.0.0.1:9/basic/callback", id="fullwidth-host"),
    pytest.param("http://127.0.0.1.:9/basic/callback", id="trailing-dot-host"),
    pytest.param("http://2130706433:9/basic/callback", id="decimal-ip"),
    pytest.param("http://[::ffff:127.0.0.1]:9/basic/callback", id="ipv4-mapped-ipv6"),
    pytest.param("//127.0.0.1:9/basic/callback", id="scheme-relative"),
    pytest.param("http:127.0.0.1:9/basic/callback", id="no-slashes"),
    pytest.param("http://127.0.0.1:9//basic/callback", id="double-slash"),
    pytest.param("http://127.0.0.1:9/basic/./callback", id="dot-path"),
]


@pytest.mark.parametrize("redirect_uri", NEAR_MISSES)
def test_az02_near_miss_redirect_uris_never_redirect(
    broker: Broker, emulator: Emulator, redirect_uri: str
) -> None:
    params = public(auth_params(broker, "rp-basic", redirect_uri=redirect_uri))
    assert_error_page(get(None, authorize_url(broker.issuer, **params)))
    assert emulator.requests() == []


@pytest.mark.parametrize(
    "redirect_uri",
    [
        f"{RP}/multi/cb2?tenant=2",
        f"{RP}/multi/cb2?tenant=1&x=1",
        f"{RP}/multi/cb2?x=1&tenant=1",
        f"{RP}/multi/cb2",
        f"{RP}/multi/cb2?tenant=1#",
        f"{RP}/multi/cb2?tenant=01",
        f"{RP}/multi/cb2?TENANT=1",
    ],
)
def test_az02_registered_query_must_match_exactly(
    broker: Broker, emulator: Emulator, redirect_uri: str
) -> None:
    params = public(auth_params(broker, "rp-multi", redirect_uri=redirect_uri))
    assert_error_page(get(None, authorize_url(broker.issuer, **params)))
    assert emulator.requests() == []


def test_az02_exact_registered_uri_with_query_works(broker: Broker, emulator: Emulator) -> None:
    login = authorize_code(broker, emulator, "rp-multi", redirect_uri=R_MULTI2)
    assert login.response["tenant"] == "1"  # the registered query is kept, ours appended
    assert redeem(broker, login).status_code == 200


@pytest.mark.parametrize("client_id", ["rp-multi", "rp-basic"])
def test_az03_missing_redirect_uri_is_refused_for_one_or_many_registered(
    broker: Broker, emulator: Emulator, sso: tuple[requests.Session, Login], client_id: str
) -> None:
    """Chosen policy: redirect_uri is required (OIDC Core 3.1.2.1), even with one URI."""
    params = public(auth_params(broker, client_id, redirect_uri=None))
    for browser in (requests.Session(), sso[0]):
        assert_error_page(get(browser, authorize_url(broker.issuer, **params)))
    assert emulator.requests() == []


DUPLICATES: dict[str, tuple[str, str]] = {
    "client_id": ("rp-basic", "rp-post"),
    "redirect_uri": (R_BASIC, f"{RP}/post/callback"),
    "response_type": ("code", "token"),
    "scope": ("openid", "openid profile"),
    "state": ("s-1", "s-2"),
    "nonce": ("n-1", "n-2"),
    "code_challenge": (s256("a" * 43), s256("b" * 43)),
    "code_challenge_method": ("S256", "plain"),
    "prompt": ("none", "login"),
    "max_age": ("600", "0"),
    "id_token_hint": ("e30.e30.sig", "e30.e30.sig2"),
    "response_mode": ("query", "form_post"),
}


def assert_pollution_refused(
    broker: Broker, response: requests.Response, name: str, state: str
) -> None:
    if name in ("client_id", "redirect_uri"):
        assert_error_page(response)  # which client or URI is meant is unknown: no redirect
    else:
        assert_error_redirect(
            response, broker, R_BASIC, "invalid_request", None if name == "state" else state
        )


@pytest.mark.parametrize("same", [False, True], ids=["different", "identical"])
@pytest.mark.parametrize("name", list(DUPLICATES))
def test_az04_repeated_parameter_is_refused_never_a_code(
    broker: Broker, sso: tuple[requests.Session, Login], name: str, same: bool
) -> None:
    first, second = DUPLICATES[name]
    params = public(auth_params(broker, "rp-basic"))
    params.pop(name, None)
    extra = urlencode([(name, first), (name, first if same else second)])
    response = get(sso[0], authorize_url(broker.issuer, **params) + "&" + extra)
    assert_pollution_refused(broker, response, name, params.get("state", ""))


@pytest.mark.parametrize(
    "name", ["client_id", "redirect_uri", "response_type", "scope", "state", "nonce",
             "code_challenge", "prompt"],
)  # fmt: skip
def test_az04_one_copy_in_query_one_in_post_body_is_refused(
    broker: Broker, sso: tuple[requests.Session, Login], name: str
) -> None:
    first, second = DUPLICATES[name]
    body = public(auth_params(broker, "rp-basic"))
    body[name] = second
    query = urlencode({name: first})
    response = sso[0].post(
        f"{broker.issuer}/authorize?{query}", data=body, allow_redirects=False, timeout=TIMEOUT
    )
    assert_pollution_refused(broker, response, name, body["state"])


def registration(uri: str, issuer: str = "https://sso.example.com") -> None:
    """Load a config registering ``uri`` through the product's config loader."""
    development = issuer.startswith("http://127.")
    parse_config(
        {
            "issuer": issuer,
            "upstream": {
                "qq": {
                    "app_id": APP_ID,
                    "app_key": secrets.token_hex(16),
                    "base_url": "http://127.0.0.1:1" if development else "https://graph.qq.com",
                }
            },
            "clients": [
                {
                    "client_id": "rp-x",
                    "client_secret": secrets.token_urlsafe(24),
                    "redirect_uris": [uri],
                }
            ],
        },
        source="<az05>",
        base_dir=Path("/nonexistent"),
    )


@pytest.mark.parametrize("issuer", ["https://sso.example.com", "http://127.0.0.1:8000"])
@pytest.mark.parametrize(
    "uri",
    [
        "https://rp-a.test/cb#fragment",
        "https://rp-a.test/cb#",
        "https://rp-a.test/cb#code=x",
        "https://*.rp-a.test/cb",
        "https://rp-a.test/*",
        "https://rp-a.test/cb*",
        "javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "http://rp-a.test/cb",
        "http://10.0.0.1/cb",
        "https://rp-a.test/cb?code=x",
        "https://rp-a.test/cb?state=x",
        "https://rp-a.test/cb?iss=x",
        "https://rp-a.test/cb?a=1&code=2",
        "https://rp-a.test/cb?error=x",
        "/relative/cb",
    ],
)
def test_az05_unsafe_redirect_uri_registrations_are_refused_at_load(uri: str, issuer: str) -> None:
    with pytest.raises(ConfigError) as refused:
        registration(uri, issuer)
    assert "clients[0].redirect_uris[0]" in str(refused.value)


def test_az05_safe_registrations_still_load() -> None:
    for uri in ("https://rp-a.test/cb", "https://rp-a.test/cb2?tenant=1", "http://127.0.0.1:9/cb"):
        registration(uri)  # the refusals above are not a blanket refusal


@pytest.mark.parametrize(
    "uri", ["https://rp-a.test/cb?response=x", "https://rp-a.test/cb?a=1&response="]
)
def test_az05_response_parameter_in_registered_uri_is_refused(uri: str) -> None:
    with pytest.raises(ConfigError):
        registration(uri)


def test_az05_cli_check_names_the_bad_registration(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "issuer: https://sso.example.com\n"
        "upstream:\n  qq:\n    app_id: ${QQ_APP_ID}\n    app_key: ${QQ_APP_KEY}\n"
        "clients:\n  - client_id: rp-a\n    client_secret: ${RP_SECRET}\n"
        "    redirect_uris: ['https://rp-a.test/cb#frag']\n",
        encoding="utf-8",
    )
    env = {
        **os.environ,
        "QQ_APP_ID": APP_ID,
        "QQ_APP_KEY": secrets.token_hex(16),
        "RP_SECRET": secrets.token_urlsafe(24),
    }
    result = subprocess.run(
        [sys.executable, "-m", "broker", "check", "--config", str(config)],
        capture_output=True, text=True, env=env, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "clients[0].redirect_uris[0]" in result.stderr and "fragment" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "overrides",
    [
        {"response_type": "token"},
        {"response_type": "id_token"},
        {"response_type": "id_token token"},
        {"response_type": "code id_token"},
        {"response_type": "code token"},
        {"response_type": "code id_token token"},
        {"response_type": None},
        {"response_type": "code code"},
        {"response_type": "none"},
        {"response_mode": "form_post.jwt"},
        {"response_mode": "fragment"},
        {"response_mode": "jwt"},
    ],
    ids=lambda o: f"{next(iter(o))}={next(iter(o.values()))}",
)
def test_az06_only_response_type_code_is_served(
    broker: Broker,
    emulator: Emulator,
    sso: tuple[requests.Session, Login],
    overrides: dict[str, Any],
) -> None:
    params = public(auth_params(broker, "rp-basic", **overrides))
    response = get(sso[0], authorize_url(broker.issuer, **params))
    assert_error_redirect(
        response, broker, R_BASIC, {"unsupported_response_type", "invalid_request"}, params["state"]
    )
    assert "#" not in response.headers["Location"]  # never a token in a fragment
    assert emulator.requests() == []


def test_az06_discovery_advertises_code_only(broker: Broker) -> None:
    meta = discovery(broker)
    assert meta["response_types_supported"] == ["code"]
    assert "fragment" not in meta.get("response_modes_supported", [])


def test_az07_error_response_echoes_state_and_reflects_nothing(
    broker: Broker, emulator: Emulator
) -> None:
    state = "<svg onload=alert(1)>\"'&x"
    params = public(auth_params(broker, "rp-basic", scope="bogus\r\nSet-Cookie:x=1", state=state))
    response = get(None, authorize_url(broker.issuer, **params))
    query = assert_error_redirect(
        response, broker, R_BASIC, {"invalid_scope", "invalid_request"}, state
    )
    location = response.headers["Location"]
    assert "<" not in location and "\r" not in location and "\n" not in location
    description = query.get("error_description", "")
    assert all(0x20 <= ord(ch) < 0x7F for ch in description)
    assert not set('<>"\\') & set(description)
    assert "Set-Cookie" not in description and "svg" not in description
    assert "x=1" not in response.headers.get("Set-Cookie", "")
    assert emulator.requests() == []


def iss_of(location: str) -> str:
    """The ``iss`` value as sent (one occurrence), percent-decoded."""
    raw = [part for part in urlsplit(location).query.split("&") if part.startswith("iss=")]
    assert len(raw) == 1, location
    return unquote(raw[0][4:].replace("+", " "))


def test_az08_iss_on_every_authorization_response(
    broker: Broker, emulator: Emulator, sso: tuple[requests.Session, Login]
) -> None:
    meta = discovery(broker)
    assert meta["authorization_response_iss_parameter_supported"] is True
    issuer = meta["issuer"]
    locations: dict[str, str] = {}

    emulator.control(auto_login=U1)
    params = public(auth_params(broker))
    via_qq = follow_until(requests.Session(), authorize_url(broker.issuer, **params), R_BASIC)
    locations["success-via-qq"] = via_qq.headers["Location"]
    _, via_session = silent_authorize(broker, sso[0])
    locations["success-via-session"] = via_session.headers["Location"]
    bad_scope = public(auth_params(broker, scope="profile"))
    locations["invalid_scope"] = get(None, authorize_url(broker.issuer, **bad_scope)).headers[
        "Location"
    ]
    _, login_required = silent_authorize(broker, requests.Session())
    locations["login_required"] = login_required.headers["Location"]
    emulator.control(auto_login="cancel", cancel_mode="redirect")
    cancelled = follow_until(requests.Session(), authorize_url(broker.issuer, **params), R_BASIC)
    locations["access_denied"] = cancelled.headers["Location"]
    emulator.control(auto_login=U1, cancel_mode="close", faults={"token": "http_500"})
    failed = follow_until(requests.Session(), authorize_url(broker.issuer, **params), R_BASIC)
    locations["upstream-failure"] = failed.headers["Location"]
    for name, location in locations.items():
        assert location.startswith(R_BASIC + "?"), name
        assert iss_of(location) == issuer, name

    emulator.control(faults={})
    form_params = public(auth_params(broker, response_mode="form_post"))
    page = follow_until(requests.Session(), authorize_url(broker.issuer, **form_params), R_BASIC)
    assert page.status_code == 200
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
    assert "code" in fields and fields["iss"] == issuer


def test_az09_prompt_none_without_session_is_login_required_and_never_reaches_qq(
    broker: Broker, emulator: Emulator
) -> None:
    params, response = silent_authorize(broker, requests.Session())
    query = assert_error_redirect(
        response,
        broker,
        R_BASIC,
        {
            "login_required",
            "interaction_required",
            "consent_required",
            "account_selection_required",
        },
        params["state"],
    )
    assert query["state"] == params["state"]
    assert emulator.requests() == []


def test_az09_prompt_none_with_session_gives_a_code_without_ui_and_same_sub(
    broker: Broker, emulator: Emulator
) -> None:
    browser = requests.Session()
    first = full_login(broker, emulator, "rp-basic", U1, browser)
    before = qq_logins(emulator)
    silent = full_login(broker, emulator, "rp-basic", U2, browser, prompt="none")
    assert qq_logins(emulator) == before  # no QQ page: the emulator's U2 was never asked
    assert silent.claims["sub"] == first.claims["sub"]


def test_az09_prompt_none_combined_with_login_is_invalid_request(
    broker: Broker, sso: tuple[requests.Session, Login]
) -> None:
    params = public(auth_params(broker, prompt="none login"))
    response = get(sso[0], authorize_url(broker.issuer, **params))
    assert_error_redirect(response, broker, R_BASIC, "invalid_request", params["state"])


def test_az10_prompt_none_with_unregistered_redirect_uri_is_an_error_page(
    broker: Broker, emulator: Emulator, sso: tuple[requests.Session, Login]
) -> None:
    for uri in ("http://evil.test/cb", R_BASIC + "/", f"{RP}/post/callback"):
        params = public(auth_params(broker, prompt="none", redirect_uri=uri))
        assert_error_page(get(sso[0], authorize_url(broker.issuer, **params)))
    assert emulator.requests() == []


def test_az10_cancelled_login_expires_and_sends_nothing_anywhere(short: Pair) -> None:
    broker, emulator = short.broker, short.emulator
    emulator.control(auto_login="cancel", cancel_mode="close")
    browser = requests.Session()
    params = public(auth_params(broker))
    response = get(browser, authorize_url(broker.issuer, **params))
    upstream = response.headers["Location"]
    hops = [upstream]
    page = get(browser, upstream)
    assert page.status_code == 200 and "Location" not in page.headers  # QQ's page, no callback
    assert all(hop.startswith(emulator.url) for hop in hops)
    time.sleep(broker.config.lifetimes.login + 1.5)
    # The user comes back later and logs in on the same QQ page: the pending request is gone.
    emulator.control(auto_login=U1)
    callback = get(browser, upstream)
    assert callback.status_code == 302
    late = get(browser, callback.headers["Location"])
    assert_error_page(late)
    assert "token" not in [r["endpoint"] for r in emulator.requests()]


def test_az10_cancel_at_qq_returns_access_denied_to_the_registered_uri_only(
    broker: Broker, emulator: Emulator
) -> None:
    emulator.control(auto_login="cancel", cancel_mode="redirect")
    params = public(auth_params(broker))
    browser = requests.Session()
    response = get(browser, authorize_url(broker.issuer, **params))
    seen = []
    while response.status_code == 302 and not response.headers["Location"].startswith(RP):
        seen.append(response.headers["Location"])
        response = get(browser, response.headers["Location"])
    assert all(hop.startswith((emulator.url, f"{broker.issuer}/qq/callback")) for hop in seen), seen
    assert_error_redirect(response, broker, R_BASIC, "access_denied", params["state"])


CLAIMS_ESSENTIAL = json.dumps(
    {"id_token": {"name": {"essential": True}}, "userinfo": {"nickname": {"essential": True}}}
)


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        ("GET", {"extra": "foobar"}),
        ("GET", {"display": "page"}),
        ("GET", {"display": "popup"}),
        ("GET", {"ui_locales": "zh-CN en"}),
        ("GET", {"claims_locales": "zh-CN"}),
        ("GET", {"login_hint": "someone@example.com"}),
        ("GET", {"acr_values": "urn:mace:incommon:iap:silver"}),
        ("GET", {"scope": "profile openid"}),
        ("POST", {}),
        ("GET", {"nonce": None}),
        ("GET", {"claims": CLAIMS_ESSENTIAL}),
    ],
    ids=[
        "unknown-param", "display-page", "display-popup", "ui-locales", "claims-locales",
        "login-hint", "acr-values", "reversed-scope", "post-form", "no-nonce", "claims-essential",
    ],
)  # fmt: skip
def test_az11_interop_variants_complete_with_a_valid_id_token(
    broker: Broker, emulator: Emulator, method: str, overrides: dict[str, Any]
) -> None:
    login = full_login(broker, emulator, "rp-basic", U1, None, method, **overrides)
    assert login.claims["sub"] == emulator.user(U1)["openid"]
    if "claims" in overrides:
        assert login.claims["name"] == "张三"


def test_az12_request_object_is_not_supported_and_its_redirect_uri_unused(
    broker: Broker, emulator: Emulator, listener: Listener
) -> None:
    unsigned = (
        b64url(json.dumps({"alg": "none", "typ": "oauth-authz-req+jwt"}))
        + "."
        + b64url(json.dumps({"redirect_uri": f"{listener.url}/stolen", "client_id": "rp-basic"}))
        + "."
    )
    params = public(auth_params(broker, request=unsigned))
    response = get(None, authorize_url(broker.issuer, **params))
    assert_error_redirect(response, broker, R_BASIC, "request_not_supported", params["state"])
    assert listener.hits == [] and emulator.requests() == []


@pytest.mark.parametrize("target", ["listener", "metadata"])
def test_az12_request_uri_is_never_fetched(
    broker: Broker, emulator: Emulator, listener: Listener, target: str
) -> None:
    uri = (
        f"{listener.url}/r" if target == "listener" else "http://169.254.169.254/latest/meta-data/"
    )
    params = public(auth_params(broker, request_uri=uri))
    response = get(None, authorize_url(broker.issuer, **params))
    assert_error_redirect(response, broker, R_BASIC, "request_uri_not_supported", params["state"])
    time.sleep(0.3)  # a fetch in the background would have arrived by now
    assert listener.hits == [] and emulator.requests() == []


def test_az12_discovery_says_request_objects_are_unsupported(broker: Broker) -> None:
    meta = discovery(broker)
    assert meta["request_parameter_supported"] is False
    assert meta["request_uri_parameter_supported"] is False


# =========================================================================== TK: /token


def test_tk01_code_redeems_once(broker: Broker, emulator: Emulator) -> None:
    login = authorize_code(broker, emulator)
    assert redeem(broker, login).status_code == 200
    again = redeem(broker, login)
    assert again.status_code == 400
    assert again.headers["Content-Type"].startswith("application/json")
    assert again.json()["error"] == "invalid_grant"
    assert "access_token" not in again.json()


def test_tk02_immediate_replay_revokes_what_the_code_issued(
    broker: Broker, emulator: Emulator
) -> None:
    login = full_login(broker, emulator, "rp-refresh", U1, scope="openid offline_access")
    assert userinfo(broker, login.tokens["access_token"]).status_code == 200
    replay = redeem(broker, login)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert userinfo(broker, login.tokens["access_token"]).status_code == 401
    stale = refresh(broker, "rp-refresh", login.tokens["refresh_token"])
    assert stale.status_code == 400 and stale.json()["error"] == "invalid_grant"


def test_tk03_concurrent_redemption_has_exactly_one_winner(
    broker: Broker, sso: tuple[requests.Session, Login]
) -> None:
    threads, rounds = 20, 50
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for round_no in range(rounds):
            params, response = silent_authorize(broker, sso[0])
            data = {
                "grant_type": "authorization_code",
                "code": code_from(response),
                "redirect_uri": R_BASIC,
                "code_verifier": params["_verifier"],
            }
            barrier = threading.Barrier(threads, timeout=30)

            def attempt(_: int, data: dict[str, str] = data, barrier: Any = barrier) -> int:
                barrier.wait()
                return token_post(broker, "rp-basic", data).status_code

            statuses = list(pool.map(attempt, range(threads)))
            assert statuses.count(200) == 1, (round_no, statuses)
            assert statuses.count(400) == threads - 1, (round_no, statuses)


@pytest.mark.parametrize("thief", ["rp-multi", "rp-post"], ids=["basic-auth", "post-auth"])
def test_tk04_code_is_bound_to_its_client(broker: Broker, emulator: Emulator, thief: str) -> None:
    """Policy (documented): any presentation of a code consumes it. After a thief presented
    RP-A's code, RP-A's own redemption is refused too (fail closed; RP-A starts over)."""
    login = authorize_code(broker, emulator, "rp-basic")
    for redirect_uri in (R_BASIC, redirect_uri_of(broker, thief)):
        stolen = redeem(broker, login, _client_id=thief, redirect_uri=redirect_uri)
        assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
        assert "access_token" not in stolen.json()
    later = redeem(broker, login)
    assert later.status_code == 400 and later.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "redirect_uri", [R_MULTI2, None, R_MULTI + "/", R_MULTI + "?", R_MULTI.upper()],
    ids=["other-registered", "missing", "trailing-slash", "empty-query", "case"],
)  # fmt: skip
def test_tk05_redirect_uri_bound_at_the_token_endpoint(
    broker: Broker, emulator: Emulator, redirect_uri: str | None
) -> None:
    login = authorize_code(broker, emulator, "rp-multi", redirect_uri=R_MULTI)
    response = redeem(broker, login, redirect_uri=redirect_uri)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_tk06_expired_code_is_refused(short: Pair) -> None:
    broker, emulator = short.broker, short.emulator
    login = authorize_code(broker, emulator)
    time.sleep(broker.config.lifetimes.code + 5)  # TTL + 5 s
    late = redeem(broker, login)
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant"


def test_tk06_codes_are_unique_long_and_patternless(
    broker: Broker, sso: tuple[requests.Session, Login]
) -> None:
    def one_code(_: int) -> str:
        jar = requests.Session()
        jar.cookies.update(sso[0].cookies)
        return code_from(silent_authorize(broker, jar)[1])

    with ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(one_code, range(1000)))
    assert len(set(codes)) == len(codes) == 1000
    alphabet = set("".join(codes))
    assert alphabet <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    bits_per_char = 6 if len(alphabet) > 32 else 5
    assert min(len(c) for c in codes) * bits_per_char >= 128
    assert len({c[:2] for c in codes}) > 100  # no shared prefix
    # No counter or clock: every position varies across the sample.
    for position in range(min(len(c) for c in codes) - 1):  # the last char holds 4 bits only
        assert len({c[position] for c in codes}) >= 32, position
    assert codes != sorted(codes)


def test_tk07_bad_or_missing_client_authentication_is_invalid_client(
    broker: Broker, emulator: Emulator
) -> None:
    token_url = f"{broker.issuer}/token"
    basic_secret = broker.clients["rp-basic"]["client_secret"]
    post_secret = broker.clients["rp-post"]["client_secret"]
    logins = {c: authorize_code(broker, emulator, c) for c in ("rp-basic", "rp-post")}
    forms = {
        c: {
            "grant_type": "authorization_code",
            "code": login.code,
            "redirect_uri": redirect_uri_of(broker, c),
            "code_verifier": login.verifier,
        }
        for c, login in logins.items()
    }
    basic_form, post_form = forms["rp-basic"], forms["rp-post"]

    def body(form: dict[str, str], client_id: str, secret: str | None = None) -> dict[str, str]:
        extra = {"client_id": client_id} | ({"client_secret": secret} if secret is not None else {})
        return {**form, **extra}

    # name -> (whether HTTP Basic was used, requests kwargs)
    attempts: dict[str, tuple[bool, dict[str, Any]]] = {
        "wrong-secret-basic": (
            True,
            {"data": basic_form, "auth": ("rp-basic", "x" + basic_secret)},
        ),
        "wrong-secret-post": (False, {"data": body(post_form, "rp-post", post_secret + "x")}),
        "no-credentials": (False, {"data": basic_form}),
        "client-id-only": (False, {"data": body(basic_form, "rp-basic")}),
        "empty-secret-basic": (True, {"data": basic_form, "auth": ("rp-basic", "")}),
        "secret-in-url-query": (
            False,
            {
                "data": basic_form,
                "params": {"client_id": "rp-basic", "client_secret": basic_secret},
            },
        ),
        "post-secret-in-url-query": (
            False,
            {"data": post_form, "params": {"client_id": "rp-post", "client_secret": post_secret}},
        ),
        "unregistered-method-post": (False, {"data": body(basic_form, "rp-basic", basic_secret)}),
        "unregistered-method-basic": (True, {"data": post_form, "auth": ("rp-post", post_secret)}),
        "other-clients-secret": (True, {"data": basic_form, "auth": ("rp-basic", post_secret)}),
        "malformed-basic": (True, {"data": basic_form, "headers": {"Authorization": "Basic !!!"}}),
    }
    for name, (used_basic, kwargs) in attempts.items():
        response = requests.post(token_url, timeout=TIMEOUT, **kwargs)
        assert response.status_code == 401, (name, response.status_code, response.text)
        assert response.json()["error"] == "invalid_client", name
        assert "access_token" not in response.json()
        if used_basic:
            assert response.headers["WWW-Authenticate"].startswith("Basic"), name
    # Nothing above burned the codes: the legitimate redemptions still work.
    assert redeem(broker, logins["rp-basic"]).status_code == 200
    assert redeem(broker, logins["rp-post"]).status_code == 200


def test_tk07_basic_with_url_encoded_special_characters_works(short: Pair) -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before Base64 (positive case)."""
    broker, emulator = short.broker, short.emulator
    login = authorize_code(broker, emulator, "rp-special")
    credentials = f"{quote('rp-special', safe='')}:{quote(SPECIAL_SECRET, safe='')}"
    header = "Basic " + base64.b64encode(credentials.encode()).decode()
    data = {
        "grant_type": "authorization_code",
        "code": login.code,
        "redirect_uri": f"{RP}/special/callback",
        "code_verifier": login.verifier,
    }
    response = requests.post(
        f"{broker.issuer}/token", data=data, headers={"Authorization": header}, timeout=TIMEOUT
    )
    assert response.status_code == 200, response.text
    assert verify_id_token(broker, response.json()["id_token"], "rp-special")["aud"]


def test_tk07_basic_and_body_credentials_together_are_refused(
    broker: Broker, emulator: Emulator
) -> None:
    login = authorize_code(broker, emulator, "rp-basic")
    secret = broker.clients["rp-basic"]["client_secret"]
    data = {
        "grant_type": "authorization_code",
        "code": login.code,
        "redirect_uri": R_BASIC,
        "code_verifier": login.verifier,
        "client_id": "rp-basic",
        "client_secret": secret,
    }
    response = requests.post(
        f"{broker.issuer}/token", data=data, auth=("rp-basic", secret), timeout=TIMEOUT
    )
    assert response.status_code in (400, 401), response.text
    assert response.json()["error"] in ("invalid_request", "invalid_client")


@pytest.mark.parametrize("how", ["basic", "post"])
def test_tk07_unknown_client_and_bad_secret_get_the_same_answer(broker: Broker, how: str) -> None:
    data = {"grant_type": "authorization_code", "code": "x" * 43, "redirect_uri": R_BASIC}

    def attempt(client_id: str) -> requests.Response:
        if how == "basic":
            return requests.post(
                f"{broker.issuer}/token", data=data, auth=(client_id, "wrong"), timeout=TIMEOUT
            )
        body = {**data, "client_id": client_id, "client_secret": "wrong"}
        return requests.post(f"{broker.issuer}/token", data=body, timeout=TIMEOUT)

    known = attempt("rp-basic" if how == "basic" else "rp-post")
    unknown = attempt("no-such-client")

    def answer(response: requests.Response) -> tuple[Any, ...]:
        body = response.json()
        challenge = response.headers.get("WWW-Authenticate")
        return response.status_code, body.get("error"), body.get("error_description"), challenge

    assert known.status_code == 401 and known.json()["error"] == "invalid_client"
    assert answer(unknown) == answer(known)


def assert_token_headers(response: requests.Response) -> None:
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    assert "Traceback" not in response.text and 'File "' not in response.text


def test_tk08_token_responses_are_json_and_never_cached(broker: Broker, emulator: Emulator) -> None:
    login = authorize_code(broker, emulator)
    success = redeem(broker, login)
    assert success.status_code == 200
    assert_token_headers(success)
    errors = [
        redeem(broker, login),  # invalid_grant
        token_post(broker, "rp-basic", {"grant_type": "authorization_code"}, secret="bad"),
        token_post(broker, "rp-basic", {"grant_type": "password", "username": "u"}),
        requests.post(f"{broker.issuer}/token", data="%%%\x00", timeout=TIMEOUT),
        requests.post(f"{broker.issuer}/token", json={"grant_type": "x"}, timeout=TIMEOUT),
    ]
    for response in errors:
        assert 400 <= response.status_code < 500, response.status_code
        assert_token_headers(response)
        assert "error" in response.json()


def test_tk08_get_to_the_token_endpoint_is_refused(broker: Broker, emulator: Emulator) -> None:
    login = authorize_code(broker, emulator)
    params = {
        "grant_type": "authorization_code",
        "code": login.code,
        "redirect_uri": R_BASIC,
        "code_verifier": login.verifier,
        "client_id": "rp-basic",
        "client_secret": broker.clients["rp-basic"]["client_secret"],
    }
    response = requests.get(f"{broker.issuer}/token", params=params, timeout=TIMEOUT)
    assert response.status_code in (400, 405)
    assert "access_token" not in response.text and "Traceback" not in response.text
    assert redeem(broker, login).status_code == 200  # the GET did not use the code


@pytest.mark.parametrize(
    "grant_type",
    [
        "password",
        "client_credentials",
        "implicit",
        "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "urn:ietf:params:oauth:grant-type:saml2-bearer",
        "urn:ietf:params:oauth:grant-type:device_code",
        "urn:ietf:params:oauth:grant-type:token-exchange",
        "urn:openid:params:grant-type:ciba",
    ],
)
def test_tk09_dangerous_grants_are_unsupported(broker: Broker, grant_type: str) -> None:
    data = {
        "grant_type": grant_type,
        "username": "zhangsan",
        "password": "",
        "assertion": "e30.e30.",
        "device_code": "x",
        "subject_token": "x",
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "auth_req_id": "x",
    }
    for response in (
        token_post(broker, "rp-basic", data),
        requests.post(f"{broker.issuer}/token", data=data, timeout=TIMEOUT),
    ):
        assert response.status_code in (400, 401), response.text
        assert "access_token" not in response.json()
    assert token_post(broker, "rp-basic", data).json()["error"] == "unsupported_grant_type"


def test_tk09_discovery_lists_only_code_and_refresh(broker: Broker) -> None:
    assert set(discovery(broker)["grant_types_supported"]) <= {
        "authorization_code",
        "refresh_token",
    }


# =========================================================================== PK: PKCE


def test_pk01_pkce_verifier_is_enforced(broker: Broker, emulator: Emulator) -> None:
    good = authorize_code(broker, emulator)
    assert redeem(broker, good).status_code == 200
    wrong = authorize_code(broker, emulator)
    response = redeem(broker, wrong, code_verifier=secrets.token_urlsafe(48))
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    missing = authorize_code(broker, emulator)
    response = redeem(broker, missing, code_verifier=None)
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_request", "invalid_grant")


def test_pk02_verifier_without_a_challenge_is_a_downgrade(
    broker: Broker, emulator: Emulator
) -> None:
    login = authorize_code(broker, emulator, code_challenge=None, code_challenge_method=None)
    response = redeem(broker, login, code_verifier=secrets.token_urlsafe(48))
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_request", "invalid_grant")
    assert "access_token" not in response.json()


def test_pk03_public_client_without_challenge_is_refused_at_authorize(
    broker: Broker, emulator: Emulator
) -> None:
    params = public(
        auth_params(broker, "rp-public", code_challenge=None, code_challenge_method=None)
    )
    response = get(None, authorize_url(broker.issuer, **params))
    redirect = redirect_uri_of(broker, "rp-public")
    assert_error_redirect(response, broker, redirect, "invalid_request", params["state"])
    assert emulator.requests() == []


def test_pk03_public_client_never_redeems_without_its_verifier(
    broker: Broker, emulator: Emulator
) -> None:
    without = authorize_code(broker, emulator, "rp-public")
    assert redeem(broker, without, code_verifier=None).status_code == 400
    wrong = authorize_code(broker, emulator, "rp-public")
    assert redeem(broker, wrong, code_verifier=secrets.token_urlsafe(48)).status_code == 400
    good = authorize_code(broker, emulator, "rp-public")
    assert redeem(broker, good).status_code == 200


def test_pk04_plain_method_is_refused(broker: Broker, emulator: Emulator) -> None:
    verifier = secrets.token_urlsafe(48)
    params = public(auth_params(broker, code_challenge=verifier, code_challenge_method="plain"))
    response = get(None, authorize_url(broker.issuer, **params))
    assert_error_redirect(response, broker, R_BASIC, "invalid_request", params["state"])
    assert emulator.requests() == []


def test_pk04_challenge_without_method_means_s256_never_plain(
    broker: Broker, emulator: Emulator
) -> None:
    challenge = secrets.token_urlsafe(32)  # 43 characters, a valid verifier too
    as_plain = authorize_code(
        broker, emulator, code_challenge=challenge, code_challenge_method=None
    )
    response = redeem(broker, as_plain, code_verifier=challenge)
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    verifier = secrets.token_urlsafe(48)
    as_s256 = authorize_code(
        broker, emulator, code_challenge=s256(verifier), code_challenge_method=None
    )
    assert redeem(broker, as_s256, code_verifier=verifier).status_code == 200


@pytest.mark.parametrize(
    "challenge",
    ["a" * 42, "a" * 42 + "!", "+" * 43, "a" * 43 + "=", "a" * 129, "a" * 20 + " " + "a" * 22, ""],
    ids=["42-chars", "bang", "plus", "padding", "129-chars", "space", "empty"],
)
def test_pk04_malformed_challenge_is_invalid_request(broker: Broker, challenge: str) -> None:
    params = public(auth_params(broker, code_challenge=challenge))
    response = get(None, authorize_url(broker.issuer, **params))
    assert_error_redirect(response, broker, R_BASIC, "invalid_request", params["state"])


def test_pk04_discovery_advertises_s256_only(broker: Broker) -> None:
    assert discovery(broker)["code_challenge_methods_supported"] == ["S256"]


# =========================================================================== IT: ID tokens


def test_it01_id_token_claims_are_correct(broker: Broker, emulator: Emulator, app_key: str) -> None:
    before = int(time.time())
    login = full_login(broker, emulator, "rp-basic", U1, max_age="600", scope="openid profile")
    claims, token = login.claims, login.tokens["id_token"]
    now = int(time.time())
    assert claims["iss"] == discovery(broker)["issuer"]
    audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert "rp-basic" in audience
    if len(audience) > 1:
        assert claims["azp"] == "rp-basic"
    assert 0 < claims["exp"] - claims["iat"] <= broker.config.lifetimes.id_token
    assert abs(claims["iat"] - now) <= 300
    assert 1 <= len(claims["sub"]) <= 255 and claims["sub"].isascii()
    assert claims["sub"].isprintable() and " " not in claims["sub"]
    assert claims["nonce"] == login.params["nonce"]
    assert before - 5 <= claims["auth_time"] <= claims["iat"]  # max_age was sent
    digest = hashlib.sha256(login.tokens["access_token"].encode()).digest()
    assert claims["at_hash"] == b64url(digest[:16])
    qq_user = emulator.user(U1)
    assert not FORBIDDEN_CLAIMS & set(claims)
    payload = json.dumps(claims, ensure_ascii=False)
    assert app_key not in token and app_key not in payload and APP_ID not in payload
    # sub is the OpenID by contract (DESIGN.md); no other claim repeats it, no UnionID.
    others = {k: v for k, v in claims.items() if k != "sub"}
    assert qq_user["openid"] not in json.dumps(others)
    if qq_user.get("unionid"):
        assert qq_user["unionid"] not in payload


@pytest.mark.parametrize("client_id", ["rp-basic", "rp-es256", "rp-eddsa"])
def test_it02_signature_and_kid_come_from_our_jwks(
    broker: Broker, emulator: Emulator, client_id: str
) -> None:
    token = full_login(broker, emulator, client_id).tokens["id_token"]
    header = jwt.get_unverified_header(token)
    meta = discovery(broker)
    assert header["alg"] in meta["id_token_signing_alg_values_supported"]
    if client_id == "rp-basic":
        assert header["alg"] == "RS256"  # the default, as advertised first
    assert not {"jwk", "jku", "x5u", "x5c", "x5t", "x5t#S256", "crit"} & set(header)
    keys = requests.get(meta["jwks_uri"], timeout=TIMEOUT).json()["keys"]
    matching = [k for k in keys if k["kid"] == header["kid"]]
    assert len(matching) == 1 and matching[0]["alg"] == header["alg"]
    key = jwt.PyJWK.from_dict(matching[0])
    jwt.decode(token, key.key, algorithms=[header["alg"]], audience=client_id,
               issuer=meta["issuer"])  # fmt: skip
    tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tampered, key.key, algorithms=[header["alg"]], audience=client_id)


def test_it03_no_unsigned_id_tokens_are_advertised_or_configurable(broker: Broker) -> None:
    algs = discovery(broker)["id_token_signing_alg_values_supported"]
    assert "none" not in algs and not any(a.startswith("HS") for a in algs)
    for alg in ("none", "HS256"):
        clients = [
            {
                "client_id": "rp-x",
                "client_secret": secrets.token_urlsafe(24),
                "redirect_uris": [R_BASIC],
                "id_token_signed_response_alg": alg,
            }
        ]
        with pytest.raises(ConfigError) as refused:
            parse_config(
                {
                    "issuer": "http://127.0.0.1:8000",
                    "upstream": {"qq": {"app_id": APP_ID, "app_key": "k" * 32,
                                        "base_url": "http://127.0.0.1:1"}},
                    "clients": clients,
                },
                source="<it03>",
                base_dir=Path("/nonexistent"),
            )  # fmt: skip
        assert "id_token_signed_response_alg" in str(refused.value)


@pytest.mark.parametrize("client_id", ["rp-basic", "rp-post", "rp-public", "rp-es256", "rp-eddsa"])
def test_it03_every_issued_id_token_is_signed(
    broker: Broker, emulator: Emulator, client_id: str
) -> None:
    token = full_login(broker, emulator, client_id).tokens["id_token"]
    signature = token.split(".")[2]
    assert signature and jwt.get_unverified_header(token)["alg"] != "none"
    verify_id_token(broker, token, client_id)


def our_rsa_jwk(broker: Broker) -> dict[str, Any]:
    keys = requests.get(f"{broker.issuer}/jwks.json", timeout=TIMEOUT).json()["keys"]
    found: dict[str, Any] = next(k for k in keys if k["kty"] == "RSA")
    return found


def hs256(claims: dict[str, Any], secret: bytes, **header: Any) -> str:
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", **header}))
    body = b64url(json.dumps(claims))
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(mac)}"


def forged_hints(
    broker: Broker, genuine_other: str, attacker: rsa.RSAPrivateKey, listener: Listener
) -> dict[str, str]:
    """IT-04 (a)–(g): hints naming user U2, none of which the broker may trust."""
    claims = jwt.decode(genuine_other, options={"verify_signature": False})
    ours = our_rsa_jwk(broker)
    public_key = jwt.PyJWK.from_dict(ours).key
    pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attacker_jwk = {
        **json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key())),
        "kid": "attacker",
    }
    own_key = broker_key_pem(broker)
    unsigned_head = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": ours["kid"]}))

    def attacker_signed(**header: Any) -> str:
        return jwt.encode(claims, attacker, algorithm="RS256", headers=header)

    def broker_signed(changes: dict[str, Any], **header: Any) -> str:
        return jwt.encode({**claims, **changes}, own_key, algorithm="RS256",
                          headers={"kid": ours["kid"], **header})  # fmt: skip

    return {
        "a-alg-none": f"{unsigned_head}.{b64url(json.dumps(claims))}.",
        "b-hs256-pem": hs256(claims, pem, kid=ours["kid"]),
        "b-hs256-der": hs256(claims, der, kid=ours["kid"]),
        "b-hs256-jwk-json": hs256(claims, json.dumps(ours).encode(), kid=ours["kid"]),
        "c-embedded-jwk": attacker_signed(kid="attacker", jwk=attacker_jwk),
        "d-jku": attacker_signed(kid="attacker", jku=f"{listener.url}/jwks.json"),
        "d-x5u": attacker_signed(kid="attacker", x5u=f"{listener.url}/cert.pem"),
        "e-unknown-kid": attacker_signed(kid=f"unknown-{secrets.token_hex(4)}"),
        "e-our-kid-wrong-key": attacker_signed(kid=ours["kid"]),
        "f-crit": broker_signed({}, crit=["x"], x=1),
        "g-foreign-iss": broker_signed({"iss": "https://broker.evil"}),
        "g-iss-suffix": broker_signed({"iss": broker.issuer + ".evil"}),
        "g-iss-prefix": broker_signed({"iss": broker.issuer[:-1]}),
    }


HINT_VECTORS = [
    "a-alg-none", "b-hs256-pem", "b-hs256-der", "b-hs256-jwk-json", "c-embedded-jwk", "d-jku",
    "d-x5u", "e-unknown-kid", "e-our-kid-wrong-key", "f-crit", "g-foreign-iss", "g-iss-suffix",
    "g-iss-prefix",
]  # fmt: skip


@pytest.fixture
def hint_setup(
    broker: Broker, emulator: Emulator, attacker_key: rsa.RSAPrivateKey, listener: Listener
) -> dict[str, Any]:
    """U1 logged in (the victim's browser); U2's genuine ID token; the forged hints."""
    _, other = logged_in_via(broker, emulator, U2)
    victim, mine = logged_in_via(broker, emulator, U1)
    hints = forged_hints(broker, other.tokens["id_token"], attacker_key, listener)
    hints["h-genuine-other-user"] = other.tokens["id_token"]
    return {"victim": victim, "mine": mine, "other": other, "hints": hints}


def test_it04_forged_hints_never_yield_a_code_for_the_named_user(
    broker: Broker, hint_setup: dict[str, Any], listener: Listener
) -> None:
    victim, mine, other = hint_setup["victim"], hint_setup["mine"], hint_setup["other"]
    for name, hint in hint_setup["hints"].items():
        params, response = silent_authorize(broker, victim, "rp-refresh", id_token_hint=hint)
        query = query_of(response.headers["Location"])
        if "code" in query:
            login = Login("rp-refresh", params, query)
            tokens = redeem(broker, login).json()
            sub = verify_id_token(broker, tokens["id_token"], "rp-refresh")["sub"]
            assert sub == mine.claims["sub"] != other.claims["sub"], name
    assert listener.hits == []  # no jku / x5u / kid-driven fetch


@pytest.mark.parametrize("vector", [*HINT_VECTORS, "h-genuine-other-user"])
def test_it04_hint_naming_another_user_is_refused_at_authorize(
    broker: Broker, hint_setup: dict[str, Any], vector: str
) -> None:
    params, response = silent_authorize(
        broker, hint_setup["victim"], "rp-refresh", id_token_hint=hint_setup["hints"][vector]
    )
    assert_error_redirect(
        response,
        broker,
        redirect_uri_of(broker, "rp-refresh"),
        {"login_required", "invalid_request"},
        params["state"],
    )


def test_it04_control_the_victims_own_hint_is_accepted(
    broker: Broker, hint_setup: dict[str, Any]
) -> None:
    """Positive control: the refusals above are about the hints, not hints in general."""
    mine = hint_setup["mine"]
    params, response = silent_authorize(
        broker, hint_setup["victim"], "rp-refresh", id_token_hint=mine.tokens["id_token"]
    )
    login = Login("rp-refresh", params, query_of(response.headers["Location"]))
    tokens = redeem(broker, login).json()
    assert verify_id_token(broker, tokens["id_token"], "rp-refresh")["sub"] == mine.claims["sub"]


def test_it04_forged_hints_at_logout_never_redirect_or_log_out(
    broker: Broker, hint_setup: dict[str, Any], listener: Listener
) -> None:
    victim = hint_setup["victim"]
    for name in HINT_VECTORS:
        params = {
            "id_token_hint": hint_setup["hints"][name],
            "post_logout_redirect_uri": REFRESH_LOGGED_OUT,
            "state": "bye",
        }
        response = get(victim, f"{broker.issuer}/logout?{urlencode(params)}")
        assert "Location" not in response.headers, name
        assert response.status_code in (200, 400), name
        assert still_logged_in(broker, victim), name
    assert listener.hits == []


def test_it04_another_users_genuine_hint_at_logout_is_refused(
    broker: Broker, hint_setup: dict[str, Any]
) -> None:
    victim = hint_setup["victim"]
    params = {
        "id_token_hint": hint_setup["hints"]["h-genuine-other-user"],
        "post_logout_redirect_uri": REFRESH_LOGGED_OUT,
        "state": "bye",
    }
    response = get(victim, f"{broker.issuer}/logout?{urlencode(params)}")
    assert "Location" not in response.headers
    assert still_logged_in(broker, victim)


FIVE_MB = 5 * 1024 * 1024


def oversized_hints() -> dict[str, str]:
    head = b64url(json.dumps({"alg": "RS256", "kid": "x"}))
    return {
        "5mb-header": "e" * FIVE_MB + ".e30.c2ln",
        "5mb-signature": f"{head}.e30." + "A" * FIVE_MB,
        "10000-dots": "." * 10_000,
        "10000-dots-long-segments": ".".join(["e30"] * 10_000),
    }


def test_it05_oversized_or_malformed_hints_are_bounded(broker_process: BrokerProcess) -> None:
    """Against ``qq-oidc-broker serve`` in its own process, so its RSS is the broker's alone."""
    broker, emulator = broker_process.broker, broker_process.emulator
    victim, _ = logged_in_via(broker, emulator, U1)
    baseline = broker_process.rss_mb()
    for name, hint in oversized_hints().items():
        for endpoint, method in (
            ("authorize", "GET"),
            ("authorize", "POST"),
            ("logout", "GET"),
            ("logout", "POST"),
        ):
            if endpoint == "authorize":
                params = public(
                    auth_params(broker, "rp-refresh", prompt="none", id_token_hint=hint)
                )
            else:
                params = {"id_token_hint": hint, "post_logout_redirect_uri": REFRESH_LOGGED_OUT}
            url = f"{broker.issuer}/{endpoint}"
            started = time.monotonic()
            if method == "GET":
                response = victim.get(url, params=params, allow_redirects=False, timeout=30)
            else:
                response = victim.post(url, data=params, allow_redirects=False, timeout=30)
            elapsed = time.monotonic() - started
            label = (name, endpoint, method, response.status_code)
            assert elapsed < 5, label  # the row's 1 s, with a wide margin
            assert response.status_code in (302, 303, 400, 413, 414, 431), label
            if response.status_code == 302:
                query = query_of(response.headers["Location"])
                assert endpoint == "authorize" and "code" not in query, label
                assert query["error"] == "invalid_request", label
            assert "Traceback" not in response.text, label
            assert still_logged_in(broker, victim), label
    assert broker_process.process.poll() is None
    assert broker_process.rss_mb() - baseline < 50


JWE_HINT = ".".join(
    [
        b64url(json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM", "zip": "DEF", "kid": "x"})),
        b64url(secrets.token_bytes(256)),
        b64url(secrets.token_bytes(12)),
        b64url(secrets.token_bytes(1024)),  # the whole hint stays under the 4 kB cap
        b64url(secrets.token_bytes(16)),
    ]
)


@pytest.mark.parametrize(
    "endpoint",
    ["logout", "authorize"],
)
def test_it05_jwe_hints_are_refused(broker: Broker, emulator: Emulator, endpoint: str) -> None:
    victim, _ = logged_in_via(broker, emulator, U1)
    if endpoint == "logout":
        params = {"id_token_hint": JWE_HINT, "post_logout_redirect_uri": REFRESH_LOGGED_OUT}
        response = get(victim, f"{broker.issuer}/logout?{urlencode(params)}")
        assert response.status_code == 400 and "Location" not in response.headers
        assert still_logged_in(broker, victim)
    else:
        params, response = silent_authorize(broker, victim, "rp-refresh", id_token_hint=JWE_HINT)
        assert_error_redirect(
            response,
            broker,
            redirect_uri_of(broker, "rp-refresh"),
            {"invalid_request", "login_required"},
            params["state"],
        )


# =========================================================================== UI: /userinfo


def test_ui01_userinfo_by_header_get_and_post(broker: Broker, emulator: Emulator) -> None:
    login = full_login(broker, emulator, scope="openid profile")
    token = login.tokens["access_token"]
    for method in ("GET", "POST"):
        response = userinfo(broker, token, method)
        assert response.status_code == 200, method
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["sub"] == login.claims["sub"]
    form = requests.post(f"{broker.issuer}/userinfo", data={"access_token": token}, timeout=TIMEOUT)
    if form.status_code == 200:  # RFC 6750 §2.2 form body: allowed either way
        assert form.json()["sub"] == login.claims["sub"]
    else:
        assert 400 <= form.status_code < 500 and "sub" not in form.text
        assert "Traceback" not in form.text
        if form.status_code == 401:
            assert form.headers["WWW-Authenticate"].startswith("Bearer")


def test_ui01_access_token_in_the_url_is_rejected(broker: Broker, emulator: Emulator) -> None:
    token = full_login(broker, emulator).tokens["access_token"]
    for method in ("GET", "POST"):
        response = requests.request(
            method, f"{broker.issuer}/userinfo", params={"access_token": token}, timeout=TIMEOUT
        )
        assert response.status_code in (400, 401), method
        assert "sub" not in response.text


def assert_invalid_token(response: requests.Response) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer") and 'error="invalid_token"' in challenge
    assert "sub" not in response.text


def test_ui02_missing_or_garbage_tokens(broker: Broker) -> None:
    missing = requests.get(f"{broker.issuer}/userinfo", timeout=TIMEOUT)
    assert missing.status_code == 401
    # RFC 6750 §3.1: without credentials the challenge carries no error code.
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert "sub" not in missing.text
    for garbage in ("nope", "x" * 43, "e30.e30.", secrets.token_urlsafe(32)):
        assert_invalid_token(userinfo(broker, garbage))


def test_ui02_expired_token(short: Pair) -> None:
    broker, emulator = short.broker, short.emulator
    token = full_login(broker, emulator).tokens["access_token"]
    time.sleep(broker.config.lifetimes.access_token + 1.5)
    assert_invalid_token(userinfo(broker, token))


def test_ui02_revoked_token(broker: Broker, emulator: Emulator) -> None:
    token = full_login(broker, emulator).tokens["access_token"]
    assert userinfo(broker, token).status_code == 200
    revoked = requests.post(
        f"{broker.issuer}/revoke",
        data={"token": token, "token_type_hint": "access_token"},
        auth=("rp-basic", broker.clients["rp-basic"]["client_secret"]),
        timeout=TIMEOUT,
    )
    assert revoked.status_code == 200
    assert_invalid_token(userinfo(broker, token))


def test_ui02_token_from_a_replayed_code(broker: Broker, emulator: Emulator) -> None:
    login = full_login(broker, emulator)
    assert redeem(broker, login).status_code == 400
    assert_invalid_token(userinfo(broker, login.tokens["access_token"]))


def qq_access_token(broker: Broker, emulator: Emulator, app_key: str) -> str:
    """A real QQ access token from the emulator, minted for the broker's own app."""
    emulator.control(auto_login=U1)
    callback = f"{broker.issuer}/qq/callback"
    start = get(
        None,
        f"{emulator.url}/oauth2.0/authorize",
        params={"response_type": "code", "client_id": APP_ID, "redirect_uri": callback,
                "state": "ui03"},
    )  # fmt: skip
    code = query_of(start.headers["Location"])["code"]
    answer = requests.post(
        f"{emulator.url}/oauth2.0/token",
        data={"grant_type": "authorization_code", "client_id": APP_ID, "client_secret": app_key,
              "code": code, "redirect_uri": callback, "fmt": "json"},
        timeout=TIMEOUT,
    )  # fmt: skip
    token: str = answer.json()["access_token"]
    return token


def test_ui03_other_token_types_are_not_access_tokens(
    broker: Broker, emulator: Emulator, app_key: str
) -> None:
    login = full_login(broker, emulator, "rp-refresh", scope="openid offline_access")
    unredeemed = authorize_code(broker, emulator, "rp-refresh", scope="openid offline_access")
    redeemed = authorize_code(broker, emulator)
    assert redeem(broker, redeemed).status_code == 200
    candidates = {
        "id_token": login.tokens["id_token"],
        "refresh_token": login.tokens["refresh_token"],
        "unredeemed_code": unredeemed.code,
        "redeemed_code": redeemed.code,
        "qq_access_token": qq_access_token(broker, emulator, app_key),
    }
    for name, value in candidates.items():
        response = userinfo(broker, value)
        assert response.status_code == 401, name
        assert "sub" not in response.text, name
    assert userinfo(broker, login.tokens["access_token"]).status_code == 200


def test_ui04_openid_scope_gives_only_sub(broker: Broker, emulator: Emulator) -> None:
    login = full_login(broker, emulator, "rp-basic", U2, scope="openid")
    info = userinfo(broker, login.tokens["access_token"]).json()
    assert info == {"sub": emulator.user(U2)["openid"]}
    assert not {"name", "nickname", "picture"} & set(login.claims)
    assert not FORBIDDEN_CLAIMS & set(login.claims)


@pytest.mark.parametrize(
    "scope", ["openid profile", "openid profile email", "openid profile address phone"]
)
def test_ui04_profile_gives_nickname_and_picture_only(
    broker: Broker, emulator: Emulator, scope: str
) -> None:
    """DESIGN.md override: ``name`` (= nickname) is part of the profile mapping; no email,
    gender (lisi is 女 at QQ, and claims.gender is off) or QQ identifiers by default."""
    login = full_login(broker, emulator, "rp-basic", U2, scope=scope)
    info = userinfo(broker, login.tokens["access_token"]).json()
    assert set(info) <= {"sub", "name", "nickname", "picture"} and "nickname" in info
    profile_in_id_token = set(login.claims) & {"name", "nickname", "picture", "gender", "email"}
    assert profile_in_id_token <= {"name", "nickname", "picture"}
    qq_user = emulator.user(U2)
    for claims in (info, login.claims):
        assert not FORBIDDEN_CLAIMS & set(claims)
        values = json.dumps({k: v for k, v in claims.items() if k != "sub"}, ensure_ascii=False)
        assert qq_user["openid"] not in values
        if qq_user.get("unionid"):
            assert qq_user["unionid"] not in values


# =========================================================================== RT: refresh


def offline(
    broker: Broker, emulator: Emulator, client_id: str = "rp-refresh", user: str = U1
) -> Login:
    return full_login(broker, emulator, client_id, user, scope="openid profile offline_access")


def test_rt01_refresh_token_is_bound_to_its_client(broker: Broker, emulator: Emulator) -> None:
    of_b = offline(broker, emulator, "rp-refresh-b")
    stolen = refresh(broker, "rp-refresh", of_b.tokens["refresh_token"])
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert "access_token" not in stolen.json()
    assert refresh(broker, "rp-refresh-b", of_b.tokens["refresh_token"]).status_code == 200


def test_rt01_refreshed_id_token_is_consistent(broker: Broker, emulator: Emulator) -> None:
    first = offline(broker, emulator)
    time.sleep(1.1)
    response = refresh(broker, "rp-refresh", first.tokens["refresh_token"])
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    claims = verify_id_token(broker, response.json()["id_token"], "rp-refresh")
    for name in ("iss", "sub", "aud", "auth_time"):
        assert claims[name] == first.claims[name], name
    assert claims["iat"] > first.claims["iat"]


def test_rt02_rotation_with_reuse_detection(broker: Broker, emulator: Emulator) -> None:
    login = offline(broker, emulator)
    rt1 = login.tokens["refresh_token"]
    second = refresh(broker, "rp-refresh", rt1)
    assert second.status_code == 200
    rt2 = second.json()["refresh_token"]
    assert rt2 != rt1
    replay = refresh(broker, "rp-refresh", rt1)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    family = refresh(broker, "rp-refresh", rt2)
    assert family.status_code == 400 and family.json()["error"] == "invalid_grant"
    assert userinfo(broker, second.json()["access_token"]).status_code == 401


def test_rt02_concurrent_use_of_one_refresh_token_has_at_most_one_winner(
    broker: Broker, emulator: Emulator
) -> None:
    for _ in range(5):
        token = offline(broker, emulator).tokens["refresh_token"]
        barrier = threading.Barrier(10, timeout=30)

        def attempt(_: int, token: str = token, barrier: Any = barrier) -> int:
            barrier.wait()
            return refresh(broker, "rp-refresh", token).status_code

        with ThreadPoolExecutor(max_workers=10) as pool:
            statuses = list(pool.map(attempt, range(10)))
        assert statuses.count(200) <= 1, statuses
        assert all(s in (200, 400) for s in statuses), statuses


def test_rt03_refresh_cannot_broaden_scope(broker: Broker, emulator: Emulator) -> None:
    login = full_login(broker, emulator, "rp-refresh", scope="openid offline_access")
    wider = refresh(broker, "rp-refresh", login.tokens["refresh_token"],
                    scope="openid profile offline_access")  # fmt: skip
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    assert "access_token" not in wider.json()


def test_rt03_offline_access_rules(broker: Broker, emulator: Emulator) -> None:
    """DESIGN.md override: registering refresh_token is the consent, so ``offline_access``
    without ``prompt=consent`` yields a refresh token for registered clients only."""
    registered = full_login(broker, emulator, "rp-refresh", scope="openid offline_access")
    assert "refresh_token" in registered.tokens
    online = full_login(broker, emulator, "rp-refresh", scope="openid")
    assert "refresh_token" not in online.tokens
    unregistered = full_login(broker, emulator, "rp-basic", scope="openid offline_access")
    assert "refresh_token" not in unregistered.tokens
    assert "offline_access" not in unregistered.tokens.get("scope", "")


def revoke(broker: Broker, client_id: str, token: str) -> requests.Response:
    return requests.post(
        f"{broker.issuer}/revoke",
        data={"token": token},
        auth=(client_id, broker.clients[client_id]["client_secret"]),
        timeout=TIMEOUT,
    )


def test_rt04_another_client_cannot_revoke(broker: Broker, emulator: Emulator) -> None:
    login = offline(broker, emulator)
    for token in (login.tokens["access_token"], login.tokens["refresh_token"]):
        response = revoke(broker, "rp-refresh-b", token)
        assert response.status_code in (200, 400, 401)
    assert userinfo(broker, login.tokens["access_token"]).status_code == 200
    assert refresh(broker, "rp-refresh", login.tokens["refresh_token"]).status_code == 200


def test_rt04_revoking_a_refresh_token_kills_its_access_tokens(
    broker: Broker, emulator: Emulator
) -> None:
    login = offline(broker, emulator)
    later = refresh(broker, "rp-refresh", login.tokens["refresh_token"]).json()
    assert revoke(broker, "rp-refresh", later["refresh_token"]).status_code == 200
    assert userinfo(broker, later["access_token"]).status_code == 401
    assert userinfo(broker, login.tokens["access_token"]).status_code == 401
    dead = refresh(broker, "rp-refresh", later["refresh_token"])
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"


def test_rt04_logout_revokes_refresh_tokens(broker: Broker, emulator: Emulator) -> None:
    browser, login = logged_in_via(broker, emulator, U1)
    params = {
        "id_token_hint": login.tokens["id_token"],
        "post_logout_redirect_uri": REFRESH_LOGGED_OUT,
    }
    response = get(browser, f"{broker.issuer}/logout?{urlencode(params)}")
    assert response.status_code == 302
    dead = refresh(broker, "rp-refresh", login.tokens["refresh_token"])
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"
    assert userinfo(broker, login.tokens["access_token"]).status_code == 401


def test_rt04_idle_expiry_is_enforced(short: Pair) -> None:
    broker, emulator = short.broker, short.emulator
    token = full_login(broker, emulator, "rp-refresh", scope="openid offline_access").tokens[
        "refresh_token"
    ]
    time.sleep(broker.config.lifetimes.refresh_idle + 1.5)
    idle = refresh(broker, "rp-refresh", token)
    assert idle.status_code == 400 and idle.json()["error"] == "invalid_grant"


# =========================================================================== DS: discovery, keys


def test_ds01_discovery_document_is_correct_and_safe(broker: Broker, emulator: Emulator) -> None:
    url = f"{broker.issuer}/.well-known/openid-configuration"
    response = requests.get(url, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    meta = response.json()
    assert meta["issuer"] == url.removesuffix("/.well-known/openid-configuration")
    assert not meta["issuer"].endswith("/")
    issuer = urlsplit(meta["issuer"])
    for name in (
        "authorization_endpoint",
        "token_endpoint",
        "userinfo_endpoint",
        "jwks_uri",
        "revocation_endpoint",
        "introspection_endpoint",
        "end_session_endpoint",
    ):
        endpoint = urlsplit(meta[name])
        # Loopback issuer = development (DESIGN.md), so http here; otherwise https.
        assert (endpoint.scheme, endpoint.netloc) == (issuer.scheme, issuer.netloc), name
        assert meta[name].startswith(meta["issuer"] + "/"), name
    for required in (
        "response_types_supported",
        "subject_types_supported",
        "id_token_signing_alg_values_supported",
    ):
        assert meta[required], required
    assert "openid" in meta["scopes_supported"]
    for name, values in meta.items():
        if not isinstance(values, list) or name.endswith("_auth_methods_supported"):
            continue
        assert not {"none", "token", "password"} & set(values), name
    # "none" as a client authentication method is the contract for public clients (DESIGN.md:
    # token_endpoint_auth_method none = public, PKCE required), not an unsigned anything.
    assert "password" not in meta["token_endpoint_auth_methods_supported"]
    # subject_types_supported matches behaviour: public subjects, the same for every client.
    assert meta["subject_types_supported"] == ["public"]
    browser = requests.Session()
    via_basic = full_login(broker, emulator, "rp-basic", U1, browser)
    via_post = full_login(broker, emulator, "rp-post", U1, browser)
    assert via_basic.claims["sub"] == via_post.claims["sub"]


def test_ds02_jwks_holds_public_keys_only(broker: Broker) -> None:
    keys = requests.get(discovery(broker)["jwks_uri"], timeout=TIMEOUT).json()["keys"]
    assert keys
    kids = [k.get("kid") for k in keys]
    assert all(kids) and len(set(kids)) == len(kids)
    for key in keys:
        assert not PRIVATE_JWK_MEMBERS & set(key), key["kid"]
        assert key.get("use") == "sig" or key.get("alg"), key["kid"]
        assert key["kty"] in ("RSA", "EC", "OKP"), key["kid"]
        if key["kty"] == "RSA":
            modulus = int.from_bytes(
                base64.urlsafe_b64decode(key["n"] + "=" * (-len(key["n"]) % 4)),
                "big",
            )
            assert modulus.bit_length() >= 2048


def test_ds03_signing_key_rotation_keeps_old_tokens_verifiable(tmp_path: Path) -> None:
    """``keys rotate`` on a running broker: the next key is published (within one refresh
    interval) before it signs, signs from its activation time, and tokens signed by the
    old key keep verifying against the served JWKS (the old key stays published for the
    longest token lifetime plus clock skew; its removal is tested in tests/keys)."""
    only_basic = [c for c in client_definitions() if c["client_id"] == "rp-basic"]
    publish_ahead = 5
    keys = {
        "dir": "keys",
        "algorithms": ["RS256"],
        "jwks_max_age": 1,
        "rotation": {"interval": 0, "publish_ahead": publish_ahead},
    }
    pair = start_pair(tmp_path, keys=keys, clients=only_basic)
    try:
        broker, emulator = pair.broker, pair.emulator
        served_jwks = requests.get(f"{broker.issuer}/jwks.json", timeout=TIMEOUT)
        assert served_jwks.headers["Cache-Control"] == "public, max-age=1"
        old = full_login(broker, emulator, "rp-basic")
        old_kid = jwt.get_unverified_header(old.tokens["id_token"])["kid"]
        config = tmp_path / "rotate.yaml"
        config.write_text(
            f"issuer: {broker.issuer}\n"
            f"storage: {{url: '{broker.config.storage.url}'}}\n"
            f"keys: {{dir: '{broker.config.keys.dir}', algorithms: [RS256], jwks_max_age: 1,\n"
            f"       rotation: {{interval: 0, publish_ahead: {publish_ahead}}}}}\n"
            "upstream:\n  qq:\n    app_id: ${QQ_APP_ID}\n    app_key: ${QQ_APP_KEY}\n"
            f"    base_url: {emulator.url}\n"
            "clients:\n  - client_id: rp-basic\n    client_secret: ${RP_SECRET}\n"
            f"    redirect_uris: ['{R_BASIC}']\n",
            encoding="utf-8",
        )
        env = {
            **os.environ,
            "QQ_APP_ID": APP_ID,
            "QQ_APP_KEY": broker.config.upstream.qq.app_key,
            "RP_SECRET": broker.clients["rp-basic"]["client_secret"],
        }
        rotated = subprocess.run(
            [sys.executable, "-m", "broker", "keys", "rotate", "--json", "--config", str(config)],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert rotated.returncode == 0, rotated.stderr
        (new,) = json.loads(rotated.stdout)["keys"]
        assert new["created"] and new["activates_at"] == new["created_at"] + publish_ahead
        new_kid, activates_at = new["kid"], new["activates_at"]

        # Published within one refresh interval (1 s), while the old key still signs.
        deadline = time.monotonic() + 3
        while new_kid not in _published_kids(broker):
            assert time.monotonic() < deadline, "the new key was not published in time"
            time.sleep(0.1)
        early = full_login(broker, emulator, "rp-basic")
        assert early.claims["iat"] < activates_at, "too slow to log in before the switch"
        assert jwt.get_unverified_header(early.tokens["id_token"])["kid"] == old_kid

        time.sleep(max(0.0, activates_at - time.time()) + 0.2)
        late = full_login(broker, emulator, "rp-basic")
        assert jwt.get_unverified_header(late.tokens["id_token"])["kid"] == new_kid
        assert _published_kids(broker) == [new_kid, old_kid]  # the old key is kept
        verify_id_token(broker, old.tokens["id_token"], "rp-basic")  # old tokens still verify
        verify_id_token(broker, early.tokens["id_token"], "rp-basic")
    finally:
        pair.stop()


def _published_kids(broker: Broker) -> list[str]:
    keys = requests.get(f"{broker.issuer}/jwks.json", timeout=TIMEOUT).json()["keys"]
    return [key["kid"] for key in keys]


# =========================================================================== TK-02 (last)


def test_tk02_code_replayed_after_30_seconds_revokes_issued_tokens(
    broker: Broker, early_redemption: dict[str, Any]
) -> None:
    """Last in the file on purpose: the code was redeemed when the module started."""
    login: Login = early_redemption["login"]
    wait = 30 - (time.monotonic() - early_redemption["redeemed_at"])
    if wait > 0:
        time.sleep(wait)
    assert userinfo(broker, login.tokens["access_token"]).status_code == 200  # alive until now
    replay = redeem(broker, login)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert userinfo(broker, login.tokens["access_token"]).status_code == 401
    stale = refresh(broker, "rp-refresh", login.tokens["refresh_token"])
    assert stale.status_code == 400 and stale.json()["error"] == "invalid_grant"
