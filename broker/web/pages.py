"""Error pages: HTML-escaped, in the user's language, never a traceback."""

from __future__ import annotations

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
