"""What an authorization request may carry, beyond what Authlib checks itself.

A validated request is parked server-side while the user is at QQ, so it is
bounded here: known parameters only, each single-valued and capped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidRequestError

#: OIDC Core §3.1.2.1 parameters the broker understands. Anything else is
#: ignored (as the spec requires) and never stored.
KNOWN = (
    "client_id", "redirect_uri", "response_type", "scope", "state", "nonce", "code_challenge",
    "code_challenge_method", "prompt", "max_age", "id_token_hint", "request", "request_uri",
    "response_mode", "login_hint", "ui_locales", "claims_locales", "display", "claims",
    "acr_values",
)  # fmt: skip
#: RFC 6749 §3.1: request parameters must not be included more than once.
SINGLE_VALUED = KNOWN
DEFAULT_MAX_CHARS = 512
MAX_CHARS = {"redirect_uri": 2048, "id_token_hint": 4096, "claims": 2048}
MAX_PARAMETERS = 64
RESPONSE_MODES = ("query", "form_post")


class RequestObjectsUnsupported(OAuth2Error):  # type: ignore[misc]
    """OIDC Core §6: request / request_uri are refused with their own error codes, never fetched."""

    def __init__(self, by_value: bool) -> None:
        super().__init__(description="Request objects are not supported.")
        self.error = "request_not_supported" if by_value else "request_uri_not_supported"


def check_authorization_parameters(datalist: Mapping[str, Sequence[str]]) -> None:
    """Raise an OAuth error (redirected to the client) for a request we will not park.

    Descriptions are constants or our own parameter names: never request values.
    """
    if len(datalist) > MAX_PARAMETERS:
        raise InvalidRequestError("Too many parameters.")
    for name in KNOWN:
        values = datalist.get(name, [])
        if len(values) > 1:
            raise InvalidRequestError(f"Multiple '{name}' in request.")
        if values and len(values[0]) > MAX_CHARS.get(name, DEFAULT_MAX_CHARS):
            raise InvalidRequestError(f"'{name}' is too long.")
    if not datalist.get("response_type"):
        raise InvalidRequestError("Missing 'response_type'.")
    if "request" in datalist or "request_uri" in datalist:
        raise RequestObjectsUnsupported("request" in datalist)
    if datalist.get("response_mode", ["query"])[0] not in RESPONSE_MODES:
        # Discovery advertises exactly these (OAuth 2.0 Multiple Response Types, Form Post).
        raise InvalidRequestError("Only response_mode=query or form_post is supported.")
    max_age = datalist.get("max_age")
    if max_age and not re.fullmatch(r"[0-9]{1,9}", max_age[0]):
        raise InvalidRequestError("Invalid 'max_age'.")
    claims = datalist.get("claims")
    if claims and not _valid_claims_request(claims[0]):
        raise InvalidRequestError("Invalid 'claims' parameter.")


def _valid_claims_request(text: str) -> bool:
    """OIDC Core §5.5: a JSON object with optional ``userinfo`` and ``id_token`` members,
    each mapping claim names to null or an object (essential, value, values)."""
    try:
        request = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: "[[[[..." within the length cap
        return False
    if not isinstance(request, dict) or not set(request) <= {"userinfo", "id_token"}:
        return False
    for members in request.values():
        if members is None:
            continue
        if not isinstance(members, dict):
            return False
        if not all(isinstance(v, dict | type(None)) for v in members.values()):
            return False
    return True


def parked_parameters(data: Mapping[str, str]) -> dict[str, str]:
    """The parameters kept with a pending login: the known ones only."""
    return {name: value for name, value in data.items() if name in KNOWN}
