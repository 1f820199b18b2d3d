"""Access token values: opaque by default, RFC 9068 JWTs for clients that ask for them.

(Being filled in: JWT access tokens per client.)
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from broker.oidc.server import ProviderContext


class AccessTokenFactory:
    """Authlib's ``access_token_generator``: called as (client, grant_type, user, scope)."""

    def __init__(self, ctx: ProviderContext) -> None:
        self.ctx = ctx

    def __call__(self, client: Any, grant_type: str, user: Any, scope: str) -> str:
        return secrets.token_urlsafe(32)
