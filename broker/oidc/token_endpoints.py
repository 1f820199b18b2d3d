"""Token revocation (RFC 7009) and introspection (RFC 7662), on Authlib's endpoints.

Authlib runs the protocol (client authentication, parameter checks, the
response shapes); these subclasses find tokens in the broker's store by
digest, decide what a token means to the client that asks, and revoke it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from authlib.oauth2.rfc6749 import InvalidRequestError, OAuth2Request
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from broker.oidc.claims import SubjectUnavailable
from broker.oidc.grants import CONFIDENTIAL_AUTH_METHODS, TOKEN_AUTH_METHODS, ClientUser
from broker.oidc.models import Client, EndUser
from broker.storage.base import RefreshTokenRecord, Store, TokenRecord, digest

if TYPE_CHECKING:
    from broker.oidc.server import BrokerAuthorizationServer, ProviderContext


@dataclass(frozen=True)
class StoredAccessToken:
    """An access token found by digest, as both endpoints handle it."""

    record: TokenRecord
    #: RFC 7662 §2.2: ``token_type`` as in RFC 6749 §5.1.
    token_type: ClassVar[str] = "Bearer"

    @property
    def expires_at(self) -> int:
        return self.record.expires_at

    def check_client(self, client: Client) -> bool:
        return bool(client.client_id == self.record.client_id)

    def is_expired(self) -> bool:
        return self.expires_at <= int(time.time())

    def is_revoked(self) -> bool:
        return self.record.revoked

    def revoke(self, store: Store) -> None:
        # RFC 7009 §2.1: the server MAY also revoke the refresh token; we revoke only this one,
        # so a client that drops an access token keeps its session.
        store.revoke_access_token(self.record.token_digest)


@dataclass(frozen=True)
class StoredRefreshToken:
    """A refresh token found by digest: one link of a rotation family."""

    record: RefreshTokenRecord
    token_type: ClassVar[str] = "refresh_token"

    @property
    def expires_at(self) -> int:
        # The idle expiry of this link, never past the family's absolute expiry.
        return min(self.record.expires_at, self.record.family_expires_at)

    def check_client(self, client: Client) -> bool:
        return bool(client.client_id == self.record.client_id)

    def is_expired(self) -> bool:
        return self.expires_at <= int(time.time())

    def is_revoked(self) -> bool:
        # RFC 9700 §4.14.2: a rotated-out link is dead; presenting it again is reuse.
        return self.record.revoked or self.record.used

    def revoke(self, store: Store) -> None:
        # RFC 7009 §2.1 (SHOULD) and checklist RT-04: revoking a refresh token ends the
        # grant, i.e. every link of its family and the access tokens issued from them.
        store.revoke_family(self.record.family_id)


StoredToken = StoredAccessToken | StoredRefreshToken


def find_token(store: Store, token: str, hint: str | None) -> StoredToken | None:
    """Look ``token`` up by digest, the hinted kind first.

    RFC 7009 §2.1 / RFC 7662 §2.1: a hint only orders the search; a wrong
    hint must still find the token among the other kinds.
    """
    key = digest(token)

    def access() -> StoredToken | None:
        record = store.get_token(key)
        return StoredAccessToken(record) if record else None

    def refresh() -> StoredToken | None:
        record = store.get_refresh_token(key)
        return StoredRefreshToken(record) if record else None

    order = (refresh, access) if hint == "refresh_token" else (access, refresh)
    for lookup in order:
        found = lookup()
        if found is not None:
            return found
    return None


def subject_of(ctx: ProviderContext, token: StoredToken) -> str | None:
    """The ``sub`` the token's own client sees (public, UnionID or pairwise).

    None when the client or user is gone or the subject cannot be formed: such
    a token works nowhere (see BrokerBearerTokenValidator), so it is not active.
    """
    record = token.record
    client = ctx.clients.get(record.client_id)
    stored = ctx.store.get_user(record.user_id)
    if client is None or stored is None:
        return None
    user = EndUser(stored.user_id, stored.unionid, stored.profile, record.auth_time)
    try:
        return ctx.subject(ClientUser(user, client))
    except SubjectUnavailable:
        return None


def check_token_parameters(request: OAuth2Request) -> None:
    """Both endpoints' parameter check, in place of Authlib's.

    RFC 7009 §2.1 / RFC 7662 §2.1: the server MAY ignore ``token_type_hint``, so an
    unknown hint is ignored (the search covers every kind) instead of refused: Authlib
    refuses it with a 401, which RFC 6749 §5.2 keeps for failed client authentication.
    RFC 6749 §3.2: no parameter twice, since which token to act on would be a guess.
    """
    form = request.form
    for name in ("token", "token_type_hint"):
        if len(form.getlist(name)) > 1:
            raise InvalidRequestError(f"'{name}' was sent twice.")
    if "token" not in form:
        raise InvalidRequestError("The 'token' parameter is required.")


class BrokerRevocationEndpoint(RevocationEndpoint):  # type: ignore[misc]
    """RFC 7009 token revocation at ``/revoke``."""

    # Pitfall 9: Authlib allows only client_secret_basic. RFC 7009 §2.1 lets a public
    # client revoke its own tokens; Client.check_endpoint_auth_method still holds each
    # client to its registered method.
    CLIENT_AUTH_METHODS = TOKEN_AUTH_METHODS
    server: BrokerAuthorizationServer

    def check_params(self, request: OAuth2Request, client: Client) -> None:
        check_token_parameters(request)

    def authenticate_token(self, request: OAuth2Request, client: Client) -> StoredToken | None:
        """The token to revoke, or None when there is nothing this client may revoke.

        RFC 7009 §2.1 has the server check that the token was issued to the
        requesting client. Authlib answers a mismatch with ``invalid_grant``,
        which tells a client that some other client's token exists; here it is
        treated like an unknown token (§2.2: 200, nothing revoked).
        """
        self.check_params(request, client)
        token = self.query_token(request.form["token"], request.form.get("token_type_hint"))
        if token is None or not token.check_client(client):
            return None
        return token

    def query_token(self, token_string: str, token_type_hint: str | None) -> StoredToken | None:
        return find_token(self.server.ctx.store, token_string, token_type_hint)

    def revoke_token(self, token: StoredToken, request: OAuth2Request) -> None:
        token.revoke(self.server.ctx.store)


class BrokerIntrospectionEndpoint(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662 token introspection at ``/introspect``, for each client's own tokens."""

    # RFC 7662 §2.1/§4: the endpoint MUST require authorization to stop token scanning;
    # "none" proves nothing, so public clients (which are no resource servers) are refused.
    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH_METHODS
    server: BrokerAuthorizationServer

    def check_params(self, request: OAuth2Request, client: Client) -> None:
        check_token_parameters(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> StoredToken | None:
        return find_token(self.server.ctx.store, token_string, token_type_hint)

    def check_permission(self, token: StoredToken, client: Client, request: OAuth2Request) -> bool:
        # RFC 7662 §2.2/§4: a client learns only about its own tokens; any other is
        # "active": false, indistinguishable from an unknown one.
        return token.check_client(client)

    def introspect_token(self, token: StoredToken) -> dict[str, Any]:
        """RFC 7662 §2.2 metadata; Authlib has already answered inactive for expired/revoked."""
        subject = subject_of(self.server.ctx, token)
        if subject is None:
            return {"active": False}
        record = token.record
        return {
            "active": True,
            "scope": record.scope,
            "client_id": record.client_id,
            "sub": subject,
            "exp": token.expires_at,
            "iat": record.issued_at,
            "iss": self.server.ctx.config.issuer,
            "aud": record.client_id,
            "token_type": token.token_type,
            "auth_time": record.auth_time,
        }


def register_token_endpoints(server: BrokerAuthorizationServer) -> None:
    """Register the revocation and introspection endpoints on ``server``."""
    server.register_endpoint(BrokerRevocationEndpoint(server))
    server.register_endpoint(BrokerIntrospectionEndpoint(server))
