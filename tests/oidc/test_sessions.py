"""The broker's SSO session (issue 3 point 1): one QQ login serves several relying parties.

Each test uses its own cookie jar as one browser; the emulator's request log
shows whether a step went to QQ.
"""

from __future__ import annotations

import time
from pathlib import Path

import requests

from tests.conftest import Broker, Emulator, start_pair
from tests.flows import authorize_url, query_of
from tests.oidc.test_flow import RelyingParty


def qq_logins(emulator: Emulator) -> int:
    return [r["endpoint"] for r in emulator.requests()].count("authorize")


def test_second_relying_party_does_not_bounce_to_qq(broker: Broker, emulator: Emulator) -> None:
    browser = requests.Session()
    first = RelyingParty(broker, "rp-basic").login(emulator, browser=browser)
    assert qq_logins(emulator) == 1
    second = RelyingParty(broker, "rp-post").login(emulator, browser=browser)
    assert qq_logins(emulator) == 1  # no new QQ round trip
    assert second["claims"]["sub"] == first["claims"]["sub"]
    assert second["claims"]["auth_time"] == first["claims"]["auth_time"]
    assert second["claims"]["sid"] == first["claims"]["sid"]


def test_session_cookie_attributes_in_development(broker: Broker, emulator: Emulator) -> None:
    browser = requests.Session()
    RelyingParty(broker, "rp-basic").login(emulator, browser=browser)
    cookie = next(c for c in browser.cookies if c.name == "qqb_session")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert not cookie.secure  # loopback issuer: development
    assert cookie.path == "/"


def test_every_qq_login_gets_a_new_session_cookie(broker: Broker, emulator: Emulator) -> None:
    browser = requests.Session()
    RelyingParty(broker, "rp-basic").login(emulator, browser=browser)
    before = browser.cookies.get("qqb_session")
    RelyingParty(broker, "rp-basic").login(emulator, browser=browser, prompt="login")
    assert browser.cookies.get("qqb_session") not in (None, before)


def test_prompt_none_without_session_is_login_required(broker: Broker, emulator: Emulator) -> None:
    rp = RelyingParty(broker, "rp-basic")
    url, state = rp.authorization_url(prompt="none")
    response = requests.get(url, allow_redirects=False, timeout=5)
    query = query_of(response.headers["Location"])
    assert query["error"] == "login_required"
    assert query["state"] == state and query["iss"] == broker.issuer
    assert emulator.requests() == []


def test_prompt_none_with_session_returns_a_code_without_qq(
    broker: Broker, emulator: Emulator
) -> None:
    browser = requests.Session()
    first = RelyingParty(broker, "rp-basic").login(emulator, browser=browser)
    silent = RelyingParty(broker, "rp-basic").login(emulator, browser=browser, prompt="none")
    assert qq_logins(emulator) == 1
    assert silent["claims"]["sub"] == first["claims"]["sub"]


def test_prompt_login_forces_a_fresh_qq_login(broker: Broker, emulator: Emulator) -> None:
    browser = requests.Session()
    first = RelyingParty(broker, "rp-basic").login(emulator, browser=browser)
    time.sleep(1.1)
    again = RelyingParty(broker, "rp-basic").login(emulator, browser=browser, prompt="login")
    assert qq_logins(emulator) == 2
    assert again["claims"]["auth_time"] > first["claims"]["auth_time"]
    assert again["claims"]["sid"] != first["claims"]["sid"]


def test_max_age_exceeded_goes_back_to_qq(broker: Broker, emulator: Emulator) -> None:
    browser = requests.Session()
    first = RelyingParty(broker, "rp-basic").login(emulator, browser=browser)
    kept = RelyingParty(broker, "rp-basic").login(emulator, browser=browser, max_age="10000")
    assert qq_logins(emulator) == 1
    assert kept["claims"]["auth_time"] == first["claims"]["auth_time"]
    time.sleep(2.1)
    fresh = RelyingParty(broker, "rp-basic").login(emulator, browser=browser, max_age="1")
    assert qq_logins(emulator) == 2
    assert fresh["claims"]["auth_time"] > first["claims"]["auth_time"]


def test_prompt_none_with_exceeded_max_age_is_login_required(
    broker: Broker, emulator: Emulator
) -> None:
    browser = requests.Session()
    RelyingParty(broker, "rp-basic").login(emulator, browser=browser)
    time.sleep(1.1)
    rp = RelyingParty(broker, "rp-basic")
    url, _ = rp.authorization_url(prompt="none", max_age="0")
    response = browser.get(url, allow_redirects=False, timeout=5)
    assert query_of(response.headers["Location"])["error"] == "login_required"


def test_prompt_none_combined_with_login_is_invalid(broker: Broker) -> None:
    url = authorize_url(
        broker.issuer,
        response_type="code",
        client_id="rp-basic",
        scope="openid",
        state="s",
        redirect_uri=broker.clients["rp-basic"]["redirect_uri"],
        prompt="none login",
    )
    response = requests.get(url, allow_redirects=False, timeout=5)
    assert query_of(response.headers["Location"])["error"] == "invalid_request"


def test_a_forged_session_cookie_is_not_a_session(broker: Broker, emulator: Emulator) -> None:
    browser = requests.Session()
    browser.cookies.set("qqb_session", "forged-value-that-was-never-issued-by-the-broker")
    rp = RelyingParty(broker, "rp-basic")
    url, _ = rp.authorization_url(prompt="none")
    response = browser.get(url, allow_redirects=False, timeout=5)
    assert query_of(response.headers["Location"])["error"] == "login_required"


def test_unionid_client_after_an_openid_login_goes_to_qq_for_the_unionid(
    tmp_path: Path,
) -> None:
    pair = start_pair(tmp_path)  # a fresh store: no UnionID known for anyone yet
    try:
        broker, emulator = pair.broker, pair.emulator
        browser = requests.Session()
        RelyingParty(broker, "rp-basic").login(emulator, user="lisi", browser=browser)
        union = RelyingParty(broker, "rp-unionid").login(emulator, user="lisi", browser=browser)
        assert qq_logins(emulator) == 2
        assert union["claims"]["sub"].startswith("UID_")
    finally:
        pair.stop()


def test_hint_for_another_user_is_not_answered_from_the_session(
    broker: Broker, emulator: Emulator
) -> None:
    lisi = RelyingParty(broker, "rp-basic").login(emulator, user="lisi")
    browser = requests.Session()
    mine = RelyingParty(broker, "rp-basic").login(emulator, user="zhangsan", browser=browser)
    rp = RelyingParty(broker, "rp-basic")
    other, _ = rp.authorization_url(prompt="none", id_token_hint=lisi["token"]["id_token"])
    response = browser.get(other, allow_redirects=False, timeout=5)
    assert query_of(response.headers["Location"])["error"] == "login_required"
    same, _ = rp.authorization_url(prompt="none", id_token_hint=mine["token"]["id_token"])
    assert "code" in query_of(
        browser.get(same, allow_redirects=False, timeout=5).headers["Location"]
    )


def test_forged_hint_is_invalid_request(broker: Broker, emulator: Emulator) -> None:
    import jwt as pyjwt

    browser = requests.Session()
    mine = RelyingParty(broker, "rp-basic").login(emulator, browser=browser)
    claims = pyjwt.decode(mine["token"]["id_token"], options={"verify_signature": False})
    for forged in (pyjwt.encode(claims, key="", algorithm="none"), "a.b.c", "x" * 100):
        url, _ = RelyingParty(broker, "rp-basic").authorization_url(
            prompt="none", id_token_hint=forged
        )
        location = browser.get(url, allow_redirects=False, timeout=5).headers["Location"]
        assert query_of(location)["error"] == "invalid_request"


def test_requested_sub_value_must_match_the_session(broker: Broker, emulator: Emulator) -> None:
    import json

    browser = requests.Session()
    RelyingParty(broker, "rp-basic").login(emulator, user="zhangsan", browser=browser)
    lisi = emulator.user("lisi")["openid"]
    claims = json.dumps({"id_token": {"sub": {"value": lisi}}})
    url, _ = RelyingParty(broker, "rp-basic").authorization_url(prompt="none", claims=claims)
    location = browser.get(url, allow_redirects=False, timeout=5).headers["Location"]
    assert query_of(location)["error"] == "login_required"


def test_select_account_goes_back_to_qq(broker: Broker, emulator: Emulator) -> None:
    browser = requests.Session()
    RelyingParty(broker, "rp-basic").login(emulator, browser=browser)
    RelyingParty(broker, "rp-basic").login(emulator, browser=browser, prompt="select_account")
    assert qq_logins(emulator) == 2
