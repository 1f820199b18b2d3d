"""``id_token_hint``: accept only ID tokens this broker issued (OIDC Core §3.1.2.1).

Verified with the broker's own published keys and algorithms only; a hint
never names its own key (jwk/jku/x5u headers are not consulted) and the
broker's other signed JWTs (access tokens, logout tokens) do not pass.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from authlib.oauth2.rfc6749 import InvalidRequestError
from joserfc import jwt
from joserfc.errors import JoseError

from broker.keys import KeyRing

#: Tokens the broker signs that are not ID tokens: RFC 9068 access tokens, logout tokens.
NOT_ID_TOKEN_TYPES = frozenset({"at+jwt", "logout+jwt"})


def is_id_token(token: str, claims: dict[str, Any]) -> bool:
    """Tell an ID token from the broker's other signed JWTs by its header and claims."""
    try:
        header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    except (ValueError, IndexError):
        return False
    if not isinstance(header, dict) or str(header.get("typ", "JWT")).lower() in NOT_ID_TOKEN_TYPES:
        return False
    return not {"events", "client_id", "scope"} & set(claims)


def verify_id_token_hint(hint: str, keyring: KeyRing, issuer: str) -> dict[str, Any]:
    """The hint's claims, or InvalidRequestError. Expiry is not checked: an expired
    ID token still names its user (OIDC Core §3.1.2.1)."""
    try:
        token = jwt.decode(hint, keyring.public_keyset(), algorithms=list(keyring.algorithms))
    except (JoseError, ValueError, TypeError, RecursionError) as err:
        raise InvalidRequestError("Invalid 'id_token_hint'.") from err
    claims = dict(token.claims)
    if claims.get("iss") != issuer or not is_id_token(hint, claims):
        raise InvalidRequestError("Invalid 'id_token_hint'.")
    return claims
