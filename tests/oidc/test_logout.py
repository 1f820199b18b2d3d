"""RP-Initiated Logout 1.0 and Back-Channel Logout 1.0 (issue 3 point 5), over real HTTP."""

from __future__ import annotations

import html
import re
import threading
from pathlib import Path
from typing import Any

import jwt
import requests
from flask import Flask, request

from tests.conftest import RP, Broker, Emulator, start_pair
from tests.flows import query_of
from tests.oidc.test_flow import RelyingParty
from tests.servers import serve

LOGGED_OUT = f"{RP}/refresh/logged-out"


def logged_in(broker: Broker, emulator: Emulator) -> tuple[requests.Session, dict[str, Any]]:
    browser = requests.Session()
    rp = RelyingParty(broker, "rp-refresh", scope="openid offline_access")
    return browser, rp.login(emulator, browser=browser)


def still_logged_in(broker: Broker, browser: requests.Session) -> bool:
    url, _ = RelyingParty(broker, "rp-refresh").authorization_url(prompt="none")
    response = browser.get(url, allow_redirects=False, timeout=5)
    return "code" in query_of(response.headers["Location"])


def test_logout_with_hint_redirects_with_state_and_ends_everything(
    broker: Broker, emulator: Emulator
) -> None:
    browser, result = logged_in(broker, emulator)
    params = {
        "id_token_hint": result["token"]["id_token"],
        "post_logout_redirect_uri": LOGGED_OUT,
        "state": "bye-1",
    }
    response = browser.get(f"{broker.issuer}/logout", params=params, allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"].startswith(LOGGED_OUT)
    assert query_of(response.headers["Location"])["state"] == "bye-1"
    assert not still_logged_in(broker, browser)
    headers = {"Authorization": f"Bearer {result['token']['access_token']}"}
    assert requests.get(f"{broker.issuer}/userinfo", headers=headers, timeout=5).status_code == 401
    secret = broker.clients["rp-refresh"]["client_secret"]
    refreshed = requests.post(
        f"{broker.issuer}/token",
        auth=("rp-refresh", secret),
        timeout=5,
        data={"grant_type": "refresh_token", "refresh_token": result["token"]["refresh_token"]},
    )
    assert refreshed.status_code == 400


def test_unregistered_post_logout_uri_is_never_redirected_to(
    broker: Broker, emulator: Emulator
) -> None:
    browser, result = logged_in(broker, emulator)
    for uri in ("https://evil.example/", f"{LOGGED_OUT}?x=1", f"{LOGGED_OUT}/"):
        params = {"id_token_hint": result["token"]["id_token"], "post_logout_redirect_uri": uri}
        response = browser.get(f"{broker.issuer}/logout", params=params, allow_redirects=False)
        assert "Location" not in response.headers, uri


def test_logout_without_hint_asks_first(broker: Broker, emulator: Emulator) -> None:
    browser, _ = logged_in(broker, emulator)
    page = browser.get(f"{broker.issuer}/logout", params={"client_id": "rp-refresh"})
    assert page.status_code == 200 and 'name="confirm"' in page.text
    assert still_logged_in(broker, browser)  # a GET alone (e.g. an <img>) logs nobody out
    forged = browser.post(f"{broker.issuer}/logout", data={"confirm": "guess"})
    assert 'name="confirm"' in forged.text and still_logged_in(broker, browser)
    confirm = page.text.split('name="confirm" value="')[1].split('"')[0]
    done = browser.post(f"{broker.issuer}/logout", data={"confirm": confirm})
    assert done.status_code == 200 and "Location" not in done.headers
    assert not still_logged_in(broker, browser)


def hidden_fields(page: str) -> dict[str, str]:
    """The confirmation form's hidden inputs, as the browser would post them."""
    fields = re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page)
    return {name: html.unescape(value) for name, value in fields}


def test_confirmed_logout_without_hint_returns_to_the_rp_that_named_itself(
    broker: Broker, emulator: Emulator
) -> None:
    """GitLab and Nextcloud send client_id and post_logout_redirect_uri, no hint (§3):
    after the user confirms, the broker may send them back to that client's URI."""
    browser, _ = logged_in(broker, emulator)
    params = {"client_id": "rp-refresh", "post_logout_redirect_uri": LOGGED_OUT, "state": "s1"}
    page = browser.get(f"{broker.issuer}/logout", params=params)
    assert page.status_code == 200 and 'name="confirm"' in page.text
    form = hidden_fields(page.text)
    forged = browser.post(
        f"{broker.issuer}/logout", data={**form, "confirm": "guess"}, allow_redirects=False
    )
    assert "Location" not in forged.headers and still_logged_in(broker, browser)
    done = browser.post(f"{broker.issuer}/logout", data=form, allow_redirects=False)
    assert done.status_code in (302, 303) and done.headers["Location"].startswith(LOGGED_OUT)
    assert query_of(done.headers["Location"])["state"] == "s1"
    assert not still_logged_in(broker, browser)


def test_confirmed_logout_never_redirects_to_another_clients_uri(
    broker: Broker, emulator: Emulator
) -> None:
    browser, _ = logged_in(broker, emulator)
    params = {"client_id": "rp-basic", "post_logout_redirect_uri": LOGGED_OUT}
    page = browser.get(f"{broker.issuer}/logout", params=params)
    done = browser.post(f"{broker.issuer}/logout", data=hidden_fields(page.text),
                        allow_redirects=False)  # fmt: skip
    assert "Location" not in done.headers and not still_logged_in(broker, browser)


def test_forged_hints_get_an_error_page_and_change_nothing(
    broker: Broker, emulator: Emulator
) -> None:
    browser, result = logged_in(broker, emulator)
    claims = jwt.decode(result["token"]["id_token"], options={"verify_signature": False})
    unsigned = jwt.encode(claims, key="", algorithm="none")
    other_key = jwt.encode(claims, "a-secret-the-broker-never-had-0123456789", algorithm="HS256")
    for hint in (unsigned, other_key, "not.a.jwt"):
        params = {"id_token_hint": hint, "post_logout_redirect_uri": LOGGED_OUT}
        response = browser.get(f"{broker.issuer}/logout", params=params, allow_redirects=False)
        assert response.status_code == 400 and "Location" not in response.headers
    assert still_logged_in(broker, browser)


def test_backchannel_logout_reaches_the_clients_of_the_session(tmp_path: Path) -> None:
    received: list[str] = []
    arrived = threading.Event()
    receiver = Flask("receiver")

    @receiver.post("/backchannel")
    def backchannel() -> tuple[str, int]:
        received.append(request.form["logout_token"])
        arrived.set()
        return "", 200

    served = serve(receiver)
    clients = [
        {
            "client_id": "rp-bc",
            "client_secret": "s" * 32,
            "redirect_uris": [f"{RP}/bc/callback"],
            "backchannel_logout_uri": f"{served.url}/backchannel",
        }
    ]
    pair = start_pair(tmp_path, clients=clients)
    try:
        broker = pair.broker
        browser = requests.Session()
        result = RelyingParty(broker, "rp-bc").login(pair.emulator, browser=browser)
        params = {"id_token_hint": result["token"]["id_token"]}
        assert browser.get(f"{broker.issuer}/logout", params=params).status_code == 200
        assert arrived.wait(10)
        jwks = jwt.PyJWKClient(f"{broker.issuer}/jwks.json")
        token = received[0]
        claims = jwt.decode(
            token,
            jwks.get_signing_key_from_jwt(token).key,
            algorithms=["RS256"],
            audience="rp-bc",
            issuer=broker.issuer,
        )
        assert claims["sid"] == result["claims"]["sid"]
        assert claims["sub"] == result["claims"]["sub"]
        assert "http://schemas.openid.net/event/backchannel-logout" in claims["events"]
        assert jwt.get_unverified_header(token)["typ"] == "logout+jwt"
    finally:
        pair.stop()
        served.stop()


def test_someone_elses_hint_does_not_log_this_browser_out(
    broker: Broker, emulator: Emulator
) -> None:
    """Logout CSRF: a link carrying the attacker's own valid ID token."""
    _, attacker = logged_in(broker, emulator)
    victim = requests.Session()
    RelyingParty(broker, "rp-refresh").login(emulator, user="lisi", browser=victim)
    params = {
        "id_token_hint": attacker["token"]["id_token"],
        "post_logout_redirect_uri": LOGGED_OUT,
        "state": "x",
    }
    response = victim.get(f"{broker.issuer}/logout", params=params, allow_redirects=False)
    assert response.status_code == 200 and 'name="confirm"' in response.text
    assert still_logged_in(broker, victim)


def test_only_id_tokens_are_accepted_as_hints(tmp_path: Path) -> None:
    clients = [
        {
            "client_id": "rp-jwt",
            "client_secret": "s" * 32,
            "redirect_uris": [f"{RP}/jwt/callback"],
            "access_token_format": "jwt",
            "post_logout_redirect_uris": [f"{RP}/jwt/out"],
        }
    ]
    pair = start_pair(tmp_path, clients=clients)
    try:
        browser = requests.Session()
        result = RelyingParty(pair.broker, "rp-jwt").login(pair.emulator, browser=browser)
        params = {
            "id_token_hint": result["token"]["access_token"],
            "post_logout_redirect_uri": f"{RP}/jwt/out",
        }
        response = browser.get(f"{pair.broker.issuer}/logout", params=params, allow_redirects=False)
        assert response.status_code == 400 and "Location" not in response.headers
        assert still_logged_in_as(pair.broker, browser, "rp-jwt")
    finally:
        pair.stop()


def still_logged_in_as(broker: Broker, browser: requests.Session, client_id: str) -> bool:
    url, _ = RelyingParty(broker, client_id).authorization_url(prompt="none")
    response = browser.get(url, allow_redirects=False, timeout=5)
    return "code" in query_of(response.headers["Location"])
