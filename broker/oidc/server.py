"""The Authlib authorization server, wired to the broker's store, keys and claims."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6750 import BearerTokenGenerator, BearerTokenValidator
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import UserInfoEndpoint
from flask import g, has_request_context

from broker.config import Config
from broker.keys import KeyRing, SigningKey
from broker.logs import LoginLog
from broker.metrics import Metrics
from broker.oidc.access_tokens import AccessTokenFactory
from broker.oidc.avatars import AvatarUrls
from broker.oidc.claims import SubjectUnavailable, subject_for, user_claims
from broker.oidc.client_auth import register_client_auth
from broker.oidc.grants import (
    AuthorizationCodeGrant,
    ClientUser,
    OpenIDCodeExtension,
    OpenIDRefreshExtension,
    RefreshTokenGrant,
    S256CodeChallenge,
)
from broker.oidc.models import AccessToken, Client, EndUser, RefreshCredential
from broker.oidc.registry import ClientLookup
from broker.oidc.token_endpoints import register_token_endpoints
from broker.oidc.upstream import UpstreamSessions
from broker.storage.base import RefreshTokenRecord, Store, TokenRecord, digest


@dataclass
class ProviderContext:
    """Everything the grants and endpoints need, built once by ``create_app``."""

    config: Config
    store: Store
    keyring: KeyRing
    #: Every client lookup goes through ``clients.get``: config clients, then the ones
    #: registered in the database (``broker.oidc.registry.ClientDirectory``).
    clients: ClientLookup
    pairwise_salt: bytes
    upstream: UpstreamSessions
    #: Seals ``picture`` URLs under ``claims.picture: proxy`` (None otherwise).
    avatars: AvatarUrls | None = None
    #: Defaults for contexts built outside create_app: counters nobody scrapes, hashed ids.
    metrics: Metrics = field(default_factory=Metrics)
    login_log: LoginLog = field(default_factory=LoginLog)

    def signing_key_for(self, client: Client) -> SigningKey:
        """The key for everything signed for this client (ID, access and logout tokens):
        its ``id_token_signed_response_alg``, else ``keys.algorithm``.

        Pinned for the rest of the request: Authlib asks for the header (``kid``) and the
        key separately, and a rotation boundary between the two calls would otherwise
        put one key's ``kid`` on another key's signature.
        """
        alg = client.id_token_signed_response_alg or self.config.keys.algorithm
        if not has_request_context():
            return self.keyring.signing_key(alg)
        pinned: dict[str, SigningKey] = g.setdefault("broker_signing_keys", {})
        if alg not in pinned:
            pinned[alg] = self.keyring.signing_key(alg)
        return pinned[alg]

    def can_name(self, principal: ClientUser) -> bool:
        """Whether this client's subject strategy yields a ``sub`` for this user."""
        try:
            self.subject(principal)
        except SubjectUnavailable:
            return False
        return True

    def subject(self, principal: ClientUser) -> str:
        return subject_for(
            principal.client.config,
            principal.user,
            self.config.upstream.qq.subject,
            self.pairwise_salt,
        )

    def claims_for(
        self, principal: ClientUser, scope: str, target: str = "userinfo"
    ) -> dict[str, Any]:
        """Claims for the userinfo response or the ID token (``target``, OIDC Core §5.5)."""
        requested = (principal.claims_request or {}).get(target) or {}
        return user_claims(
            client=principal.client.config,
            user=principal.user,
            scope=scope,
            subject=self.subject(principal),
            requested=set(requested),
            claims_config=self.config.claims,
            avatars=self.avatars,
        )


class BrokerIssuerParameter(IssuerParameter):  # type: ignore[misc]
    """RFC 9207 §2: ``iss`` on every authorization response."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def get_issuer(self) -> str:
        return self.issuer


class BrokerBearerTokenValidator(BearerTokenValidator):  # type: ignore[misc]
    """RFC 6750 bearer tokens, looked up by digest."""

    def __init__(self, ctx: ProviderContext) -> None:
        super().__init__()
        self.ctx = ctx

    def authenticate_token(self, token_string: str) -> AccessToken | None:
        record = self.ctx.store.get_token(digest(token_string))
        if record is None:
            return None
        client = self.ctx.clients.get(record.client_id)
        stored = self.ctx.store.get_user(record.user_id)
        if client is None or stored is None:
            return None
        user = EndUser(stored.user_id, stored.unionid, stored.profile, record.auth_time, record.sid)
        principal = ClientUser(user, client, record.claims_request)
        if not self.ctx.can_name(principal):
            return None
        return AccessToken(record, client, principal)  # type: ignore[arg-type]


class BrokerUserInfoEndpoint(UserInfoEndpoint):  # type: ignore[misc]
    """OIDC Core §5.3: claims for the token's client, user and scope."""

    def __init__(self, ctx: ProviderContext, resource_protector: ResourceProtector) -> None:
        super().__init__(resource_protector=resource_protector)
        self.ctx = ctx

    def get_issuer(self) -> str:
        return self.ctx.config.issuer

    def generate_user_info(self, user: ClientUser, scope: str) -> dict[str, Any]:
        return self.ctx.claims_for(user, scope, "userinfo")


class BrokerAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask authorization server, holding the provider context."""

    def __init__(self, ctx: ProviderContext) -> None:
        super().__init__()
        self.ctx = ctx
        lifetime = ctx.config.lifetimes.access_token
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=AccessTokenFactory(ctx),
                refresh_token_generator=lambda **_: secrets.token_urlsafe(32),
                expires_generator=lambda client, grant_type: lifetime,
            ),
        )
        register_client_auth(self)
        register_token_endpoints(self)
        self.register_grant(
            AuthorizationCodeGrant, [S256CodeChallenge(required=True), OpenIDCodeExtension(self)]
        )
        self.register_grant(RefreshTokenGrant, [OpenIDRefreshExtension(self)])
        self.register_extension(BrokerIssuerParameter(ctx.config.issuer))
        protector = ResourceProtector()
        protector.register_token_validator(BrokerBearerTokenValidator(ctx))
        self.register_endpoint(BrokerUserInfoEndpoint(ctx, protector))

    def query_client(self, client_id: str) -> Client | None:
        return self.ctx.clients.get(client_id)

    def save_token(self, token: Mapping[str, Any], request: OAuth2Request) -> None:
        """Store the access token and, with ``offline_access``, the next refresh token.

        A code starts a refresh family; a refresh continues its family, whose
        absolute lifetime never grows (RFC 9700 §4.14.2).
        """
        now = int(time.time())
        principal: ClientUser = request.user
        code = getattr(request, "authorization_code", None)
        parent: RefreshCredential | None = getattr(request, "refresh_token", None)
        family_id = parent.record.family_id if parent else None
        if family_id is None and "refresh_token" in token:
            family_id = secrets.token_urlsafe(16)
        access = TokenRecord(
            token_digest=digest(token["access_token"]),
            client_id=request.client.client_id,
            user_id=principal.user.user_id,
            scope=token.get("scope", ""),
            issued_at=now,
            expires_at=now + int(token["expires_in"]),
            auth_time=principal.user.auth_time,
            sid=principal.user.sid,
            family_id=family_id,
            code_digest=code.record.code_digest if code else None,
            claims_request=principal.claims_request,
        )
        refresh = None
        if "refresh_token" in token and family_id:
            refresh = self._refresh_record(token, principal, family_id, parent, now)
        # One transaction: a replay or logout racing with this request (another instance)
        # revokes both or neither is saved before it (storage/sql.py save_issued_tokens).
        self.ctx.store.save_issued_tokens(access, refresh)
        self.ctx.metrics.token_issued(request.payload.grant_type, request.client.client_id)

    def _refresh_record(
        self,
        token: Mapping[str, Any],
        principal: ClientUser,
        family_id: str,
        parent: RefreshCredential | None,
        now: int,
    ) -> RefreshTokenRecord:
        lifetimes = self.ctx.config.lifetimes
        family_end = parent.record.family_expires_at if parent else now + lifetimes.refresh_absolute
        return RefreshTokenRecord(
            token_digest=digest(token["refresh_token"]),
            family_id=family_id,
            client_id=principal.client.client_id,
            user_id=principal.user.user_id,
            scope=parent.record.scope if parent else token.get("scope", ""),
            auth_time=principal.user.auth_time,
            issued_at=now,
            expires_at=min(now + lifetimes.refresh_idle, family_end),
            family_expires_at=family_end,
            sid=principal.user.sid,
            claims_request=principal.claims_request,
        )
