"""Authlib model adapters: clients, codes, tokens and users as Authlib expects them.

Authlib asks its models questions (``check_redirect_uri``, ``get_nonce``...);
these classes answer them from the broker's config and stored records.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, scope_to_list
from authlib.oidc.core import AuthorizationCodeMixin

from broker.config import ClientConfig
from broker.storage.base import AuthorizationCodeRecord, RefreshTokenRecord, TokenRecord, digest

#: Scopes the broker understands; others are dropped (RFC 6749 §3.3 lets the server ignore them).
SUPPORTED_SCOPES = ("openid", "profile", "email", "offline_access")


@dataclass(frozen=True)
class EndUser:
    """The logged-in QQ user as the provider sees them."""

    user_id: str  # the QQ OpenID for this app
    unionid: str | None
    profile: Mapping[str, Any] = field(default_factory=dict)
    auth_time: int = 0  # when the user really logged in at QQ (OIDC Core §2 auth_time)
    sid: str | None = None  # the broker session this login belongs to (``sid`` claim)

    def get_user_id(self) -> str:
        return self.user_id


class Client(ClientMixin):  # type: ignore[misc]
    """A relying party registered in the config."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.client_id = config.client_id
        self._secret_digest = digest(config.client_secret) if config.client_secret else None
        # Authlib reads client_metadata (e.g. userinfo_signed_response_alg).
        self.client_metadata: dict[str, Any] = {
            "token_endpoint_auth_method": config.token_endpoint_auth_method,
            "post_logout_redirect_uris": list(config.post_logout_redirect_uris),
        }
        self.id_token_signed_response_alg = config.id_token_signed_response_alg

    @property
    def is_public(self) -> bool:
        return self.config.token_endpoint_auth_method == "none"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        # OIDC Core §3.1.2.1: redirect_uri is REQUIRED; never fall back to a registered one.
        return None

    def get_allowed_scope(self, scope: str) -> str:
        allowed = [s for s in scope_to_list(scope or "") if s in SUPPORTED_SCOPES]
        if "offline_access" in allowed and not self.check_grant_type("refresh_token"):
            # OIDC Core §11: only clients registered for refresh tokens may go offline.
            allowed.remove("offline_access")
        return " ".join(dict.fromkeys(allowed))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # RFC 9700 §4.1.3: exact string comparison, nothing else.
        return redirect_uri in self.config.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if self._secret_digest is None:
            return False
        return hmac.compare_digest(digest(client_secret), self._secret_digest)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.config.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.config.grant_types


class AuthorizationCode(AuthorizationCodeMixin):  # type: ignore[misc]
    """A redeemed code, as the token endpoint validates it."""

    def __init__(self, record: AuthorizationCodeRecord) -> None:
        self.record = record
        self.code_challenge = record.code_challenge
        self.code_challenge_method = record.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.scope

    def get_nonce(self) -> str | None:
        return self.record.nonce

    def get_auth_time(self) -> int:
        return self.record.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class RefreshCredential:
    """A stored refresh token as Authlib's refresh grant handles it."""

    def __init__(self, record: RefreshTokenRecord) -> None:
        self.record = record

    def check_client(self, client: Client) -> bool:
        return bool(client.client_id == self.record.client_id)

    def get_scope(self) -> str:
        return self.record.scope


class AccessToken(TokenMixin):  # type: ignore[misc]
    """A stored access token presented as a bearer token (RFC 6750)."""

    def __init__(self, record: TokenRecord, client: Client, user: EndUser) -> None:
        self.record = record
        self.client = client
        self.user = user
        self.scope = record.scope

    def check_client(self, client: Client) -> bool:
        return bool(client.client_id == self.record.client_id)

    def get_scope(self) -> str:
        return self.record.scope

    def get_expires_in(self) -> int:
        return self.record.expires_at - self.record.issued_at

    def is_expired(self) -> bool:
        return self.record.expires_at <= int(time.time())

    def is_revoked(self) -> bool:
        return self.record.revoked

    def get_user(self) -> EndUser:
        return self.user

    def get_client(self) -> Client:
        return self.client
