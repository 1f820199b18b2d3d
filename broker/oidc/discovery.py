"""OpenID Provider metadata (OIDC Discovery 1.0 §3, RFC 8414 §2).

Every ``*_supported`` list says exactly what the endpoints accept: relying
parties configure themselves from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from authlib.oidc.discovery import OpenIDProviderMetadata

from broker.config import ClientConfig, Config
from broker.oidc.client_auth import ASSERTION_ALGORITHMS
from broker.oidc.grants import CONFIDENTIAL_AUTH_METHODS, TOKEN_AUTH_METHODS
from broker.oidc.request_policy import RESPONSE_MODES

BASE_CLAIMS = ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "sid"]

PROFILE_CLAIMS = ["name", "nickname", "picture"]


def provider_metadata(config: Config, stored: Sequence[ClientConfig] = ()) -> dict[str, Any]:
    """The discovery document, validated by Authlib so a mistake fails at start, not in an RP.

    ``stored``: clients registered in the database, which count like config clients.
    """
    issuer = config.issuer
    clients = (*config.clients, *stored)
    subject_types = ["public"]
    if any(client.subject == "pairwise" for client in clients):
        subject_types.append("pairwise")
    claims = BASE_CLAIMS + PROFILE_CLAIMS
    scopes = ["openid", "profile"]
    grant_types = ["authorization_code"]
    if any("refresh_token" in client.grant_types for client in clients):
        grant_types.append("refresh_token")
        scopes.append("offline_access")
    if any(client.email == "synthetic" for client in clients):
        claims += ["email", "email_verified"]
        scopes.append("email")
    if config.claims.gender:
        claims.append("gender")
    if any(client.expose_qq_ids for client in clients):
        claims += ["qq_openid", "qq_unionid"]
    metadata = OpenIDProviderMetadata(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "userinfo_endpoint": f"{issuer}/userinfo",
            "jwks_uri": f"{issuer}/jwks.json",
            "revocation_endpoint": f"{issuer}/revoke",
            "introspection_endpoint": f"{issuer}/introspect",
            "end_session_endpoint": f"{issuer}/logout",
            "scopes_supported": scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": list(RESPONSE_MODES),
            "grant_types_supported": grant_types,
            "subject_types_supported": subject_types,
            "id_token_signing_alg_values_supported": list(config.keys.algorithms),
            "token_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
            "claims_supported": claims,
            "revocation_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
            "introspection_endpoint_auth_methods_supported": CONFIDENTIAL_AUTH_METHODS,
            # RFC 8414 §2: required wherever private_key_jwt is listed.
            "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "revocation_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "introspection_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
            "code_challenge_methods_supported": ["S256"],
            "backchannel_logout_supported": True,
            "backchannel_logout_session_supported": True,
            "frontchannel_logout_supported": False,
            "authorization_response_iss_parameter_supported": True,
            "claims_parameter_supported": True,
            "request_parameter_supported": False,
            "request_uri_parameter_supported": False,
            "ui_locales_supported": ["zh-CN", "en"],
        }
    )
    metadata.validate()
    return dict(metadata)
