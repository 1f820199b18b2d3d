"""The broker's endpoints. Each handler is thin: the provider does the protocol work."""

from __future__ import annotations

import hmac
import secrets

from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Response, current_app, jsonify, request

from broker.oidc.errors import BadAuthorizationRequest
from broker.oidc.provider import LoginStart, Provider, RedirectToClient
from broker.web.form_post import form_post_response
from broker.web.pages import (
    confirm_logout_page,
    error_page,
    logged_out_page,
    logout_confirmation,
)

bp = Blueprint("web", __name__, static_folder="static", template_folder="templates")

#: Binds a pending QQ login to the browser that started it (login CSRF, RFC 9700 §4.7).
BROWSER_COOKIE = "qqb_browser"


#: The broker's SSO session (a random secret; the database keeps only its digest).
SESSION_COOKIE = "qqb_session"


def cookie_name(name: str) -> str:
    """``__Host-`` in production: a sibling subdomain cannot plant or overwrite it.

    Browsers accept that prefix only on Secure cookies, so loopback (http)
    development uses the plain name.
    """
    return name if provider().ctx.config.is_development else f"__Host-{name}"


def browser_cookie_name() -> str:
    return cookie_name(BROWSER_COOKIE)


def set_cookie(response: Response, name: str, value: str, max_age: int | None = None) -> None:
    """HttpOnly, SameSite=Lax, Path=/, Secure unless development (checklist SS-03)."""
    response.set_cookie(
        cookie_name(name),
        value,
        max_age=max_age,
        httponly=True,
        samesite="Lax",
        secure=not provider().ctx.config.is_development,
        path="/",
    )


def provider() -> Provider:
    found: Provider = current_app.extensions["qq_oidc_broker"]
    return found


@bp.get("/.well-known/openid-configuration")
def discovery() -> Response:
    response = jsonify(provider().metadata)
    response.headers["Cache-Control"] = "public, max-age=300"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.get("/jwks.json")
def jwks() -> Response:
    response = jsonify(provider().jwks())
    # Key rotation publishes a new key keys.rotation.publish_ahead (>= this max-age plus
    # the instances' refresh interval) before it signs: RPs caching this long stay safe.
    max_age = provider().ctx.config.keys.jwks_max_age
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    browser_secret = _browser_secret()
    session_secret = request.cookies.get(cookie_name(SESSION_COOKIE))
    try:
        outcome = provider().start_login(browser_secret, session_secret)
    except BadAuthorizationRequest as err:
        return error_page(err.message_key, err.status, err.detail)
    if isinstance(outcome, RedirectToClient):
        return _to_client(outcome)
    assert isinstance(outcome, LoginStart)
    response = _redirect(outcome.upstream_url)
    set_cookie(response, BROWSER_COOKIE, browser_secret)
    return response


@bp.get("/qq/callback")
def qq_callback() -> Response:
    args = {key: request.args.getlist(key) for key in request.args}
    try:
        outcome = provider().finish_login(args, request.cookies.get(browser_cookie_name()))
    except BadAuthorizationRequest as err:
        provider().login_failed(err.message_key)
        return error_page(err.message_key, err.status, err.detail)
    response = _to_client(outcome)
    if outcome.session_secret:
        lifetime = provider().ctx.config.lifetimes.session
        set_cookie(response, SESSION_COOKIE, outcome.session_secret, max_age=lifetime)
    return response


@bp.post("/token")
def token() -> Response:
    return provider().token_response()


@bp.post("/revoke")
def revoke() -> Response:
    return provider().endpoint_response("revocation")


@bp.post("/introspect")
def introspect() -> Response:
    return provider().endpoint_response("introspection")


@bp.route("/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    return provider().userinfo_response()


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    """RP-Initiated Logout 1.0: a bad request gets a page, never a redirect (§4).

    Without a valid id_token_hint the user confirms first (§6: no logout CSRF);
    the confirmation form carries a token bound to this browser's session.
    """
    session_secret = request.cookies.get(cookie_name(SESSION_COOKIE))
    confirm = logout_confirmation(session_secret)
    confirmed = request.method == "POST" and hmac.compare_digest(
        request.form.get("confirm", "").encode(), confirm.encode()
    )
    try:
        end_request = provider().logout.validate(confirmed=confirmed)
    except OAuth2Error as err:
        return error_page("logout_invalid", 400, err.description or err.error)
    if not confirmed and provider().logout.needs_confirmation(end_request, session_secret):
        return confirm_logout_page(end_request, confirm)
    location = provider().logout.end(end_request, session_secret, confirmed)
    response = _redirect(location) if location else logged_out_page()
    dev = provider().ctx.config.is_development
    response.delete_cookie(
        cookie_name(SESSION_COOKIE), path="/", secure=not dev, httponly=True, samesite="Lax"
    )
    return response


@bp.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Response:
    """Readiness: storage answers and the active signing key is loaded."""
    ready, detail = provider().readiness()
    response = jsonify({"status": "ready" if ready else "unavailable", "detail": detail})
    response.status_code = 200 if ready else 503
    return response


def _browser_secret() -> str:
    """Reuse the browser's login-binding secret (several tabs) or mint one."""
    existing = request.cookies.get(browser_cookie_name(), "")
    if 32 <= len(existing) <= 64 and existing.replace("-", "").replace("_", "").isalnum():
        return existing
    return secrets.token_urlsafe(32)


def _to_client(outcome: RedirectToClient) -> Response:
    """The authorization response: a 302 with a query, or the form_post page."""
    if outcome.form_post:
        return form_post_response(outcome.location)
    return _redirect(outcome.location)


def _redirect(location: str) -> Response:
    # RFC 9700 §4.12: after a POST, 303 so the browser does not re-send the form.
    response = Response(status=303 if request.method == "POST" else 302)
    response.headers["Location"] = location
    return response
