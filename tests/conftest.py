"""Session fixtures: the QQ emulator and the broker as real HTTP servers on 127.0.0.1.

Started once per session; each test resets the emulator's control state and
request log. Tests drive them with independent clients (Authlib's OAuth2
client, PyJWT, requests), never with the broker's own code.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from broker.app import create_app
from broker.config import Config, parse_config
from broker.emulator import EmulatorSettings, create_emulator_app
from tests.servers import Emulator, ServedApp, free_port, serve

APP_ID = "101000001"
RP = "http://127.0.0.1:9"  # relying-party redirect URIs: parsed by tests, never followed


def client_definitions() -> list[dict[str, Any]]:
    """The relying parties every test broker knows (secrets are per session)."""
    return [
        {
            "client_id": "rp-basic",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/basic/callback"],
        },
        {
            "client_id": "rp-post",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/post/callback"],
            "token_endpoint_auth_method": "client_secret_post",
        },
        {
            "client_id": "rp-public",
            "redirect_uris": [f"{RP}/public/callback"],
            "token_endpoint_auth_method": "none",
        },
        {
            "client_id": "rp-multi",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/multi/cb", f"{RP}/multi/cb2?tenant=1"],
        },
        {
            "client_id": "rp-es256",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/es/callback"],
            "id_token_signed_response_alg": "ES256",
        },
        {
            "client_id": "rp-eddsa",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/ed/callback"],
            "id_token_signed_response_alg": "EdDSA",
        },
        {
            "client_id": "rp-refresh",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/refresh/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
            "post_logout_redirect_uris": [f"{RP}/refresh/logged-out"],
        },
        {
            "client_id": "rp-refresh-b",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/refresh-b/callback"],
            "grant_types": ["authorization_code", "refresh_token"],
        },
        {
            "client_id": "rp-unionid",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": [f"{RP}/union/callback"],
            "subject": "unionid",
            "expose_qq_ids": True,
        },
    ]


def broker_config(
    base_dir: Path, issuer: str, qq_url: str, app_key: str, **overrides: Any
) -> Config:
    data: dict[str, Any] = {
        "issuer": issuer,
        "storage": {"url": "sqlite:///broker.sqlite3"},
        "keys": {"dir": "keys", "algorithms": ["RS256", "ES256", "EdDSA"]},
        "upstream": {"qq": {"app_id": APP_ID, "app_key": app_key, "base_url": qq_url}},
        "rate_limits": {"enabled": False},
        "clients": client_definitions(),
    }
    data.update(overrides)
    return parse_config(data, source="<test>", base_dir=base_dir)


@dataclass
class Broker:
    """A running broker plus what tests need to talk to it."""

    served: ServedApp
    config: Config
    clients: dict[str, dict[str, Any]]

    @property
    def issuer(self) -> str:
        return self.config.issuer

    def metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = requests.get(
            f"{self.issuer}/.well-known/openid-configuration", timeout=5
        ).json()
        return meta


@pytest.fixture(scope="session")
def app_key() -> str:
    return secrets.token_hex(16)


@pytest.fixture(scope="session")
def broker_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def emulator(broker_port: int, app_key: str) -> Iterator[Emulator]:
    settings = EmulatorSettings(
        app_id=APP_ID,
        app_key=app_key,
        callbacks=[f"http://127.0.0.1:{broker_port}/qq/callback"],
        unionid_enabled=True,
    )
    served = serve(create_emulator_app(settings))
    yield Emulator(served)
    served.stop()


@pytest.fixture(scope="session")
def broker(
    tmp_path_factory: pytest.TempPathFactory, emulator: Emulator, broker_port: int, app_key: str
) -> Iterator[Broker]:
    base = tmp_path_factory.mktemp("broker")
    config = broker_config(base, f"http://127.0.0.1:{broker_port}", emulator.url, app_key)
    served = serve(create_app(config), port=broker_port)
    clients = {
        c.client_id: {"client_secret": c.client_secret, "redirect_uri": c.redirect_uris[0]}
        for c in config.clients
    }
    yield Broker(served, config, clients)
    served.stop()


@pytest.fixture(autouse=True)
def _fresh_emulator(request: pytest.FixtureRequest) -> None:
    """Tests that use the emulator start from its defaults and an empty request log."""
    if "emulator" in request.fixturenames:
        request.getfixturevalue("emulator").reset()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI a skipped test is a failure: nothing may silently not run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        reporter.write_line(f"CI=true: {skipped} test(s) skipped; failing the run", red=True)
        session.exitstatus = 1


@dataclass
class Pair:
    """A dedicated emulator + broker, for tests that need non-default settings."""

    emulator: Emulator
    broker: Broker

    def stop(self) -> None:
        self.broker.served.stop()
        self.emulator.served.stop()


def start_pair(
    base_dir: Path,
    *,
    connector_options: dict[str, Any] | None = None,
    issuer_path: str = "",
    **config_overrides: Any,
) -> Pair:
    """Start an emulator and a broker wired to each other, with the given overrides."""
    from broker.connectors.qq import QQConnector

    port, key = free_port(), secrets.token_hex(16)
    settings = EmulatorSettings(
        app_id=APP_ID,
        app_key=key,
        callbacks=[f"http://127.0.0.1:{port}{issuer_path}/qq/callback"],
        unionid_enabled=True,
    )
    emulator = Emulator(serve(create_emulator_app(settings)))
    config = broker_config(
        base_dir, f"http://127.0.0.1:{port}{issuer_path}", emulator.url, key, **config_overrides
    )
    connector = None
    if connector_options:
        connector = QQConnector(
            app_id=APP_ID, app_key=key, base_url=emulator.url, **connector_options
        )
    served = serve(create_app(config, connector=connector), port=port)
    clients = {
        c.client_id: {"client_secret": c.client_secret, "redirect_uri": c.redirect_uris[0]}
        for c in config.clients
    }
    return Pair(emulator, Broker(served, config, clients))
