"""Headers every response carries (security-checklist BR-01, BR-02, BR-05, BR-06)."""

from __future__ import annotations

from flask import Response, request

#: Responses that depend on who asks, so no cache may keep them.
NO_STORE_PREFIXES = (
    "/authorize",
    "/qq/callback",
    "/token",
    "/userinfo",
    "/revoke",
    "/introspect",
    "/logout",
)

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' https: data:; "
    "form-action 'self' http: https:; frame-ancestors 'none'; base-uri 'none'"
)


#: Every response's headers, unless the view set its own (the form_post page's CSP).
DEFAULT_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", CSP),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
)
HSTS = ("Strict-Transport-Security", "max-age=31536000")


def add_security_headers(response: Response) -> Response:
    headers = response.headers
    # One pass over what the view set, instead of a scan per ``setdefault``: this runs
    # on every response, JWKS and userinfo included.
    present = {name.lower() for name, _value in headers.items()}
    wanted = (*DEFAULT_HEADERS, HSTS) if request.scheme == "https" else DEFAULT_HEADERS
    # The scheme is the issuer's (create_app), so HSTS is set exactly in production.
    headers.extend([item for item in wanted if item[0].lower() not in present])
    if request.path.startswith(NO_STORE_PREFIXES):
        headers["Cache-Control"] = "no-store"
        headers["Pragma"] = "no-cache"
        headers.add("Vary", "Cookie")
    return response
