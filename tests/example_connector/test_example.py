"""A connector from "another package": found by name, passing the kit, carrying a login.

The example connector is registered through a throwaway ``*.dist-info`` on ``sys.path``
(distinfo.py), so the registry finds it exactly as it would find an installed package,
and the virtualenv is left alone. Everything talks real HTTP on 127.0.0.1: the example
upstream, the broker (create_app with ``upstream.connector: example``), and a relying
party built on Authlib's client and PyJWT, which know nothing of the connector.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session

from broker.app import create_app
from broker.config import Config, parse_config
from broker.connectors.contract import CHECKS, ContractSession, run_contract
from broker.connectors.registry import installed_connectors, load_factory, not_installed
from broker.doctor import FAIL, OK, QQ_CHECKS, SKIP, exit_status, run_checks
from tests.example_connector import connector as example
from tests.example_connector.adapter import CLIENT_ID, ExampleAdapter
from tests.example_connector.distinfo import on_sys_path, write_dist_info
from tests.example_connector.emulator import create_example_upstream
from tests.flows import follow_until, query_of
from tests.servers import ServedApp, free_port, serve

RP = "http://127.0.0.1:9"  # relying-party redirect URI: parsed, never followed
ENTRY_POINT = "tests.example_connector.connector:factory"


@pytest.fixture(scope="module", autouse=True)
def example_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("site-packages")
    write_dist_info(root, "qq-oidc-broker-example", {"example": ENTRY_POINT})
    with on_sys_path(root):
        yield root


# --------------------------------------------------------------------------- registry


def test_the_registry_finds_the_example_by_name() -> None:
    found = installed_connectors()
    assert [entry.value for entry in found["example"]] == [ENTRY_POINT]
    assert found["example"][0].dist is not None
    assert found["example"][0].dist.metadata["Name"] == "qq-oidc-broker-example"
    assert load_factory("example") is example.factory
    assert not_installed("example") is None


# --------------------------------------------------------------------------- contract kit


@pytest.fixture(scope="module")
def contract() -> Iterator[ContractSession]:
    with ContractSession(ExampleAdapter()) as session:
        yield session


@pytest.mark.parametrize("check", CHECKS, ids=str)
def test_the_example_keeps_the_contract(contract: ContractSession, check: Any) -> None:
    check.run(contract)


def test_the_report_says_what_did_not_apply() -> None:
    report = run_contract(ExampleAdapter())
    report.assert_ok()
    notes = {result.name: result.detail for result in report.results if result.detail}
    assert notes == {"unionid": "not applicable: the adapter says the upstream has no UnionID"}


# --------------------------------------------------------------------------- the broker


@dataclass
class Stack:
    upstream: ServedApp
    broker: ServedApp
    issuer: str
    rp_secret: str
    upstream_secret: str
    config: Config

    def act_as(self, user: str | None) -> None:
        requests.post(f"{self.upstream.url}/control", json={"user": user}, timeout=5)

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = requests.get(
            f"{self.issuer}/.well-known/openid-configuration", timeout=5
        ).json()
        return meta


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    upstream_secret, rp_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    upstream = serve(
        create_example_upstream(
            client_id=CLIENT_ID,
            client_secret=upstream_secret,
            redirect_uris=[f"{issuer}/qq/callback"],
        )
    )
    config = parse_config(
        {
            "issuer": issuer,
            "storage": {"url": "sqlite:///broker.sqlite3"},
            "keys": {"dir": "keys"},
            "upstream": {
                "connector": "example",
                "example": {
                    "base_url": upstream.url,
                    "client_id": CLIENT_ID,
                    "client_secret": "${EXAMPLE_CLIENT_SECRET}",
                },
            },
            "rate_limits": {"enabled": False},
            "clients": [
                {
                    "client_id": "rp",
                    "client_secret": rp_secret,
                    "redirect_uris": [f"{RP}/cb"],
                    "grant_types": ["authorization_code", "refresh_token"],
                    "upstream_check": "strict",
                }
            ],
        },
        source="<example>",
        base_dir=tmp_path_factory.mktemp("broker"),
        environ={"EXAMPLE_CLIENT_SECRET": upstream_secret},
    )
    assert config.upstream.connector == "example"
    assert config.upstream.options["client_secret"] == upstream_secret  # ${VAR} expanded
    assert upstream_secret not in repr(config)
    broker = serve(create_app(config), port=port)
    yield Stack(upstream, broker, issuer, rp_secret, upstream_secret, config)
    broker.stop()
    upstream.stop()


class RelyingParty:
    """A standard OIDC client: Authlib for the protocol, PyJWT for the ID token."""

    def __init__(self, stack: Stack) -> None:
        self.meta = stack.metadata()
        self.session = OAuth2Session(
            "rp",
            stack.rp_secret,
            scope="openid profile offline_access",
            redirect_uri=f"{RP}/cb",
            code_challenge_method="S256",
        )
        self.verifier = secrets.token_urlsafe(48)

    def authorize(self) -> tuple[str, str]:
        """The broker's answer on the RP's redirect URI, after the upstream round trip."""
        url, state = self.session.create_authorization_url(
            self.meta["authorization_endpoint"],
            code_verifier=self.verifier,
            nonce=secrets.token_urlsafe(16),
        )
        response = follow_until(requests.Session(), url, RP)
        return response.headers["Location"], state

    def redeem(self, location: str) -> dict[str, Any]:
        token: dict[str, Any] = self.session.fetch_token(
            self.meta["token_endpoint"],
            authorization_response=location,
            code_verifier=self.verifier,
        )
        return token

    def verify(self, id_token: str) -> dict[str, Any]:
        key = jwt.PyJWKClient(self.meta["jwks_uri"]).get_signing_key_from_jwt(id_token)
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key.key,
            algorithms=self.meta["id_token_signing_alg_values_supported"],
            audience="rp",
            issuer=self.meta["issuer"],
        )
        return claims

    def refresh(self, refresh_token: str) -> requests.Response:
        response: requests.Response = requests.post(
            self.meta["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=("rp", self.session.client_secret),
            timeout=10,
        )
        return response


def test_a_full_oidc_login_runs_through_the_example_connector(stack: Stack) -> None:
    stack.act_as("alice")
    rp = RelyingParty(stack)
    location, state = rp.authorize()
    params = query_of(location)
    assert params["state"] == state and params["iss"] == stack.issuer
    token = rp.redeem(location)
    claims = rp.verify(token["id_token"])
    assert claims["sub"] == "u-1001"  # the upstream's subject, through Identity.openid
    assert claims["name"] == "Alice"
    userinfo = rp.session.get(rp.meta["userinfo_endpoint"]).json()
    assert userinfo["sub"] == "u-1001" and userinfo["picture"].startswith("https://img.example")

    # upstream_check: strict asks the connector (check_token, user_info) on each refresh...
    refreshed = rp.refresh(token["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    # ...so a user who revokes the app upstream loses the broker's tokens too.
    requests.post(f"{stack.upstream.url}/revoke-all", timeout=5).raise_for_status()
    dead = rp.refresh(refreshed.json()["refresh_token"])
    assert dead.status_code == 400 and dead.json()["error"] == "invalid_grant"


def test_another_upstream_user_is_another_subject(stack: Stack) -> None:
    stack.act_as("bob")
    rp = RelyingParty(stack)
    location, _ = rp.authorize()
    assert rp.verify(rp.redeem(location)["id_token"])["sub"] == "u-1002"


def test_a_cancel_at_the_upstream_reaches_the_relying_party_as_access_denied(
    stack: Stack,
) -> None:
    stack.act_as(None)
    location, state = RelyingParty(stack).authorize()
    params = query_of(location)
    assert params["error"] == "access_denied" and params["state"] == state
    assert stack.upstream_secret not in location


def test_doctor_checks_the_broker_and_skips_qq_for_another_connector(stack: Stack) -> None:
    results = {result.name: result for result in run_checks(stack.config)}
    assert {name for name, r in results.items() if r.status == SKIP} >= QQ_CHECKS
    assert all(
        results[name].message.en.startswith("the upstream connector is example")
        for name in QQ_CHECKS
    )
    assert results["issuer"].status == OK and results["jwks"].status == OK
    assert not any(r.status == FAIL for r in results.values())
    assert exit_status(list(results.values())) == 0
