"""Upstream-aware refresh: the broker keeps each user's QQ tokens and, per client, asks QQ.

(Being filled in: encrypted storage of QQ tokens and the strict/cached/off policies.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.config import Config
from broker.connectors.base import Connector, Identity
from broker.storage.base import Store

if TYPE_CHECKING:
    from broker.oidc.grants import ClientUser
    from broker.oidc.models import EndUser


class UpstreamSessions:
    """QQ tokens at rest (encrypted) and the refresh-time check of ``upstream_check``."""

    def __init__(self, config: Config, store: Store, connector: Connector, key: bytes) -> None:
        self.config = config
        self.store = store
        self.connector = connector
        self.key = key

    def remember(self, identity: Identity) -> None:
        """Keep the QQ tokens of a fresh login."""

    def on_refresh(self, principal: ClientUser, family_id: str) -> EndUser:
        """The user as of this refresh; raises InvalidGrantError (after revoking the
        family) when QQ says the login is over."""
        return principal.user
