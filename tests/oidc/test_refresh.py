"""Refresh tokens (issue 3 point 2): offline_access, rotation, reuse detection, lifetimes."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import requests

from tests.conftest import Broker, Emulator, start_pair
from tests.oidc.test_flow import RelyingParty


def refresh(broker: Broker, client_id: str, token: str, **extra: str) -> requests.Response:
    secret = broker.clients[client_id]["client_secret"]
    data = {"grant_type": "refresh_token", "refresh_token": token, **extra}
    return requests.post(f"{broker.issuer}/token", data=data, auth=(client_id, secret), timeout=10)


def offline_login(
    broker: Broker, emulator: Emulator, client_id: str = "rp-refresh"
) -> dict[str, Any]:
    return RelyingParty(broker, client_id, scope="openid profile offline_access").login(emulator)


def userinfo_status(broker: Broker, access_token: str) -> int:
    headers = {"Authorization": f"Bearer {access_token}"}
    return requests.get(f"{broker.issuer}/userinfo", headers=headers, timeout=5).status_code


def test_offline_access_gives_a_refresh_token_and_refresh_keeps_the_identity(
    broker: Broker, emulator: Emulator
) -> None:
    first = offline_login(broker, emulator)
    rt = first["token"]["refresh_token"]
    time.sleep(1.1)
    response = refresh(broker, "rp-refresh", rt)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["refresh_token"] != rt  # rotated
    claims, _ = RelyingParty(broker, "rp-refresh").verify(body["id_token"])
    old = first["claims"]
    for name in ("iss", "sub", "aud", "auth_time", "sid"):
        assert claims[name] == old[name], name
    assert claims["iat"] > old["iat"]
    assert "nonce" not in claims
    assert userinfo_status(broker, body["access_token"]) == 200


def test_no_refresh_token_without_offline_access_or_registration(
    broker: Broker, emulator: Emulator
) -> None:
    online = RelyingParty(broker, "rp-refresh").login(emulator)
    assert "refresh_token" not in online["token"]
    unregistered = RelyingParty(broker, "rp-basic", scope="openid offline_access").login(emulator)
    assert "refresh_token" not in unregistered["token"]


def test_reusing_a_rotated_token_revokes_the_family(broker: Broker, emulator: Emulator) -> None:
    first = offline_login(broker, emulator)
    rt1 = first["token"]["refresh_token"]
    second = refresh(broker, "rp-refresh", rt1).json()
    replay = refresh(broker, "rp-refresh", rt1)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    after = refresh(broker, "rp-refresh", second["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"
    assert userinfo_status(broker, second["access_token"]) == 401
    assert userinfo_status(broker, first["token"]["access_token"]) == 401


def test_another_client_cannot_use_the_token_and_does_not_burn_it(
    broker: Broker, emulator: Emulator
) -> None:
    rt = offline_login(broker, emulator)["token"]["refresh_token"]
    stolen = refresh(broker, "rp-refresh-b", rt)
    assert stolen.status_code == 400 and stolen.json()["error"] == "invalid_grant"
    assert refresh(broker, "rp-refresh", rt).status_code == 200


def test_broader_scope_is_refused_without_burning_the_token(
    broker: Broker, emulator: Emulator
) -> None:
    rt = offline_login(broker, emulator)["token"]["refresh_token"]
    wider = refresh(broker, "rp-refresh", rt, scope="openid profile email offline_access")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope"
    narrower = refresh(broker, "rp-refresh", rt, scope="openid")
    assert narrower.status_code == 200
    assert (
        "nickname" not in RelyingParty(broker, "rp-refresh").verify(narrower.json()["id_token"])[0]
    )


def test_concurrent_use_of_one_token_has_at_most_one_winner(
    broker: Broker, emulator: Emulator
) -> None:
    rt = offline_login(broker, emulator)["token"]["refresh_token"]
    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def attempt() -> None:
        barrier.wait()
        statuses.append(refresh(broker, "rp-refresh", rt).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses.count(200) <= 1 and len(statuses) == 6


def test_idle_and_absolute_lifetimes(tmp_path: Path) -> None:
    pair = start_pair(tmp_path, lifetimes={"refresh_idle": 1, "refresh_absolute": 3})
    try:
        broker, emulator = pair.broker, pair.emulator
        rt = offline_login(broker, emulator)["token"]["refresh_token"]
        time.sleep(1.5)
        idle = refresh(broker, "rp-refresh", rt)
        assert idle.status_code == 400 and idle.json()["error"] == "invalid_grant"
        rt = offline_login(broker, emulator)["token"]["refresh_token"]
        for _ in range(4):  # keep it warm; the family still ends after 3 s
            time.sleep(0.8)
            response = refresh(broker, "rp-refresh", rt)
            if response.status_code != 200:
                break
            rt = response.json()["refresh_token"]
        assert response.status_code == 400
    finally:
        pair.stop()


def test_a_narrower_refresh_keeps_the_grant(broker: Broker, emulator: Emulator) -> None:
    """RFC 6749 §6: the new refresh token has the original scope."""
    rt = offline_login(broker, emulator)["token"]["refresh_token"]
    narrow = refresh(broker, "rp-refresh", rt, scope="openid").json()
    assert narrow["scope"] == "openid" and "refresh_token" in narrow
    wide_again = refresh(broker, "rp-refresh", narrow["refresh_token"])
    assert wide_again.status_code == 200
    assert set(wide_again.json()["scope"].split()) == {"openid", "profile", "offline_access"}
