"""Subject and e-mail policies (issue 3 points 6, 7), and discovery telling the truth (point 11)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Pair, start_pair
from tests.flows import authorize_url, query_of
from tests.oidc.test_flow import RelyingParty

SECRET = "s" * 32


def client(client_id: str, host: str = "127.0.0.1", **options: Any) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "client_secret": SECRET,
        "redirect_uris": [f"http://{host}:9/{client_id}/callback"],
        **options,
    }


@pytest.fixture
def policies(tmp_path: Path) -> Iterator[Pair]:
    clients = [
        client("rp-pairwise-a", subject="pairwise"),
        client("rp-pairwise-b", host="localhost", subject="pairwise"),
        client("rp-pairwise-a2", subject="pairwise"),  # same sector (host) as rp-pairwise-a
        client("rp-email", email="synthetic"),
        client("rp-plain"),
    ]
    pair = start_pair(tmp_path, clients=clients, claims={"email_domain": "users.example.invalid"})
    yield pair
    pair.stop()


def login(
    pair: Pair, client_id: str, user: str = "zhangsan", scope: str = "openid profile"
) -> dict[str, Any]:
    return RelyingParty(pair.broker, client_id, scope=scope).login(pair.emulator, user=user)


def test_pairwise_subjects_differ_per_sector_and_are_stable(policies: Pair) -> None:
    openid = policies.emulator.user("zhangsan")["openid"]
    a = login(policies, "rp-pairwise-a")["claims"]["sub"]
    b = login(policies, "rp-pairwise-b")["claims"]["sub"]
    again = login(policies, "rp-pairwise-a")["claims"]["sub"]
    same_sector = login(policies, "rp-pairwise-a2")["claims"]["sub"]
    other_user = login(policies, "rp-pairwise-a", user="lisi")["claims"]["sub"]
    assert a == again == same_sector
    assert a != b and a != other_user
    assert openid not in (a, b) and openid.lower() not in a.lower()


def test_synthetic_email_only_for_clients_that_chose_it(policies: Pair) -> None:
    result = login(policies, "rp-email", scope="openid profile email")
    sub = result["claims"]["sub"]
    assert result["claims"]["email"] == f"{sub}@users.example.invalid"
    assert result["claims"]["email_verified"] is False
    assert result["userinfo"]["email"] == f"{sub}@users.example.invalid"
    plain = login(policies, "rp-plain", scope="openid profile email")
    assert "email" not in plain["claims"] and "email" not in plain["userinfo"]


def test_discovery_lists_what_the_endpoints_accept(policies: Pair) -> None:
    broker = policies.broker
    meta = broker.metadata()
    assert "pairwise" in meta["subject_types_supported"]
    assert {"email", "email_verified"} <= set(meta["claims_supported"])
    assert meta["scopes_supported"] == ["openid", "profile", "email"]  # no refresh client here
    assert meta["grant_types_supported"] == ["authorization_code"]
    # Every advertised response mode is honoured (the answer arrives in that mode).
    for mode in meta["response_modes_supported"]:
        url = authorize_url(
            broker.issuer,
            response_type="code",
            client_id="rp-plain",
            redirect_uri="http://127.0.0.1:9/rp-plain/callback",
            scope="openid",
            state="s",
            prompt="none",
            response_mode=mode,
        )
        response = requests.get(url, allow_redirects=False, timeout=5)
        if mode == "query":
            assert query_of(response.headers["Location"])["error"] == "login_required"
        else:
            assert response.status_code == 200 and 'value="login_required"' in response.text
    # Every advertised response type works; the others are refused.
    for response_type in ("token", "id_token", "code id_token"):
        url = authorize_url(
            broker.issuer,
            response_type=response_type,
            client_id="rp-plain",
            redirect_uri="http://127.0.0.1:9/rp-plain/callback",
            scope="openid",
            state="s",
        )
        location = requests.get(url, allow_redirects=False, timeout=5).headers["Location"]
        assert query_of(location)["error"] == "unsupported_response_type"
    assert meta["response_types_supported"] == ["code"]
    # Every advertised signing algorithm is published in the JWKS, and nothing else.
    keys = requests.get(meta["jwks_uri"], timeout=5).json()["keys"]
    assert {k["alg"] for k in keys} == set(meta["id_token_signing_alg_values_supported"])
    # Grants outside the list are refused.
    for grant in ("password", "client_credentials", "urn:ietf:params:oauth:grant-type:jwt-bearer"):
        refused = requests.post(
            meta["token_endpoint"], data={"grant_type": grant}, auth=("rp-plain", SECRET), timeout=5
        )
        assert refused.json()["error"] == "unsupported_grant_type", grant
    assert meta["code_challenge_methods_supported"] == ["S256"]
    for endpoint in (
        "revocation_endpoint",
        "introspection_endpoint",
        "end_session_endpoint",
        "userinfo_endpoint",
    ):
        assert requests.options(meta[endpoint], timeout=5).status_code != 404, endpoint
