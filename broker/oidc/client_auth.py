"""Client authentication methods beyond Authlib's defaults (being filled in: private_key_jwt)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from broker.oidc.server import BrokerAuthorizationServer


def register_client_auth(server: BrokerAuthorizationServer) -> None:
    """Register the extra client authentication methods on ``server``."""
