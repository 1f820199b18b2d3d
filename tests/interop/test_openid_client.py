"""panva's openid-client (npm, v6) as the relying party: interop issue point 1.

``node/rp.mjs`` does the RP's part with openid-client alone (discovery, code + PKCE +
nonce + state, ID token validation, userinfo, refresh, revocation, end-session URL);
this test is the browser in between and checks what the RP reports. openid-client
throws on any deviation (issuer mismatch, missing RFC 9207 ``iss``, wrong ``alg``,
``nonce`` or ``aud``, userinfo ``sub`` mismatch), so a completed run is itself the main check.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import RP, Pair, start_pair
from tests.flows import query_of
from tests.interop.conftest import NICKNAME, USER, prompt_none_gets_code, require_tool, walk

NODE_DIR = Path(__file__).parent / "node"
CLIENT_ID = "openid-client"
ALGORITHMS = ("RS256", "ES256", "EdDSA")
REDIRECT_URI = f"{RP}/openid-client/callback"
LOGGED_OUT = f"{RP}/openid-client/logged-out"
TIMEOUT = 60  # seconds for one node step; generous, never part of an assertion


def pinned_version() -> str:
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    version: str = lock["packages"]["node_modules/openid-client"]["version"]
    return version


def installed_version() -> str | None:
    manifest = NODE_DIR / "node_modules" / "openid-client" / "package.json"
    if not manifest.exists():
        return None
    version: str = json.loads(manifest.read_text())["version"]
    return version


@pytest.fixture(scope="module")
def node() -> str:
    """Node with the locked openid-client installed (``npm ci`` when it is missing or stale)."""
    node = require_tool("node", "install Node.js 20+ (the machine image has it)")
    npm = require_tool("npm", "install npm (ships with Node.js)")
    if installed_version() != pinned_version():
        subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            check=True,
            timeout=600,
        )
    assert installed_version() == pinned_version()
    return node


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    clients = [
        {
            "client_id": client_id(alg),
            "client_secret": secrets.token_urlsafe(32),
            "redirect_uris": [REDIRECT_URI],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "refresh_token"],
            "post_logout_redirect_uris": [LOGGED_OUT],
            "id_token_signed_response_alg": alg,
        }
        for alg in ALGORITHMS
    ]
    started = start_pair(tmp_path_factory.mktemp("openid-client"), clients=clients)
    yield started
    started.stop()


def client_id(alg: str) -> str:
    """One broker client per ID token algorithm, each registered with that algorithm."""
    return CLIENT_ID if alg == "RS256" else f"{CLIENT_ID}-{alg.lower()}"


class NodeRP:
    """The rp.mjs process: one JSON line out, the callback URL in, the summary out."""

    def __init__(self, node: str, pair: Pair, alg: str) -> None:
        env = {
            **os.environ,
            "ISSUER": pair.broker.issuer,
            "CLIENT_ID": client_id(alg),
            "CLIENT_SECRET": pair.broker.clients[client_id(alg)]["client_secret"],
            "ID_TOKEN_ALG": alg,
            "REDIRECT_URI": REDIRECT_URI,
            "POST_LOGOUT_REDIRECT_URI": LOGGED_OUT,
            "SCOPE": "openid profile offline_access",
        }
        self.process = subprocess.Popen(
            [node, str(NODE_DIR / "rp.mjs")],
            cwd=NODE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        # A hang guard, not a timing check: rp.mjs prints one line per step.
        ready, _, _ = select.select([self.process.stdout], [], [], TIMEOUT)
        if not ready:
            self.kill()
            raise AssertionError(f"rp.mjs printed nothing for {TIMEOUT}s")
        line = self.process.stdout.readline()
        if not line:
            _, err = self.process.communicate(timeout=TIMEOUT)
            raise AssertionError(f"rp.mjs ended without output: {err}")
        message: dict[str, Any] = json.loads(line)
        assert "error" not in message, message["error"]
        return message

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=TIMEOUT)
        assert self.process.returncode == 0

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=TIMEOUT)


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_openid_client_full_flow(node: str, pair: Pair, alg: str) -> None:
    pair.emulator.control(auto_login=USER)
    rp = NodeRP(node, pair, alg)
    try:
        authorization_url = rp.read()["authorization_url"]
        request = query_of(authorization_url)
        assert authorization_url.startswith(f"{pair.broker.issuer}/authorize?")
        assert request["code_challenge_method"] == "S256" and request["nonce"]

        # The browser: broker → emulator (auto_login) → broker callback → RP redirect URI.
        browser = requests.Session()
        response, visited = walk(browser, authorization_url, lambda u: u.startswith(REDIRECT_URI))
        assert any(u.startswith(pair.emulator.url) for u in visited), visited
        callback = response.headers["Location"]
        assert callback.startswith(REDIRECT_URI)
        rp.send(callback)
        summary = rp.read()
        rp.finish()
    finally:
        rp.kill()

    openid = pair.emulator.user(USER)["openid"]
    assert summary["discovery"]["issuer"] == pair.broker.issuer
    assert summary["token_type"].lower() == "bearer"
    assert summary["has_refresh_token"] is True
    assert summary["id_token_alg"] == alg

    claims = summary["claims"]
    assert claims["sub"] == openid
    assert claims["iss"] == pair.broker.issuer
    assert claims["nonce"] == summary["nonce"]
    assert claims["nickname"] == NICKNAME
    assert summary["userinfo"]["sub"] == openid
    assert summary["userinfo"]["nickname"] == NICKNAME

    refresh = summary["refresh"]
    assert refresh["has_access_token"] and refresh["access_token_changed"] and refresh["rotated"]
    assert refresh["claims"] is not None and refresh["claims"]["sub"] == openid
    assert refresh["userinfo"]["sub"] == openid

    revocation = summary["revocation"]
    assert revocation["introspection_active"] is False
    refused = revocation["refresh_after_revocation"]
    assert refused["ok"] is False and refused["error"]["error"] == "invalid_grant", refused

    # RP-initiated logout with the URL openid-client built: no confirmation (valid hint,
    # same browser), straight back with the state, and the broker session is gone.
    end_session_url = summary["logout"]["end_session_url"]
    assert end_session_url.startswith(summary["discovery"]["end_session_endpoint"])
    assert prompt_none_gets_code(browser, pair, client_id(alg), REDIRECT_URI)
    response = browser.get(end_session_url, allow_redirects=False, timeout=10)
    assert response.status_code in (302, 303), response.text[:300]
    back = response.headers["Location"]
    assert back.startswith(LOGGED_OUT)
    assert query_of(back)["state"] == summary["logout"]["state"]
    assert not prompt_none_gets_code(browser, pair, client_id(alg), REDIRECT_URI)
