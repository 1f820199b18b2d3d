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


def add_security_headers(response: Response) -> Response:
    headers = response.headers
    headers.setdefault("X-Frame-Options", "DENY")
    headers.setdefault("Content-Security-Policy", CSP)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "no-referrer")
    if request.scheme == "https":
        # The scheme is the issuer's (create_app), so this is set exactly in production.
        headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    if request.path.startswith(NO_STORE_PREFIXES):
        headers["Cache-Control"] = "no-store"
        headers["Pragma"] = "no-cache"
        headers.add("Vary", "Cookie")
    return response
