"""The token endpoint: codes are single use, bound to client, redirect URI and PKCE verifier."""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from typing import Any

import requests

from tests.conftest import Broker, Emulator
from tests.flows import authorize_url, follow_until, query_of


def s256(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


def obtain_code(broker: Broker, emulator: Emulator, client_id: str = "rp-basic") -> tuple[str, str]:
    """A fresh authorization code and its PKCE verifier."""
    emulator.control(auto_login="zhangsan")
    verifier = secrets.token_urlsafe(48)
    redirect_uri = broker.clients[client_id]["redirect_uri"]
    url = authorize_url(
        broker.issuer,
        response_type="code",
        client_id=client_id,
        redirect_uri=redirect_uri,
        scope="openid",
        state="s",
        code_challenge=s256(verifier),
        code_challenge_method="S256",
    )
    response = follow_until(requests.Session(), url, redirect_uri)
    return query_of(response.headers["Location"])["code"], verifier


def redeem(
    broker: Broker,
    code: str,
    verifier: str | None,
    client_id: str = "rp-basic",
    redirect_uri: str | None = None,
) -> requests.Response:
    data: dict[str, Any] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri or broker.clients["rp-basic"]["redirect_uri"],
    }
    if verifier is not None:
        data["code_verifier"] = verifier
    secret = broker.clients[client_id]["client_secret"]
    return requests.post(f"{broker.issuer}/token", data=data, auth=(client_id, secret), timeout=10)


def test_code_is_single_use(broker: Broker, emulator: Emulator) -> None:
    code, verifier = obtain_code(broker, emulator)
    assert redeem(broker, code, verifier).status_code == 200
    second = redeem(broker, code, verifier)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"


def test_concurrent_redemptions_yield_exactly_one_token(broker: Broker, emulator: Emulator) -> None:
    code, verifier = obtain_code(broker, emulator)
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        statuses.append(redeem(broker, code, verifier).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200] + [400] * 7


def test_code_of_one_client_cannot_be_redeemed_by_another(
    broker: Broker, emulator: Emulator
) -> None:
    code, verifier = obtain_code(broker, emulator, "rp-basic")
    other = redeem(
        broker,
        code,
        verifier,
        client_id="rp-multi",
        redirect_uri=broker.clients["rp-basic"]["redirect_uri"],
    )
    assert other.status_code == 400 and other.json()["error"] == "invalid_grant"


def test_redirect_uri_must_match(broker: Broker, emulator: Emulator) -> None:
    code, verifier = obtain_code(broker, emulator)
    response = redeem(broker, code, verifier, redirect_uri="http://127.0.0.1:9/basic/callback/")
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


def test_wrong_or_missing_pkce_verifier_fails(broker: Broker, emulator: Emulator) -> None:
    code, _ = obtain_code(broker, emulator)
    wrong = redeem(broker, code, secrets.token_urlsafe(48))
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    code, _ = obtain_code(broker, emulator)
    missing = redeem(broker, code, None)
    assert missing.status_code == 400 and missing.json()["error"] in {
        "invalid_request",
        "invalid_grant",
    }


def test_public_client_redeems_with_verifier_only(broker: Broker, emulator: Emulator) -> None:
    code, verifier = obtain_code(broker, emulator, "rp-public")
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "client_id": "rp-public",
        "redirect_uri": broker.clients["rp-public"]["redirect_uri"],
    }
    without = requests.post(f"{broker.issuer}/token", data=data, timeout=10)
    assert without.status_code == 400
    code, verifier = obtain_code(broker, emulator, "rp-public")
    data["code"], data["code_verifier"] = code, verifier
    ok = requests.post(f"{broker.issuer}/token", data=data, timeout=10)
    assert ok.status_code == 200 and "id_token" in ok.json()


def test_access_token_works_at_userinfo_and_in_post(broker: Broker, emulator: Emulator) -> None:
    code, verifier = obtain_code(broker, emulator)
    token = redeem(broker, code, verifier).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    get = requests.get(f"{broker.issuer}/userinfo", headers=headers, timeout=5)
    post = requests.post(f"{broker.issuer}/userinfo", headers=headers, timeout=5)
    assert get.status_code == post.status_code == 200
    assert get.json()["sub"] == emulator.user("zhangsan")["openid"]
    in_query = requests.get(f"{broker.issuer}/userinfo?access_token={token}", timeout=5)
    assert in_query.status_code == 401


def test_code_replay_revokes_the_tokens_it_issued(broker: Broker, emulator: Emulator) -> None:
    code, verifier = obtain_code(broker, emulator, "rp-refresh")
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "code_verifier": verifier,
        "redirect_uri": broker.clients["rp-refresh"]["redirect_uri"],
    }
    auth = ("rp-refresh", broker.clients["rp-refresh"]["client_secret"])
    first = requests.post(f"{broker.issuer}/token", data=data, auth=auth, timeout=10).json()
    headers = {"Authorization": f"Bearer {first['access_token']}"}
    assert requests.get(f"{broker.issuer}/userinfo", headers=headers, timeout=5).status_code == 200
    replay = requests.post(f"{broker.issuer}/token", data=data, auth=auth, timeout=10)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert requests.get(f"{broker.issuer}/userinfo", headers=headers, timeout=5).status_code == 401
