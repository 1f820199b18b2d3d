"""Persistence: the store interface and its SQLAlchemy backend.

All SQL lives in this package; the rest of the broker sees only :class:`Store`
and the record dataclasses, so a backend can be swapped without touching the
protocol code.
"""

from broker.storage.base import (
    AuthorizationCodeRecord,
    ClientRecord,
    LoginTransaction,
    StorageError,
    Store,
    TokenRecord,
    UserRecord,
)
from broker.storage.sql import SQLStore

__all__ = [
    "AuthorizationCodeRecord",
    "ClientRecord",
    "LoginTransaction",
    "SQLStore",
    "StorageError",
    "Store",
    "TokenRecord",
    "UserRecord",
]
