"""RP-Initiated Logout 1.0 on Authlib's EndSessionEndpoint, ending the broker session.

Authlib validates the request (hint signature, client, exact
post_logout_redirect_uri, state); this subclass adds what the notes say it
lacks (the hint's ``iss``, our own keys and algorithms only, list audiences),
ends the session, revokes its tokens and tells back-channel clients.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest

from broker.oidc.hints import is_id_token

if TYPE_CHECKING:
    from broker.oidc.models import Client
    from broker.oidc.server import ProviderContext

log = logging.getLogger("broker.oidc")


class BrokerEndSessionEndpoint(EndSessionEndpoint):  # type: ignore[misc]
    """``/logout``: OpenID Connect RP-Initiated Logout 1.0 §2–§4."""

    def __init__(self, ctx: ProviderContext) -> None:
        super().__init__()
        self.ctx = ctx

    def get_server_jwks(self) -> Any:
        # Only our own published keys: never a key named by the token (jwk/jku/x5u).
        return self.ctx.keyring.public_keyset()

    def get_algorithms(self) -> list[str]:
        return list(self.ctx.config.keys.algorithms)

    def _validate_id_token_hint(self, id_token_hint: str) -> dict[str, Any]:
        """Authlib catches JoseError only; joserfc raises TypeError for odd headers
        (e.g. ``"crit": 5``), which must be a bad request, not a 500."""
        try:
            claims: dict[str, Any] = super()._validate_id_token_hint(id_token_hint)
        except (TypeError, ValueError, RecursionError) as err:
            raise InvalidRequestError("Invalid 'id_token_hint'.") from err
        return claims

    def validate_request(self, request: Any) -> EndSessionRequest:
        validated: EndSessionRequest = super().validate_request(request)
        claims = validated.id_token_claims
        if claims is not None:
            hint = request.payload.data.get("id_token_hint", "")
            if claims.get("iss") != self.ctx.config.issuer or not is_id_token(hint, claims):
                # authlib-notes pitfall 11: Authlib checks the signature, not the issuer;
                # and every JWT the broker signs verifies, not only ID tokens.
                raise InvalidRequestError("The id_token_hint is not an ID token issued here.")
        return validated

    def resolve_client_from_id_token_claims(self, id_token_claims: dict[str, Any]) -> Client | None:
        """Our ID tokens carry ``aud`` as a one-element list."""
        aud = id_token_claims.get("aud")
        if isinstance(aud, list) and len(aud) == 1:
            aud = aud[0]
        client: Client | None = self.server.query_client(aud) if isinstance(aud, str) else None
        return client

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        """Nothing here: the provider ends the session (it knows the browser's cookie)
        before asking Authlib for the response."""
