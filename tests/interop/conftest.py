"""Shared pieces of the interop suite: third-party relying parties against a real broker.

Every test here drives an implementation the project does not control (openid-client,
mod_auth_openidc, Authlib's Flask client, pyoidc) through the whole flow, with the QQ
emulator upstream logging the user in by itself (``auto_login``). The browser is a
``requests`` cookie jar that follows redirects one at a time, so each hop is visible.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import Pair
from tests.flows import MAX_HOPS, query_of

#: The emulator user every interop login uses (张三 in broker/emulator/default_users.yaml).
USER = "zhangsan"
NICKNAME = "张三"


def require_tool(name: str, why: str) -> str:
    """The tool's path, or a skip naming what to install (under CI=true a skip fails the run)."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found: {why}")
    return found


def walk(
    browser: requests.Session, url: str, stop: Callable[[str], bool] | None = None
) -> tuple[requests.Response, list[str]]:
    """Follow redirects by hand like a browser; stop before a Location for which ``stop`` is true.

    Returns the last response and every URL requested, so a test can say which
    servers the login passed through.
    """
    visited = [url]
    response = browser.get(url, allow_redirects=False, timeout=30)
    for _ in range(MAX_HOPS * 2):
        location = response.headers.get("Location")
        if response.status_code not in (301, 302, 303, 307) or not location:
            return response, visited
        location = requests.compat.urljoin(response.url, location)
        if stop is not None and stop(location):
            return response, visited
        visited.append(location)
        response = browser.get(location, allow_redirects=False, timeout=30)
    raise AssertionError(f"too many redirects: {visited}")


def prompt_none_gets_code(
    browser: requests.Session, pair: Pair, client_id: str, redirect_uri: str
) -> bool:
    """True when the broker still knows this browser: with ``prompt=none`` it answers with a
    code only if its SSO session is alive (OIDC Core §3.1.2.1), else ``login_required``."""
    params: dict[str, Any] = {
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": redirect_uri,
        "scope": "openid",
        "state": "probe",
        "nonce": "probe",
        "prompt": "none",
        # PKCE: S256 of the RFC 7636 appendix B verifier, so the broker never refuses the probe.
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGrSstw-cM",
        "code_challenge_method": "S256",
    }
    response = browser.get(
        f"{pair.broker.issuer}/authorize", params=params, allow_redirects=False, timeout=10
    )
    location = response.headers.get("Location", "")
    assert location.startswith(redirect_uri), (response.status_code, response.text[:300])
    return "code" in query_of(location)


def wait_for_http(url: str, attempts: int = 100) -> None:
    """Poll until ``url`` answers at all (a server process is up); bounded in count."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            requests.get(url, timeout=2, allow_redirects=False)
            return
        except requests.ConnectionError as err:
            last = err
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered: {last}")
