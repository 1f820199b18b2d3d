"""Shared helpers for the security suite (shared/security-checklist.md), all black-box HTTP.

Every helper talks to a running broker and emulator over real sockets with its own
``requests.Session`` as a browser (cookie jar); tokens are verified with PyJWT against
the published JWKS, never with the broker's own code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from flask import Flask, request

from broker.config import parse_config
from broker.emulator import EmulatorSettings, create_emulator_app
from tests.conftest import (
    APP_ID,
    RP,
    Broker,
    Emulator,
    Pair,
    client_definitions,
    start_pair,
)
from tests.flows import authorize_url, follow_until, query_of
from tests.servers import ServedApp, free_port, serve

TIMEOUT = 15
#: A client whose secret needs URL-encoding inside HTTP Basic (RFC 6749 §2.3.1, TK-07).
SPECIAL_SECRET = "Sp3c:al%2F+/=&?~!" + secrets.token_urlsafe(24)
REFRESH_LOGGED_OUT = f"{RP}/refresh/logged-out"
#: Emulator users: two distinct QQ accounts for victim/attacker scenarios.
U1, U2 = "zhangsan", "lisi"


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def b64url(data: bytes | str) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def redirect_uri_of(broker: Broker, client_id: str) -> str:
    return str(broker.clients[client_id]["redirect_uri"])


def auth_params(broker: Broker, client_id: str = "rp-basic", **overrides: Any) -> dict[str, Any]:
    """A valid authorization request (PKCE S256 + nonce); ``None`` drops a parameter."""
    verifier = overrides.pop("_verifier", None) or secrets.token_urlsafe(48)
    params: dict[str, Any] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri_of(
            broker, client_id if client_id in broker.clients else "rp-basic"
        ),
        "scope": "openid",
        "state": secrets.token_urlsafe(12),
        "nonce": secrets.token_urlsafe(12),
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None} | {"_verifier": verifier}


def public(params: dict[str, Any]) -> dict[str, Any]:
    """The request parameters without the helper's private ``_verifier``."""
    return {k: v for k, v in params.items() if not k.startswith("_")}


def get(session: requests.Session | None, url: str, **kwargs: Any) -> requests.Response:
    """A GET that never follows redirects (so each hop is seen)."""
    return (session or requests.Session()).get(
        url, allow_redirects=False, timeout=TIMEOUT, **kwargs
    )


def assert_error_page(response: requests.Response, status: int = 400) -> None:
    """RFC 6749 §4.1.2.1: an HTML page for the user, never a redirect anywhere."""
    assert response.status_code == status, (response.status_code, response.headers)
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Traceback" not in response.text


def assert_error_redirect(
    response: requests.Response,
    broker: Broker,
    redirect_uri: str,
    errors: set[str] | str,
    state: str | None,
) -> dict[str, str]:
    """An OAuth error redirect to the registered URI with ``state`` and ``iss``; no code."""
    allowed = {errors} if isinstance(errors, str) else errors
    assert response.status_code in (302, 303), (response.status_code, response.text[:300])
    location = response.headers["Location"]
    assert location.split("?")[0] == redirect_uri.split("?")[0], location
    assert "#" not in location
    query = query_of(location)
    assert query.get("error") in allowed, query
    assert "code" not in query and "access_token" not in query and "id_token" not in query
    if state is not None:
        assert query.get("state") == state
    assert query.get("iss") == broker.issuer
    return query


def token_post(
    broker: Broker, client_id: str, data: dict[str, Any], secret: str | None = None
) -> requests.Response:
    """POST /token authenticating ``client_id`` with its registered method."""
    method = {"rp-post": "client_secret_post", "rp-public": "none"}.get(
        client_id, "client_secret_basic"
    )
    secret = secret if secret is not None else broker.clients[client_id]["client_secret"]
    if method == "client_secret_basic":
        kwargs: dict[str, Any] = {"data": data, "auth": (client_id, secret)}
    elif method == "client_secret_post":
        kwargs = {"data": {**data, "client_id": client_id, "client_secret": secret}}
    else:
        kwargs = {"data": {**data, "client_id": client_id}}
    return requests.post(f"{broker.issuer}/token", timeout=TIMEOUT, **kwargs)


def jwks_client(broker: Broker) -> jwt.PyJWKClient:
    return jwt.PyJWKClient(f"{broker.issuer}/jwks.json", cache_keys=False, cache_jwk_set=False)


def verify_id_token(broker: Broker, id_token: str, client_id: str) -> dict[str, Any]:
    """What a careful RP does: kid → published key, one advertised algorithm, iss, aud."""
    header = jwt.get_unverified_header(id_token)
    meta = broker.metadata()
    assert header["alg"] in meta["id_token_signing_alg_values_supported"]
    key = jwks_client(broker).get_signing_key_from_jwt(id_token)
    claims: dict[str, Any] = jwt.decode(
        id_token,
        key.key,
        algorithms=[header["alg"]],
        audience=client_id,
        issuer=meta["issuer"],
    )
    return claims


@dataclass
class Login:
    """The outcome of one complete authorization-code flow."""

    client_id: str
    params: dict[str, Any]
    response: dict[str, str]  # the query the RP received
    tokens: dict[str, Any] = field(default_factory=dict)
    claims: dict[str, Any] = field(default_factory=dict)
    token_response: requests.Response | None = None

    @property
    def code(self) -> str:
        return self.response["code"]

    @property
    def verifier(self) -> str:
        return str(self.params["_verifier"])


def authorize_code(
    broker: Broker,
    emulator: Emulator,
    client_id: str = "rp-basic",
    user: str = U1,
    browser: requests.Session | None = None,
    method: str = "GET",
    **overrides: Any,
) -> Login:
    """Run /authorize (GET or POST form) through the emulator; return the RP's code."""
    emulator.control(auto_login=user)
    browser = browser or requests.Session()
    params = auth_params(broker, client_id, **overrides)
    redirect_uri = params.get("redirect_uri") or redirect_uri_of(broker, client_id)
    if method == "POST":
        first = browser.post(
            f"{broker.issuer}/authorize", data=public(params), allow_redirects=False, timeout=30
        )
        location = first.headers.get("Location", "")
        if first.status_code in (302, 303) and not location.startswith(redirect_uri.split("?")[0]):
            first = follow_until(browser, location, redirect_uri.split("?")[0])
        response = first
    else:
        url = authorize_url(broker.issuer, **public(params))
        response = follow_until(browser, url, redirect_uri.split("?")[0])
    assert response.status_code in (302, 303), (response.status_code, response.text[:300])
    query = query_of(response.headers["Location"])
    assert "code" in query, query
    if "state" in params:
        assert query["state"] == params["state"]
    assert query["iss"] == broker.issuer
    return Login(client_id, params, query)


def redeem(broker: Broker, login: Login, **overrides: Any) -> requests.Response:
    data = {
        "grant_type": "authorization_code",
        "code": login.code,
        "redirect_uri": login.params.get("redirect_uri")
        or redirect_uri_of(broker, login.client_id),
        "code_verifier": login.verifier,
    }
    data.update(overrides)
    client_id = data.pop("_client_id", login.client_id)
    return token_post(broker, client_id, {k: v for k, v in data.items() if v is not None})


def full_login(
    broker: Broker,
    emulator: Emulator,
    client_id: str = "rp-basic",
    user: str = U1,
    browser: requests.Session | None = None,
    method: str = "GET",
    **overrides: Any,
) -> Login:
    """Authorize, redeem and verify the ID token; assert the happy path all the way."""
    login = authorize_code(broker, emulator, client_id, user, browser, method, **overrides)
    response = redeem(broker, login)
    assert response.status_code == 200, response.text
    login.token_response = response
    login.tokens = response.json()
    login.claims = verify_id_token(broker, login.tokens["id_token"], client_id)
    if "nonce" in login.params:
        assert login.claims["nonce"] == login.params["nonce"]
    else:
        assert "nonce" not in login.claims
    return login


def userinfo(broker: Broker, access_token: str, method: str = "GET") -> requests.Response:
    headers = {"Authorization": f"Bearer {access_token}"}
    return requests.request(method, f"{broker.issuer}/userinfo", headers=headers, timeout=TIMEOUT)


def refresh(broker: Broker, client_id: str, refresh_token: str, **extra: str) -> requests.Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra}
    return token_post(broker, client_id, data)


def silent_authorize(
    broker: Broker, browser: requests.Session, client_id: str = "rp-basic", **overrides: Any
) -> tuple[dict[str, Any], requests.Response]:
    """A ``prompt=none`` request in ``browser``: answered by the broker session alone."""
    params = auth_params(broker, client_id, prompt="none", **overrides)
    return params, get(browser, authorize_url(broker.issuer, **public(params)))


def qq_logins(emulator: Emulator) -> int:
    return [r["endpoint"] for r in emulator.requests()].count("authorize")


# --------------------------------------------------------------------------- listener


@dataclass
class Listener:
    """A local HTTP server that records every request (SSRF canary, framing host)."""

    served: ServedApp
    hits: list[str]

    @property
    def url(self) -> str:
        return self.served.url


def start_listener(name: str, extra_routes: Callable[[Flask], None] | None = None) -> Listener:
    """Record every request not served by ``extra_routes``; answers an empty JWKS."""
    hits: list[str] = []
    lock = threading.Lock()
    app = Flask(name)
    if extra_routes is not None:
        extra_routes(app)

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "HEAD"])
    @app.route("/<path:path>", methods=["GET", "POST", "HEAD"])
    def record(path: str) -> tuple[str, int, dict[str, str]]:
        with lock:
            hits.append(f"{request.method} /{path}")
        body = json.dumps({"keys": []})
        return body, 200, {"Content-Type": "application/json"}

    return Listener(serve(app), hits)


@pytest.fixture(scope="module")
def listener_server() -> Iterator[Listener]:
    listener = start_listener("ssrf-canary")
    yield listener
    listener.served.stop()


@pytest.fixture
def listener(listener_server: Listener) -> Listener:
    listener_server.hits.clear()
    return listener_server


# --------------------------------------------------------------------------- dedicated broker


SHORT_LIFETIMES = {
    "code": 2,
    "login": 2,
    "access_token": 2,
    "refresh_idle": 2,
    "refresh_absolute": 600,
}


@pytest.fixture(scope="module")
def short(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A broker with 2-second lifetimes and a client whose secret needs URL-encoding."""
    clients = [
        *client_definitions(),
        {
            "client_id": "rp-special",
            "client_secret": SPECIAL_SECRET,
            "redirect_uris": [f"{RP}/special/callback"],
        },
    ]
    pair = start_pair(tmp_path_factory.mktemp("short"), lifetimes=SHORT_LIFETIMES, clients=clients)
    yield pair
    pair.stop()


def broker_key_pem(broker: Broker, alg: str = "RS256") -> bytes:
    """The broker's own private signing key, read from its key directory.

    Only used as a test oracle to build tokens that carry a *valid* broker signature
    with a hostile detail (foreign ``iss``, ``crit``), so that the check under test is
    the one that must refuse them and not the signature check.
    """
    return Path(broker.config.keys.dir, f"{alg.lower()}.pem").read_bytes()


@dataclass
class BrokerProcess:
    """``qq-oidc-broker serve`` in its own process (so its memory can be measured alone)."""

    process: subprocess.Popen[bytes]
    broker: Broker
    emulator: Emulator

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[BrokerProcess]:
    port, app_key = free_port(), secrets.token_hex(16)
    issuer = f"http://127.0.0.1:{port}"
    emulator = Emulator(
        serve(
            create_emulator_app(
                EmulatorSettings(
                    app_id=APP_ID, app_key=app_key, callbacks=[f"{issuer}/qq/callback"]
                )
            )
        )
    )
    clients = [c for c in client_definitions() if c["client_id"] == "rp-refresh"]
    data: dict[str, Any] = {
        "issuer": issuer,
        # One process: rss_mb() measures the serve PID, which must be the one serving.
        "server": {"host": "127.0.0.1", "port": port, "workers": 1},
        "storage": {"url": "sqlite:///broker.sqlite3"},
        "keys": {"dir": "keys"},
        "upstream": {"qq": {"app_id": APP_ID, "app_key": app_key, "base_url": emulator.url}},
        "rate_limits": {"enabled": False},
        "clients": clients,
    }
    config_file = tmp_path / "config.json.yaml"
    config_file.write_text(json.dumps(data), encoding="utf-8")  # JSON is YAML
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "serve", "--config", str(config_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{issuer}/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert process.poll() is None and time.monotonic() < deadline, "broker did not start"
            time.sleep(0.1)
        config = parse_config(data, source="<broker_process>", base_dir=tmp_path)
        clients_info = {
            c.client_id: {"client_secret": c.client_secret, "redirect_uri": c.redirect_uris[0]}
            for c in config.clients
        }
        # Broker.served is only used to stop in-process brokers; this one is a process.
        yield BrokerProcess(process, Broker(emulator.served, config, clients_info), emulator)
    finally:
        process.terminate()
        process.wait(timeout=10)
        emulator.served.stop()
