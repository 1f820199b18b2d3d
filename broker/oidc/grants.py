"""The authorization code grant with PKCE and OpenID Connect, on Authlib.

Authlib does the protocol; these subclasses supply storage, the signing key
and claims, and close the gaps listed in shared/authlib-notes.md (S256 only,
atomic code redemption, a real ``auth_time``, ``kid`` in the header).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Request,
    grants,
    scope_to_list,
)
from authlib.oauth2.rfc6749.requests import OAuth2Request as _Request
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import OpenIDCode, OpenIDToken

from broker.oidc.models import AuthorizationCode, Client, EndUser, RefreshCredential
from broker.storage.base import AuthorizationCodeRecord, digest

log = logging.getLogger("broker.oidc")

#: Client authentication that proves who the client is (OIDC Core §9).
CONFIDENTIAL_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
#: What the token and revocation endpoints accept: public clients too (with PKCE).
TOKEN_AUTH_METHODS = [*CONFIDENTIAL_AUTH_METHODS, "none"]

if TYPE_CHECKING:
    from broker.oidc.server import BrokerAuthorizationServer


class ClientUser:
    """A user as one relying party sees them: what decides ``sub`` and the claims.

    ``claims_request`` is the authorization request's ``claims`` parameter
    (OIDC Core §5.5), carried from the code to every token issued from it.
    """

    def __init__(
        self, user: EndUser, client: Client, claims_request: Mapping[str, Any] | None = None
    ) -> None:
        self.user = user
        self.client = client
        self.claims_request = claims_request

    def get_user_id(self) -> str:
        return self.user.user_id


class S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """RFC 7636 with S256 only (RFC 9700 §2.1.1).

    ``plain`` is refused; an absent method means S256, never plain.
    """

    DEFAULT_CODE_CHALLENGE_METHOD = "S256"
    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 (Authlib's class attribute)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    """RFC 6749 §4.1 backed by the broker's store."""

    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    server: BrokerAuthorizationServer
    request: OAuth2Request

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        payload = self.request.payload
        if "openid" not in (self.request.scope or "").split():
            # This is an OpenID provider: plain OAuth requests have nothing to give.
            raise InvalidScopeError("The 'openid' scope is required.", redirect_uri=redirect_uri)
        client: Client = self.request.client
        if client.is_public and not payload.data.get("code_challenge"):
            # RFC 9700 §2.1.1: public clients must use PKCE; refuse before the user logs in.
            raise InvalidRequestError(
                "Public clients must send a PKCE code_challenge (S256).", redirect_uri=redirect_uri
            )
        return redirect_uri

    def generate_authorization_code(self) -> str:
        return secrets.token_urlsafe(32)

    def save_authorization_code(self, code: str, request: _Request) -> None:
        ctx = self.server.ctx
        user: EndUser = request.user
        data = request.payload.data
        challenge = data.get("code_challenge")
        self.server.ctx.store.save_code(
            AuthorizationCodeRecord(
                code_digest=digest(code),
                client_id=request.client.client_id,
                redirect_uri=request.payload.redirect_uri,
                scope=request.scope,
                user_id=user.user_id,
                auth_time=user.auth_time,
                expires_at=int(time.time()) + ctx.config.lifetimes.code,
                nonce=data.get("nonce"),
                code_challenge=challenge,
                code_challenge_method=(data.get("code_challenge_method") or "S256")
                if challenge
                else None,
                sid=user.sid,
                claims_request=json.loads(data["claims"]) if data.get("claims") else None,
            )
        )
        if user.sid:
            # Remembered for back-channel logout (OIDC Back-Channel Logout §2.7).
            expires = int(time.time()) + ctx.config.lifetimes.session
            ctx.store.add_session_client(user.sid, request.client.client_id, expires)

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        # Redeemed here, atomically, rather than in delete_authorization_code:
        # Authlib saves tokens before deleting, which would let a racing request win twice.
        store, code_digest = self.server.ctx.store, digest(code)
        record = store.consume_code(code_digest, int(time.time()))
        if record is None:
            if store.code_was_used(code_digest):
                # RFC 6749 §4.1.2: a replayed code revokes what it issued (RFC 9700 §4.2.4).
                log.warning("authorization code replay: revoking the tokens it issued")
                store.revoke_tokens_of_code(code_digest)
            return None
        if record.client_id != client.client_id:
            return None
        return AuthorizationCode(record)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: the code was consumed when it was queried."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> ClientUser | None:
        record = authorization_code.record
        stored = self.server.ctx.store.get_user(record.user_id)
        if stored is None:
            return None
        user = EndUser(stored.user_id, stored.unionid, stored.profile, record.auth_time, record.sid)
        principal = ClientUser(user, self.request.client, record.claims_request)
        # A user this client cannot name (e.g. no UnionID) gets no token: invalid_grant.
        return principal if self.server.ctx.can_name(principal) else None

    def generate_token(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _generate_with_offline_rule(super().generate_token, *args, **kwargs)


def _generate_with_offline_rule(
    generate: Any, *args: Any, granted: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """Refresh tokens only for ``offline_access`` (OIDC Core §11); registration is consent.

    On refresh the grant's scope decides (``granted``), not a narrower request.
    """
    scope = granted if granted is not None else kwargs.get("scope") or ""
    if "offline_access" not in scope_to_list(scope):
        kwargs["include_refresh_token"] = False
    token: dict[str, Any] = generate(*args, **kwargs)
    return token


class RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    """RFC 6749 §6 with rotation and reuse detection (RFC 9700 §4.14.2).

    Every use returns a new refresh token; presenting a rotated one again
    revokes the whole family, since either the client or a thief is replaying.
    """

    TOKEN_ENDPOINT_AUTH_METHODS = TOKEN_AUTH_METHODS
    INCLUDE_NEW_REFRESH_TOKEN = True
    server: BrokerAuthorizationServer
    request: OAuth2Request

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshCredential | None:
        """Find a live token of this client; a rotated one means replay: revoke the family.

        The token is only looked at here. It is consumed in authenticate_user,
        after QQ had its say, so a transient QQ outage does not burn it.
        """
        store, now = self.server.ctx.store, int(time.time())
        record = store.get_refresh_token(digest(refresh_token))
        if record is None or record.client_id != self.request.client.client_id:
            return None  # another client's token is never consumed (RFC 6749 §6)
        self._check_scope(record.scope)
        if record.used:
            log.warning("refresh token reuse: revoking family (client=%s)", record.client_id)
            store.revoke_family(record.family_id)
            self.server.ctx.metrics.refresh_reused(record.client_id)
            return None
        if record.revoked or min(record.expires_at, record.family_expires_at) <= now:
            return None
        return RefreshCredential(record)

    def _check_scope(self, granted: str) -> None:
        """RFC 6749 §6: no scope beyond the original grant (checked before rotating)."""
        asked = scope_to_list(self.request.payload.scope or "")
        if not set(asked) <= set(scope_to_list(granted)):
            raise InvalidScopeError()

    def authenticate_user(self, refresh_token: RefreshCredential) -> ClientUser | None:
        record = refresh_token.record
        store = self.server.ctx.store
        stored = store.get_user(record.user_id)
        if stored is None:
            return None
        user = EndUser(stored.user_id, stored.unionid, stored.profile, record.auth_time, record.sid)
        client = self.request.client
        # Per client upstream_check: QQ may end the login here (issue 3 point 3).
        current = self.server.ctx.upstream.on_refresh(ClientUser(user, client), record.family_id)
        if store.rotate_refresh_token(record.token_digest, int(time.time())) is None:
            # Another request used this token first: a replay, so the family goes.
            store.revoke_family(record.family_id)
            self.server.ctx.metrics.refresh_reused(record.client_id)
            raise InvalidGrantError()
        principal = ClientUser(current, client, record.claims_request)
        return principal if self.server.ctx.can_name(principal) else None

    def revoke_old_credential(self, refresh_token: RefreshCredential) -> None:
        """Nothing to do: the token was rotated in authenticate_user."""

    def generate_token(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        # RFC 6749 §6: the new refresh token keeps the original scope, even when this
        # request narrowed the access token's.
        granted = self.request.refresh_token.record.scope
        return _generate_with_offline_rule(super().generate_token, *args, granted=granted, **kwargs)


class _IDTokenClaims:
    """What every ID token of the broker shares, for the code and the refresh grant."""

    server: BrokerAuthorizationServer

    def get_client_algorithm(self, client: Client) -> str:
        return self.server.ctx.signing_key_for(client).alg

    def resolve_client_private_key(self, client: Client) -> Any:
        return self.server.ctx.signing_key_for(client).key

    def get_encode_header(self, client: Client) -> dict[str, str]:
        key = self.server.ctx.signing_key_for(client)
        return {"alg": key.alg, "kid": key.kid, "typ": "JWT"}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.server.ctx.config.issuer,
            "aud": [client.client_id],
            "iat": now,
            "exp": now + self.server.ctx.config.lifetimes.id_token,
        }

    def get_compatible_claims(self, request: OAuth2Request) -> dict[str, Any]:
        """auth_time is the real QQ login, also on refresh (OIDC Core §12.2); sid per session."""
        claims: dict[str, Any] = super().get_compatible_claims(request)  # type: ignore[misc]
        principal: ClientUser = request.user
        if principal.user.auth_time:
            claims["auth_time"] = principal.user.auth_time
        if principal.user.sid:
            claims["sid"] = principal.user.sid
        return claims

    def generate_user_info(self, user: ClientUser, scope: str) -> dict[str, Any]:
        return self.server.ctx.claims_for(user, scope, "id_token")


class OpenIDRefreshExtension(_IDTokenClaims, OpenIDToken):  # type: ignore[misc]
    """A fresh ID token with every refresh (OIDC Core §12.2): same sub and auth_time."""

    def __init__(self, server: BrokerAuthorizationServer) -> None:
        self.server = server


class OpenIDCodeExtension(_IDTokenClaims, OpenIDCode):  # type: ignore[misc]
    """OIDC Core §3.1: the ID token, signed with a ready key and carrying ``kid``."""

    def __init__(self, server: BrokerAuthorizationServer) -> None:
        # Conformance requires the code flow to work without a nonce.
        super().__init__(require_nonce=False)
        self.server = server

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        """Nonces are not tracked: OIDC Core §3.1.3.7 makes replay detection the RP's check
        (it compares the ID token's nonce with the one it sent), and codes are single use."""
        return False
