"""Table definitions (SQLAlchemy Core). Identical on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

clients = sa.Table(
    "clients",
    metadata,
    sa.Column("client_id", sa.String(255), primary_key=True),
    sa.Column("secret_digest", sa.String(128), nullable=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
)

login_transactions = sa.Table(
    "login_transactions",
    metadata,
    sa.Column("state_digest", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(255), nullable=False),
    sa.Column("request_params", sa.JSON, nullable=False),
    # /authorize caps a browser's pending logins by this column (cap_pending_logins).
    sa.Column("browser_digest", sa.String(64), nullable=False, index=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("used", sa.Boolean, nullable=False, default=False),
)

authorization_codes = sa.Table(
    "authorization_codes",
    metadata,
    sa.Column("code_digest", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(255), nullable=False),
    sa.Column("redirect_uri", sa.Text, nullable=False),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("auth_time", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("nonce", sa.Text, nullable=True),
    sa.Column("code_challenge", sa.String(128), nullable=True),
    sa.Column("code_challenge_method", sa.String(16), nullable=True),
    sa.Column("sid", sa.String(64), nullable=True),
    sa.Column("claims_request", sa.JSON, nullable=True),
    # A used code stays (a tombstone) until purged after expiry: a second redemption
    # finds it used and fails (RFC 6749 §4.1.2).
    sa.Column("used", sa.Boolean, nullable=False, default=False),
    # Set when someone presents the code again: tokens it issues later are born revoked.
    sa.Column("replayed", sa.Boolean, nullable=False, default=False, server_default=sa.false()),
)

tokens = sa.Table(
    "tokens",
    metadata,
    sa.Column("token_digest", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(255), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False, index=True),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("issued_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("auth_time", sa.BigInteger, nullable=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
    sa.Column("sid", sa.String(64), nullable=True, index=True),
    sa.Column("family_id", sa.String(64), nullable=True, index=True),
    sa.Column("code_digest", sa.String(64), nullable=True, index=True),
    sa.Column("claims_request", sa.JSON, nullable=True),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("token_digest", sa.String(64), primary_key=True),
    sa.Column("family_id", sa.String(64), nullable=False, index=True),
    sa.Column("client_id", sa.String(255), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False, index=True),
    sa.Column("scope", sa.Text, nullable=False),
    sa.Column("auth_time", sa.BigInteger, nullable=False),
    sa.Column("sid", sa.String(64), nullable=True, index=True),
    sa.Column("issued_at", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    # What purge_expired deletes refresh tokens by (a used link stays until its family ends).
    sa.Column("family_expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("claims_request", sa.JSON, nullable=True),
    # Rotated tokens stay (used) until they expire, so a reuse is recognised (RFC 9700 §4.14.2).
    sa.Column("used", sa.Boolean, nullable=False, default=False),
    sa.Column("revoked", sa.Boolean, nullable=False, default=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("sid", sa.String(64), primary_key=True),
    sa.Column("secret_digest", sa.String(64), nullable=False, unique=True),
    sa.Column("user_id", sa.String(64), nullable=False, index=True),
    sa.Column("auth_time", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("ended", sa.Boolean, nullable=False, default=False),
)

session_clients = sa.Table(
    "session_clients",
    metadata,
    sa.Column("sid", sa.String(64), primary_key=True),
    sa.Column("client_id", sa.String(255), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)

upstream_tokens = sa.Table(
    "upstream_tokens",
    metadata,
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("ciphertext", sa.Text, nullable=False),  # QQ tokens, encrypted (AES-GCM)
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

used_jtis = sa.Table(
    "used_jtis",
    metadata,
    sa.Column("jti_digest", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("user_id", sa.String(64), primary_key=True),
    sa.Column("unionid", sa.String(64), nullable=True, index=True),
    sa.Column("profile", sa.JSON, nullable=False),
    sa.Column("updated_at", sa.BigInteger, nullable=False),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(128), primary_key=True),
    sa.Column("alg", sa.String(16), nullable=False),
    sa.Column("private_key", sa.Text, nullable=False),  # encrypted by the key ring (AES-GCM)
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("activates_at", sa.BigInteger, nullable=False),
    sa.Column("retired_at", sa.BigInteger, nullable=True),
)

broker_secrets = sa.Table(
    "broker_secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),  # encrypted by the key ring (AES-GCM)
)

leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(128), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)
