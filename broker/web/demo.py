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
SESSION_TTL = 3600
LOCALES = ("zh-CN", "en")
#: Remembers a language picked with ``?ui_locales=`` on the demo's own pages.
LOCALE_COOKIE = "demo_ui_locales"

#: The demo's own words. It is a stand-alone relying party, so it has its own texts
#: rather than the broker's message catalogue.
TEXTS: dict[str, dict[str, str]] = {
    "zh-CN": {
        "title": "QQ 登录演示",
        "language": "语言",
        "heading": "演示应用",
        "intro_before": "这是一个普通的 OpenID Connect 应用，它对 QQ 一无所知，只通过 ",
        "intro_after": " 发现登录服务。",
        "login": "使用 QQ 登录",
        "login_again": "再次登录",
        "logout": "退出登录",
        "verified": "ID 令牌签名已用发布的 JWKS 验证通过。",
        "you_are": "您已登录",
        "no_nickname": "（无昵称）",
        "header": "ID 令牌头部",
        "claims": "ID 令牌声明",
        "signed_out": "您已退出登录。",
        "failed": "登录失败。",
        "access_denied": "您取消了 QQ 登录，或拒绝了授权。",
        "temporarily_unavailable": "QQ 登录暂时不可用，请稍后再试。",
        "server_error": "登录服务出错，未能完成登录。请稍后再试。",
        "no_pending": "本浏览器中没有进行中的登录，请重新开始。",
        "verification": "登录结果未通过校验，已被拒绝。",
    },
    "en": {
        "title": "QQ login demo",
        "language": "Language",
        "heading": "Demo relying party",
        "intro_before": "A plain OpenID Connect relying party: it knows nothing of QQ "
        "and finds the login service through ",
        "intro_after": ".",
        "login": "Login with QQ",
        "login_again": "Log in again",
        "logout": "Log out",
        "verified": "ID token signature verified against the published JWKS.",
        "you_are": "You are signed in",
        "no_nickname": "(no nickname)",
        "header": "ID token header",
        "claims": "ID token claims",
        "signed_out": "You are signed out.",
        "failed": "Login failed.",
        "access_denied": "You cancelled the QQ login or refused access.",
        "temporarily_unavailable": "QQ login is unavailable at the moment. Please try again later.",
        "server_error": "The login service ran into a problem and could not sign you in. "
        "Please try again later.",
        "no_pending": "No login is pending in this browser; start again.",
        "verification": "The login response failed verification and was refused.",
    },
}


def pick_locale(ui_locales: str | None, accepted: list[str]) -> str | None:
    """The first supported language among ``ui_locales`` then Accept-Language, if any."""
    for tag in [*(ui_locales or "").split(), *accepted]:
        lowered = tag.lower()
        if lowered.startswith("zh"):
            return "zh-CN"
        if lowered.startswith("en"):
            return "en"
    return None


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

    def begin(self, locale: str) -> tuple[str, str]:
        """A fresh authorization request; returns (browser key, authorize URL).

        ``ui_locales`` (OIDC Core §3.1.2.1) asks the broker to speak the demo's language.
        """
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
            "ui_locales": locale,
        }
        return key, requests.Request(
            "GET", meta["authorization_endpoint"], params=params
        ).prepare().url or ""

    def finish(self, key: str | None, args: dict[str, str]) -> dict[str, Any]:
        """Check the response, redeem the code, verify the ID token, call userinfo."""
        with self._lock:
            pending = self._pending.pop(key or "", None)
        if pending is None:
            raise DemoError("No login is pending in this browser; start again.", "no_pending")
        if args.get("state") != pending["state"]:
            raise DemoError("The state does not match (possible CSRF).")
        if args.get("iss") != self.issuer:
            raise DemoError("The iss parameter does not match the issuer (RFC 9207).")
        if "error" in args:
            raise DemoError(
                f"The provider answered: {args['error']}: {args.get('error_description', '')}",
                args["error"],
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
        return {
            "header": header,
            "claims": claims,
            "userinfo": userinfo,
            "kid": signing_key.key_id,
            "id_token": id_token,
        }

    def logout_url(self, id_token: str, locale: str, post_logout_redirect_uri: str | None) -> str:
        """RP-Initiated Logout 1.0 §2: the hint lets the broker skip its confirmation page."""
        params = {"id_token_hint": id_token, "client_id": self.client_id, "ui_locales": locale}
        if post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = post_logout_redirect_uri
        endpoint = self.discover()["end_session_endpoint"]
        return requests.Request("GET", endpoint, params=params).prepare().url or ""


class DemoError(Exception):
    """Something in the response failed verification; shown on the page.

    ``kind`` picks the sentence the user reads (an OAuth ``error`` code, or one of the
    demo's own keys); the exception text is the technical detail shown beneath it.
    """

    def __init__(self, detail: str, kind: str = "verification") -> None:
        super().__init__(detail)
        self.kind = kind


def create_demo_app(
    issuer: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    post_logout_redirect_uri: str | None = None,
) -> Flask:
    """The demo RP's pages: home, login, callback, logout (and where logout returns).

    ``post_logout_redirect_uri`` must be registered for the client at the broker; without
    it, logout ends on the broker's own "signed out" page.
    """
    rp = DemoRelyingParty(issuer, client_id, client_secret, redirect_uri)
    sessions: dict[str, dict[str, Any]] = {}
    lock = threading.Lock()
    app = Flask(__name__, template_folder="templates", static_folder=None)
    # The shared stylesheet, under the same endpoint name the templates use.
    app.register_blueprint(Blueprint("web", __name__, static_folder="static"))

    def locale() -> str:
        """``?ui_locales=`` (remembered in a cookie), then Accept-Language, else English:
        the demo is read by the developer trying the broker out."""
        accepted = list(request.accept_languages.values())
        return (
            pick_locale(request.args.get("ui_locales"), [])
            or pick_locale(request.cookies.get(LOCALE_COOKIE), [])
            or pick_locale(None, accepted)
            or "en"
        )

    def page(status: int = 200, **context: Any) -> Response:
        chosen = context.pop("locale", None) or locale()
        defaults: dict[str, Any] = {"result": None, "error": None, "signed_out": False}
        body = render_template(
            "demo.html", locale=chosen, t=TEXTS[chosen], issuer=issuer, **{**defaults, **context}
        )
        response = Response(body, status=status, mimetype="text/html")
        picked = pick_locale(request.args.get("ui_locales"), [])
        if picked:
            response.set_cookie(LOCALE_COOKIE, picked, samesite="Lax", max_age=SESSION_TTL)
        return response

    def current_session() -> dict[str, Any] | None:
        key = request.cookies.get("demo_session", "")
        with lock:
            found = sessions.get(key)
            if found is not None and time.time() - found["created"] > SESSION_TTL:
                del sessions[key]
                found = None
        return found

    @app.get("/")
    def index() -> Response:
        session = current_session()
        if session is None:
            return page()
        return page(result=session["pretty"], kid=session["kid"], summary=session["summary"])

    @app.get("/login")
    def login() -> Response:
        key, url = rp.begin(locale())
        response = Response(status=302, headers={"Location": url})
        response.set_cookie("demo_rp", key, httponly=True, samesite="Lax", max_age=PENDING_TTL)
        return response

    @app.get("/callback")
    def callback() -> Response:
        args = {k: v for k, v in request.args.items()}
        try:
            result = rp.finish(request.cookies.get("demo_rp"), args)
        except (DemoError, jwt.PyJWTError, requests.RequestException, ValueError) as err:
            kind = err.kind if isinstance(err, DemoError) else "verification"
            texts = TEXTS[locale()]
            error = {"text": texts.get(kind, texts["failed"]), "detail": str(err)}
            return page(400, error=error)
        claims = result["claims"]
        session = {
            "created": time.time(),
            "id_token": result["id_token"],
            "kid": result["kid"],
            "pretty": {
                k: json.dumps(result[k], ensure_ascii=False, indent=2)
                for k in ("header", "claims", "userinfo")
            },
            "summary": {
                "sub": claims.get("sub", ""),
                "nickname": claims.get("nickname") or result["userinfo"].get("nickname", ""),
                "iss": claims.get("iss", ""),
                "aud": " ".join(aud) if isinstance(aud := claims.get("aud", ""), list) else aud,
            },
        }
        key = secrets.token_urlsafe(24)
        with lock:
            now = time.time()
            for old in [k for k, v in sessions.items() if now - v["created"] > SESSION_TTL]:
                del sessions[old]
            sessions[key] = session
        # Post/Redirect/Get: the code leaves the address bar and a reload shows the result.
        response = Response(status=303, headers={"Location": "/"})
        response.set_cookie("demo_session", key, httponly=True, samesite="Lax", max_age=SESSION_TTL)
        response.delete_cookie("demo_rp")
        return response

    @app.post("/logout")
    def logout() -> Response:
        """End the demo's session, then the broker's (RP-Initiated Logout)."""
        key = request.cookies.get("demo_session", "")
        with lock:
            session = sessions.pop(key, None)
        target = "/"
        if session is not None:
            target = rp.logout_url(session["id_token"], locale(), post_logout_redirect_uri)
        response = Response(status=303, headers={"Location": target})
        response.delete_cookie("demo_session")
        return response

    @app.get("/logged-out")
    def logged_out() -> Response:
        """Where the broker sends the browser back when ``post_logout_redirect_uri`` is set."""
        return page(signed_out=True)

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Cache-Control"] = "no-store"
        # The logout form posts here and is redirected to the broker's end-session endpoint.
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; img-src 'self' https: data:; "
            f"form-action 'self' {issuer}; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    return app
