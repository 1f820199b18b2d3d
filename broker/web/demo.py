"""The dev-mode demo relying party: a plain OIDC client that knows nothing of QQ.

It uses only HTTP and PyJWT, never the broker's own code, so what it shows
(discovery, code + PKCE + nonce, a verified ID token, userinfo) is what any
standard relying party would see.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from typing import Any

import jwt
import requests
from flask import Blueprint, Flask, Response, render_template, request

PENDING_TTL = 600


class DemoRelyingParty:
    """State for one demo RP: pending logins keyed by a browser cookie."""

    def __init__(self, issuer: str, client_id: str, client_secret: str, redirect_uri: str) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.http = requests.Session()
        self._pending: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def discover(self) -> dict[str, Any]:
        url = f"{self.issuer}/.well-known/openid-configuration"
        document: dict[str, Any] = self.http.get(url, timeout=5).json()
        return document

    def begin(self) -> tuple[str, str]:
        """A fresh authorization request; returns (browser key, authorize URL)."""
        meta = self.discover()
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        pending = {
            "state": secrets.token_urlsafe(16),
            "nonce": secrets.token_urlsafe(16),
            "verifier": verifier,
            "created": time.time(),
        }
        key = secrets.token_urlsafe(16)
        with self._lock:
            now = time.time()
            for old in [k for k, v in self._pending.items() if now - v["created"] > PENDING_TTL]:
                del self._pending[old]
            self._pending[key] = pending
        params = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": "openid profile",
            "state": pending["state"],
            "nonce": pending["nonce"],
            "code_challenge": challenge.rstrip(b"=").decode(),
            "code_challenge_method": "S256",
        }
        return key, requests.Request(
            "GET", meta["authorization_endpoint"], params=params
        ).prepare().url or ""

    def finish(self, key: str | None, args: dict[str, str]) -> dict[str, Any]:
        """Check the response, redeem the code, verify the ID token, call userinfo."""
        with self._lock:
            pending = self._pending.pop(key or "", None)
        if pending is None:
            raise DemoError("No login is pending in this browser; start again.")
        if args.get("state") != pending["state"]:
            raise DemoError("The state does not match (possible CSRF).")
        if args.get("iss") != self.issuer:
            raise DemoError("The iss parameter does not match the issuer (RFC 9207).")
        if "error" in args:
            raise DemoError(
                f"The provider answered: {args['error']}: {args.get('error_description', '')}"
            )
        meta = self.discover()
        token_response = self.http.post(
            meta["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": args.get("code", ""),
                "redirect_uri": self.redirect_uri,
                "code_verifier": pending["verifier"],
            },
            auth=(self.client_id, self.client_secret),
            timeout=10,
        )
        tokens = token_response.json()
        if "id_token" not in tokens:
            raise DemoError(
                f"The token endpoint answered: {tokens.get('error', token_response.status_code)}"
            )
        id_token = tokens["id_token"]
        header = jwt.get_unverified_header(id_token)
        signing_key = jwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(id_token)
        claims = jwt.decode(
            id_token,
            signing_key.key,
            algorithms=meta["id_token_signing_alg_values_supported"],
            audience=self.client_id,
            issuer=self.issuer,
        )
        if claims.get("nonce") != pending["nonce"]:
            raise DemoError("The nonce in the ID token does not match.")
        userinfo = self.http.get(
            meta["userinfo_endpoint"],
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
            timeout=10,
        ).json()
        return {"header": header, "claims": claims, "userinfo": userinfo, "kid": signing_key.key_id}


class DemoError(Exception):
    """Something in the response failed verification; shown on the page."""


def create_demo_app(issuer: str, client_id: str, client_secret: str, redirect_uri: str) -> Flask:
    rp = DemoRelyingParty(issuer, client_id, client_secret, redirect_uri)
    app = Flask(__name__, template_folder="templates", static_folder=None)
    # The shared stylesheet, under the same endpoint name the templates use.
    app.register_blueprint(Blueprint("web", __name__, static_folder="static"))

    @app.get("/")
    def index() -> str:
        return render_template("demo.html", locale="zh-CN", result=None, error=None, issuer=issuer)

    @app.get("/login")
    def login() -> Response:
        key, url = rp.begin()
        response = Response(status=302, headers={"Location": url})
        response.set_cookie("demo_rp", key, httponly=True, samesite="Lax", max_age=PENDING_TTL)
        return response

    @app.get("/callback")
    def callback() -> tuple[str, int]:
        args = {k: v for k, v in request.args.items()}
        try:
            result = rp.finish(request.cookies.get("demo_rp"), args)
        except (DemoError, jwt.PyJWTError, requests.RequestException, ValueError) as err:
            page = render_template(
                "demo.html", locale="zh-CN", result=None, error=str(err), issuer=issuer
            )
            return page, 400
        pretty = {
            k: json.dumps(v, ensure_ascii=False, indent=2) for k, v in result.items() if k != "kid"
        }
        return render_template(
            "demo.html", locale="zh-CN", result=pretty, kid=result["kid"], error=None, issuer=issuer
        ), 200

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; frame-ancestors 'none'"
        )
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return app
