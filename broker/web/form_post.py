"""OAuth 2.0 Form Post Response Mode: the authorization response as an auto-submitted form.

Authlib's form_post page targets implicit/hybrid flows and uses an inline
``onload`` that a strict CSP blocks (authlib-notes pitfall 6), so the broker
renders its own: escaped values, ``iss`` included, and an external script.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit, urlunsplit

from flask import Response, render_template

from broker.web.pages import current_locale
from broker.web.security import CSP

#: This page alone may run our one static script (it submits the form).
FORM_POST_CSP = CSP.replace("default-src 'none';", "default-src 'none'; script-src 'self';")


def form_post_response(location: str) -> Response:
    """Turn a redirect URL (registered URI + response parameters) into the POST page.

    The registered URI keeps its own query as the form's action; only the
    parameters the broker added (code, state, iss or error...) become fields.
    """
    parts = urlsplit(location)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    added = {"code", "state", "iss", "error", "error_description", "error_uri"}
    own_query = "&".join(f"{k}={v}" for k, v in _raw_pairs(parts.query) if k not in added)
    action = urlunsplit((parts.scheme, parts.netloc, parts.path, own_query, ""))
    fields = [(k, v) for k, v in pairs if k in added]
    body = render_template("form_post.html", locale=current_locale(), action=action, fields=fields)
    response = Response(body, status=200, mimetype="text/html")
    response.headers["Content-Security-Policy"] = FORM_POST_CSP
    return response


def _raw_pairs(query: str) -> list[tuple[str, str]]:
    """Query pairs as sent (still encoded), so the registered URI is reproduced byte for byte."""
    pairs = []
    for item in query.split("&"):
        if item:
            key, _, value = item.partition("=")
            pairs.append((key, value))
    return pairs
