"""RP-Initiated Logout 1.0 on Authlib's EndSessionEndpoint, ending the broker session.

Authlib validates the request (hint signature, client, exact
post_logout_redirect_uri, state); this subclass adds what the notes say it
lacks (the hint's ``iss``, our own keys and algorithms only, list audiences),
ends the session, revokes its tokens and tells back-channel clients.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import InvalidRequestError
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from flask import g

from broker.oidc.hints import is_id_token
from broker.oidc.models import EndUser
from broker.storage.base import SessionRecord, digest

if TYPE_CHECKING:
    from broker.oidc.backchannel import BackchannelLogout
    from broker.oidc.models import Client
    from broker.oidc.server import BrokerAuthorizationServer, ProviderContext

log = logging.getLogger("broker.oidc")

#: Request-scoped (flask.g): the user confirmed this logout on the broker's page.
CONFIRMED_FLAG = "broker_logout_confirmed"


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

    def is_post_logout_redirect_uri_legitimate(
        self, request: Any, post_logout_redirect_uri: str, client: Any, logout_hint: Any
    ) -> bool:
        """No hint, but the RP named itself (``client_id``) and the user confirmed the logout
        on our page: a redirect to a URI that client registered is legitimate (Logout 1.0
        §3: "unless the OP has other means of confirming the legitimacy"). GitLab and
        Nextcloud log out this way; without it their users would be stranded here."""
        named = request.payload.data.get("client_id")
        return bool(g.get(CONFIRMED_FLAG)) and named == getattr(client, "client_id", None)

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


class RPInitiatedLogout:
    """``/logout``: validate, decide whether to ask, end the session (Logout 1.0 §2–§6)."""

    def __init__(
        self,
        ctx: ProviderContext,
        server: BrokerAuthorizationServer,
        backchannel: BackchannelLogout,
    ) -> None:
        self.ctx = ctx
        self.server = server
        self.backchannel = backchannel
        server.register_endpoint(BrokerEndSessionEndpoint(ctx))

    def validate(self, *, confirmed: bool = False) -> EndSessionRequest:
        """Raises OAuth2Error for a request that must get an error page, never a redirect.

        ``confirmed``: the user confirmed on our page (the web layer checked the form
        token), which makes a hint-less redirect to the client's registered URI legitimate.
        """
        g.setdefault(CONFIRMED_FLAG, confirmed)
        try:
            request: EndSessionRequest = self.server.validate_endpoint_request("end_session")
        except ValueError as err:
            raise InvalidRequestError("Malformed logout request.") from err
        return request

    def needs_confirmation(self, request: EndSessionRequest, session_secret: str | None) -> bool:
        """Ask the user first without a valid hint (§6), and when the hint names another
        session than this browser's: anyone's ID token must not log out whoever clicks."""
        if request.needs_confirmation:
            return True
        session = self._browser_session(session_secret)
        hinted = (request.id_token_claims or {}).get("sid")
        return session is not None and hinted != session.sid

    def end(
        self, request: EndSessionRequest, session_secret: str | None, confirmed: bool
    ) -> str | None:
        """End the session; the post-logout redirect URI (with ``state``) or None.

        A confirmed logout ends this browser's session; an unconfirmed one (valid
        hint, same session or no browser session) ends the session the hint names.
        """
        session = self._browser_session(session_secret)
        if session is None or not confirmed:
            sid = (request.id_token_claims or {}).get("sid")
            session = self.ctx.store.get_session(sid) if isinstance(sid, str) else None
        if session is not None and not session.ended:
            self._end_session(session)
        response = self.server.create_endpoint_response("end_session", request)
        return None if response is None else str(response.headers.get("Location"))

    def _browser_session(self, session_secret: str | None) -> SessionRecord | None:
        if not session_secret:
            return None
        return self.ctx.store.find_session(digest(session_secret), int(time.time()))

    def _end_session(self, session: SessionRecord) -> None:
        """End a session, revoke its tokens and tell the back-channel clients
        (OpenID Back-Channel Logout §2.5) without waiting for them."""
        clients = self.ctx.store.end_session(session.sid)
        stored = self.ctx.store.get_user(session.user_id)
        if stored is not None:
            user = EndUser(
                stored.user_id, stored.unionid, stored.profile, session.auth_time, session.sid
            )
            self.backchannel.notify(user, session.sid, clients)
        log.info("session ended (%d client(s) took part)", len(clients))
