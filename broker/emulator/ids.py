"""Identifier formats of QQ Connect (qq-connect.md §6, §8).

Everything QQ hands out is 32 upper-case hex characters; unionid adds a ``UID_`` prefix.
openid and unionid are HMACs so they are stable across restarts, differ per app id
(openid) and agree across one developer's apps (unionid), exactly like the real thing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def _upper_hex32(key: str, message: str) -> str:
    digest = hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()[:32].upper()


def openid_for(app_id: str, user_id: str) -> str:
    """openid = UPPER_HEX32(HMAC-SHA256(app_id, user)): one per (user, app) (§6)."""
    return _upper_hex32(app_id, user_id)


def unionid_for(developer_id: str, user_id: str) -> str:
    """unionid = "UID_" + UPPER_HEX32(HMAC(developer, user)), shared across apps (§6)."""
    return "UID_" + _upper_hex32(developer_id, user_id)


def new_token() -> str:
    """A fresh code / access_token / refresh_token: 32 random upper-case hex (§6)."""
    return secrets.token_hex(16).upper()
