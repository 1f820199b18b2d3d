"""Errors the web layer turns into pages or redirects."""

from __future__ import annotations

import re

from authlib.common.urls import add_params_to_uri


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
