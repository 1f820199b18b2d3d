"""Token revocation (RFC 7009) and introspection (RFC 7662) (being filled in)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.oidc.server import BrokerAuthorizationServer


def register_token_endpoints(server: BrokerAuthorizationServer) -> None:
    """Register the revocation and introspection endpoints on ``server``."""
