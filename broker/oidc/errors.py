"""Errors the web layer turns into pages or redirects."""

from __future__ import annotations

import re

from authlib.common.urls import add_params_to_uri
from flask import Response, jsonify

from broker.connectors.base import UpstreamError


class BadAuthorizationRequest(Exception):
    """A request we must not redirect for (RFC 6749 §4.1.2.1): shown as a 400 page.

    ``message_key`` picks the user-facing text; ``detail`` is safe ASCII for the page.
    """

    def __init__(self, message_key: str, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.message_key = message_key
        self.detail = detail
        self.status = status


_UNSAFE = re.compile(r"[^A-Za-z0-9 .,:;()'_/=+-]")


def safe_description(text: str, limit: int = 200) -> str:
    """RFC 6749 §4.1.2.1: error_description is printable ASCII without ``"`` and ``\\``.

    Authlib raises on anything else. Beyond the RFC, markup characters go too:
    relying parties do render descriptions, so nothing here may carry HTML.
    """
    return _UNSAFE.sub("?", text)[:limit]


def error_redirect_uri(
    redirect_uri: str, *, error: str, description: str, state: str | None, issuer: str
) -> str:
    """An authorization error response (RFC 6749 §4.1.2.1) with ``iss`` (RFC 9207 §2)."""
    params = [("error", error), ("error_description", safe_description(description))]
    if state:
        params.append(("state", state))
    params.append(("iss", issuer))
    return str(add_params_to_uri(redirect_uri, params))


#: ASCII descriptions for the relying party, per connector message key (RFC 6749 §4.1.2.1);
#: QQ's own (often Chinese) text and the operator hint go to the log instead.
UPSTREAM_DESCRIPTIONS = {
    "upstream.cancelled": "The user cancelled the QQ login.",
    "upstream.unavailable": "QQ is unavailable or too slow; try again later.",
    "upstream.misconfigured": "The broker's QQ Connect app is misconfigured; see the broker log.",
    "upstream.rejected": "QQ rejected the login; see the broker log.",
    "upstream.protocol": "QQ answered in an unexpected way; see the broker log.",
    "upstream.code_invalid": "The QQ authorization code was invalid or reused; log in again.",
    "upstream.token_expired": "The QQ authorization expired; log in again.",
    "upstream.unionid_not_enabled": "UnionID is not enabled for the broker's QQ Connect app.",
}


def describe_upstream_error(err: UpstreamError) -> str:
    return safe_description(UPSTREAM_DESCRIPTIONS.get(err.message_key, "The QQ login failed."))


def json_error(error: str, description: str, status: int) -> Response:
    response = jsonify({"error": error, "error_description": description})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


def rfc6750_challenge(response: Response) -> Response:
    """RFC 6750 §3/§3.1 challenges for what Authlib reports with non-standard codes.

    No credentials: a bare ``Bearer`` challenge without an error code. Any
    other scheme (e.g. Basic): ``invalid_request``.
    """
    if response.status_code != 401:
        return response
    challenge = response.headers.get("WWW-Authenticate", "")
    if 'error="missing_authorization"' in challenge:
        fixed = Response(status=401)
        fixed.headers["WWW-Authenticate"] = "Bearer"
        return fixed
    if 'error="unsupported_token_type"' in challenge:
        fixed = json_error("invalid_request", "Use an 'Authorization: Bearer' header.", 400)
        fixed.headers["WWW-Authenticate"] = 'Bearer error="invalid_request"'
        return fixed
    return response


def uniform_invalid_client(response: Response) -> Response:
    """RFC 6749 §5.2 ``invalid_client``: always 401, one description, a Basic challenge."""
    if response.status_code not in (400, 401) or not response.is_json:
        return response
    body = response.get_json(silent=True) or {}
    if body.get("error") != "invalid_client":
        return response
    uniform = json_error("invalid_client", "Client authentication failed.", 401)
    uniform.headers["WWW-Authenticate"] = 'Basic realm="token", charset="UTF-8"'
    return uniform
