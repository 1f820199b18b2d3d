"""Python relying parties: interop issue point 4.

- Authlib's Flask client (``authlib.integrations.flask_client.OAuth``) in a small Flask
  app served on 127.0.0.1, walked by a cookie jar from ``/login`` to the page that shows
  the verified ID token claims, then RP-initiated logout with Authlib's own state check.
- pyoidc (PyPI ``oic``, the OpenID Foundation certified Python RP library): discovery
  with ``provider_config``, its own ID token verification (signature against the JWKS it
  fetched, ``iss``, ``aud``, ``exp``, ``nonce``), userinfo, refresh and end-session.

Both libraries only read the broker's discovery document: no endpoint is configured by hand.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from authlib.integrations.flask_client import OAuth, OAuthError
from flask import Flask, jsonify, redirect, session, url_for
from flask.typing import ResponseReturnValue

from tests.conftest import RP, Pair, start_pair
from tests.flows import query_of
from tests.interop.conftest import NICKNAME, USER, prompt_none_gets_code, walk
from tests.servers import ServedApp, free_port, serve

AUTHLIB_CLIENT = "authlib-flask"
PYOIDC_CLIENT = "pyoidc"
PYOIDC_REDIRECT = f"{RP}/pyoidc/callback"  # parsed by the test, never followed
PYOIDC_LOGGED_OUT = f"{RP}/pyoidc/logged-out"


def jws_header(token: str) -> dict[str, Any]:
    """A compact JWS's protected header (already verified by the library that received it)."""
    segment = token.split(".")[0]
    padded = segment + "=" * (-len(segment) % 4)
    header: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return header


def authlib_app(issuer: str, client_id: str, client_secret: str, base: str) -> Flask:
    """The relying party, written as an application would (docs/recipes/flask-authlib.md)."""
    app = Flask("authlib-rp")
    app.secret_key = secrets.token_hex(32)
    # Same host as the broker in tests (cookies ignore ports): a name of its own.
    app.config["SESSION_COOKIE_NAME"] = "authlib_rp_session"
    oauth = OAuth(app)
    oauth.register(
        name="broker",
        client_id=client_id,
        client_secret=client_secret,
        server_metadata_url=f"{issuer}/.well-known/openid-configuration",
        client_kwargs={
            "scope": "openid profile",
            "code_challenge_method": "S256",
            "token_endpoint_auth_method": "client_secret_basic",
        },
    )
    broker = oauth.create_client("broker")

    @app.get("/login")
    def login() -> ResponseReturnValue:
        response: ResponseReturnValue = broker.authorize_redirect(f"{base}/callback")
        return response

    @app.get("/callback")
    def callback() -> ResponseReturnValue:
        try:
            # Checks state, sends the PKCE verifier, verifies the ID token (JWKS, iss,
            # aud, exp, nonce, at_hash) and puts its claims in token["userinfo"].
            token = broker.authorize_access_token()
        except OAuthError as err:
            return jsonify(error=err.error, description=err.description), 400
        session["id_token"] = token["id_token"]
        userinfo = broker.userinfo(token=token)
        return jsonify(
            claims=dict(token["userinfo"]),
            userinfo=dict(userinfo),
            alg=jws_header(token["id_token"])["alg"],
        )

    @app.get("/logout")
    def logout() -> ResponseReturnValue:
        response: ResponseReturnValue = broker.logout_redirect(
            post_logout_redirect_uri=f"{base}/logged-out", id_token_hint=session.pop("id_token")
        )
        return response

    @app.get("/logged-out")
    def logged_out() -> ResponseReturnValue:
        try:
            broker.validate_logout_response()  # the state Authlib sent must come back
        except OAuthError as err:
            return jsonify(error=err.description), 400
        return redirect(url_for("done"))

    @app.get("/done")
    def done() -> ResponseReturnValue:
        return "logged out"

    return app


@dataclass
class Setup:
    pair: Pair
    rp: ServedApp


ALGORITHMS = ("RS256", "ES256", "EdDSA")

# pyoidc's JOSE layer (pyjwkest) knows RSA and EC keys only: it skips the broker's OKP
# (Ed25519) key with a warning, so a pyoidc client cannot use EdDSA (docs/interop.md).
PYOIDC_ALGORITHMS = ("RS256", "ES256")


def authlib_client(alg: str) -> str:
    return AUTHLIB_CLIENT if alg == "RS256" else f"{AUTHLIB_CLIENT}-{alg.lower()}"


def pyoidc_client(alg: str) -> str:
    return PYOIDC_CLIENT if alg == "RS256" else f"{PYOIDC_CLIENT}-{alg.lower()}"


@pytest.fixture(scope="module")
def pair_and_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pair, int]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    clients: list[dict[str, Any]] = []
    for alg in ALGORITHMS:
        clients.append(
            {
                "client_id": authlib_client(alg),
                "client_secret": secrets.token_urlsafe(32),
                "redirect_uris": [f"{base}/{alg}/callback"],
                "post_logout_redirect_uris": [f"{base}/{alg}/logged-out"],
                "id_token_signed_response_alg": alg,
            }
        )
    for alg in PYOIDC_ALGORITHMS:
        clients.append(
            {
                "client_id": pyoidc_client(alg),
                "client_secret": secrets.token_urlsafe(32),
                "redirect_uris": [PYOIDC_REDIRECT],
                "token_endpoint_auth_method": "client_secret_basic",
                "grant_types": ["authorization_code", "refresh_token"],
                "post_logout_redirect_uris": [PYOIDC_LOGGED_OUT],
                "id_token_signed_response_alg": alg,
            }
        )
    pair = start_pair(tmp_path_factory.mktemp("python-rps"), clients=clients)
    yield pair, port
    pair.stop()


class Prefixed:
    """One WSGI server for the three Authlib apps: /RS256/..., /ES256/..., /EdDSA/..."""

    def __init__(self, apps: dict[str, Flask]) -> None:
        self.apps = apps

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        prefix = path.split("/")[1] if path.count("/") >= 2 else ""
        app = self.apps.get(prefix)
        if app is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        environ = {**environ, "SCRIPT_NAME": f"/{prefix}", "PATH_INFO": path[len(prefix) + 1 :]}
        return app(environ, start_response)


@pytest.fixture(scope="module")
def authlib_setup(pair_and_port: tuple[Pair, int]) -> Iterator[Setup]:
    pair, port = pair_and_port
    base = f"http://127.0.0.1:{port}"
    apps = {
        alg: authlib_app(
            pair.broker.issuer,
            authlib_client(alg),
            pair.broker.clients[authlib_client(alg)]["client_secret"],
            f"{base}/{alg}",
        )
        for alg in ALGORITHMS
    }
    served = serve(Prefixed(apps), port=port)
    yield Setup(pair, served)
    served.stop()


@pytest.mark.parametrize("alg", ALGORITHMS)
def test_authlib_flask_client(authlib_setup: Setup, alg: str) -> None:
    pair, base = authlib_setup.pair, f"{authlib_setup.rp.url}/{alg}"
    pair.emulator.control(auto_login=USER)
    browser = requests.Session()

    page, visited = walk(browser, f"{base}/login")
    assert page.status_code == 200, (visited, page.text[:500])
    assert any(u.startswith(pair.emulator.url) for u in visited), visited
    body = page.json()
    openid = pair.emulator.user(USER)["openid"]
    claims = body["claims"]
    assert claims["sub"] == openid
    assert claims["iss"] == pair.broker.issuer
    assert claims["nickname"] == claims["name"] == NICKNAME
    assert body["userinfo"]["sub"] == openid
    assert body["userinfo"]["nickname"] == NICKNAME
    assert body["alg"] == alg

    client_id, redirect_uri = authlib_client(alg), f"{base}/callback"
    assert prompt_none_gets_code(browser, pair, client_id, redirect_uri)
    done, visited = walk(browser, f"{base}/logout")
    assert done.status_code == 200 and done.text == "logged out", (visited, done.text[:300])
    assert any(u.startswith(f"{pair.broker.issuer}/logout?") for u in visited), visited
    assert not prompt_none_gets_code(browser, pair, client_id, redirect_uri)


@pytest.mark.parametrize("alg", PYOIDC_ALGORITHMS)
def test_pyoidc_client(pair_and_port: tuple[Pair, int], alg: str) -> None:
    from oic import rndstr
    from oic.oic import Client
    from oic.oic.message import (
        AccessTokenResponse,
        AuthorizationResponse,
        OpenIDSchema,
        RegistrationResponse,
    )
    from oic.utils.authn.client import CLIENT_AUTHN_METHOD

    pair, _ = pair_and_port
    client_id = pyoidc_client(alg)
    pair.emulator.control(auto_login=USER)

    client = Client(client_authn_method=CLIENT_AUTHN_METHOD)
    client.provider_config(pair.broker.issuer)  # discovery + JWKS into the key jar
    client.store_registration_info(
        RegistrationResponse(
            client_id=client_id,
            client_secret=pair.broker.clients[client_id]["client_secret"],
            redirect_uris=[PYOIDC_REDIRECT],
            id_token_signed_response_alg=alg,
        )
    )
    client.redirect_uris = [PYOIDC_REDIRECT]
    state, nonce = rndstr(32), rndstr(32)
    pkce, verifier = client.add_code_challenge()
    request = client.construct_AuthorizationRequest(
        request_args={
            "client_id": client_id,
            "response_type": "code",
            "scope": ["openid", "profile", "offline_access"],
            "redirect_uri": PYOIDC_REDIRECT,
            "state": state,
            "nonce": nonce,
            **pkce,
        }
    )
    authorization_url = request.request(client.authorization_endpoint)

    browser = requests.Session()
    response, visited = walk(browser, authorization_url, lambda u: u.startswith(PYOIDC_REDIRECT))
    assert any(u.startswith(pair.emulator.url) for u in visited), visited
    callback = response.headers["Location"]
    authorization = client.parse_response(
        AuthorizationResponse, info=callback.split("?", 1)[1], sformat="urlencoded"
    )
    assert authorization["state"] == state

    token = client.do_access_token_request(
        state=state,
        request_args={"code": authorization["code"], "code_verifier": verifier},
        authn_method="client_secret_basic",
    )
    assert isinstance(token, AccessTokenResponse)
    # pyoidc verified the signature, iss, aud and exp while parsing; nonce against the
    # request, and the rest once more explicitly, as an RP written with it would.
    id_token = token["id_token"]
    client.verify_id_token(id_token, request)
    openid = pair.emulator.user(USER)["openid"]
    assert id_token["sub"] == openid
    assert id_token["nonce"] == nonce
    assert id_token.jws_header["alg"] == alg
    assert id_token["nickname"] == NICKNAME

    # GET puts the token in the Authorization header (RFC 6750 §2.1, the form every
    # resource server must accept). pyoidc's default, POST, puts it in the form body
    # (§2.2, optional), which the broker does not read: docs/interop.md.
    userinfo = client.do_user_info_request(state=state, method="GET")
    assert isinstance(userinfo, OpenIDSchema)
    assert userinfo["sub"] == openid and userinfo["nickname"] == NICKNAME

    refreshed = client.do_access_token_refresh(state=state, authn_method="client_secret_basic")
    assert isinstance(refreshed, AccessTokenResponse)
    assert refreshed["id_token"]["sub"] == openid  # verified the same way
    assert refreshed["access_token"] != token["access_token"]

    assert prompt_none_gets_code(browser, pair, client_id, PYOIDC_REDIRECT)
    logout_state = rndstr(16)
    end_session = client.construct_EndSessionRequest(
        state=state,
        request_args={
            "post_logout_redirect_uri": PYOIDC_LOGGED_OUT,
            "state": logout_state,
        },
    )
    end_session_url = end_session.request(client.end_session_endpoint)
    response = browser.get(end_session_url, allow_redirects=False, timeout=10)
    back = response.headers.get("Location", "")
    assert back.startswith(PYOIDC_LOGGED_OUT), (response.status_code, response.text[:300])
    assert query_of(back)["state"] == logout_state
    assert not prompt_none_gets_code(browser, pair, client_id, PYOIDC_REDIRECT)
