"""Error pages: HTML-escaped, in the user's language, never a traceback."""

from __future__ import annotations

import hashlib

from authlib.oidc.rpinitiated import EndSessionRequest
from flask import Response, g, render_template, request

from broker.web.messages import TITLES, message, pick_locale


def current_locale() -> str:
    """``ui_locales`` from the query only: an error page must never parse (or re-reject) a body."""
    return pick_locale(request.args.get("ui_locales"), request.accept_languages.values())


def error_page(message_key: str, status: int, detail: str | None = None) -> Response:
    """A 4xx/5xx page; ``detail`` is safe ASCII from the provider, escaped by Jinja anyway."""
    locale = current_locale()
    body = render_template(
        "error.html",
        locale=locale,
        title=TITLES[locale],
        text=message(message_key, locale),
        detail=detail,
        status=status,
        request_id=g.get("request_id"),
    )
    return Response(body, status=status, mimetype="text/html")


LOGOUT_FIELDS = ("client_id", "post_logout_redirect_uri", "state", "ui_locales", "id_token_hint")


def logout_confirmation(session_secret: str | None) -> str:
    """A per-session token for the confirmation form: a cross-site form cannot know it."""
    basis = f"logout-confirmation:{session_secret or 'no-session'}"
    return hashlib.sha256(basis.encode()).hexdigest()[:32]


def confirm_logout_page(end_request: EndSessionRequest, confirm: str) -> Response:
    """RP-Initiated Logout §6: ask before acting on a logout without a valid hint."""
    locale = current_locale()
    fields = {name: request.values.get(name, "") for name in LOGOUT_FIELDS}
    body = render_template(
        "logout_confirm.html",
        locale=locale,
        fields={k: v for k, v in fields.items() if v},
        confirm=confirm,
        client_id=end_request.client.client_id if end_request.client else None,
    )
    return Response(body, status=200, mimetype="text/html")


def logged_out_page() -> Response:
    body = render_template("logged_out.html", locale=current_locale())
    return Response(body, status=200, mimetype="text/html")
