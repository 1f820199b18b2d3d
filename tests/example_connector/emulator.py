"""The example upstream: a plain OAuth 2.0 server (RFC 6749) in a few dozen lines of Flask.

``/authorize`` logs in whoever ``/control`` names (``{"user": null}`` plays a user who
cancels: ``error=access_denied``), ``/token`` redeems single-use codes and rotating
single-use refresh tokens (client_secret_basic), ``/userinfo`` answers a bearer token,
``/revoke-all`` kills every token (a user revoking the app upstream).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, redirect, request

USERS: Mapping[str, Mapping[str, str]] = {
    "alice": {"sub": "u-1001", "name": "Alice", "picture": "https://img.example.test/alice.png"},
    "bob": {"sub": "u-1002", "name": "Bob", "picture": "https://img.example.test/bob.png"},
}


def create_example_upstream(
    *, client_id: str, client_secret: str, redirect_uris: Sequence[str]
) -> Flask:
    app = Flask("example-upstream")
    lock = threading.Lock()
    current: dict[str, str | None] = {"user": "alice"}
    codes: dict[str, tuple[str, str]] = {}  # code -> (user, redirect_uri)
    access: dict[str, str] = {}  # access token -> user
    refresh: dict[str, str] = {}  # refresh token -> user

    def error(code: str, status: int = 400) -> tuple[Response, int]:
        return jsonify(error=code), status

    @app.post("/control")
    def control() -> dict[str, Any]:
        user = (request.get_json() or {}).get("user")
        if user is not None and user not in USERS:
            return {"error": f"unknown user {user!r}"}
        current["user"] = user
        return {"user": user}

    @app.post("/revoke-all")
    def revoke_all() -> dict[str, Any]:
        """Every issued token dies: what a user revoking the app upstream looks like."""
        with lock:
            access.clear()
            refresh.clear()
        return {}

    @app.get("/authorize")
    def authorize() -> Any:
        args = request.args
        redirect_uri = args.get("redirect_uri", "")
        if args.get("client_id") != client_id or redirect_uri not in redirect_uris:
            return "unknown client or redirect_uri", 400  # never redirect to an unknown URI
        user = current["user"]
        query = {"state": args.get("state", "")}
        if user is None:
            query["error"] = "access_denied"
        else:
            code = secrets.token_urlsafe(16)
            with lock:
                codes[code] = (user, redirect_uri)
            query["code"] = code
        return redirect(f"{redirect_uri}?{urlencode(query)}")

    @app.post("/token")
    def token() -> Any:
        auth = request.authorization
        if auth is None or (auth.username, auth.password) != (client_id, client_secret):
            return error("invalid_client", 401)
        form = request.form
        with lock:
            if form.get("grant_type") == "authorization_code":
                user, bound = codes.pop(form.get("code", ""), (None, None))
                if bound != form.get("redirect_uri"):
                    user = None
            elif form.get("grant_type") == "refresh_token":
                user = refresh.pop(form.get("refresh_token", ""), None)
            else:
                return error("unsupported_grant_type")
            if user is None:
                return error("invalid_grant")
            access_token, refresh_token = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            access[access_token], refresh[refresh_token] = user, user
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "refresh_token": refresh_token,
        }

    @app.get("/userinfo")
    def userinfo() -> Any:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        user = access.get(value) if scheme.lower() == "bearer" else None
        if user is None:
            return error("invalid_token", 401)
        return dict(USERS[user])

    return app
