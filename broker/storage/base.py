"""The store interface: what the broker keeps, independent of the database.

Secrets are never stored in the clear: login states, authorization codes and
access tokens are looked up by their SHA-256 digest (see :func:`digest`), so a
leaked database cannot be replayed against the broker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class StorageError(Exception):
    """The database failed (unreachable, locked, broken). Maps to 503 upstream."""


def digest(secret: str) -> str:
    """Lookup key for a high-entropy secret (state, code, token): hex SHA-256.

    A plain hash suffices because every such value carries >= 256 random bits;
    a password hash would only slow the token endpoint down (DESIGN.md).
    """
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ClientRecord:
    """A registered relying party as stored (the secret only as a digest)."""

    client_id: str
    secret_digest: str | None
    metadata: Mapping[str, Any]
    source: str = "config"


@dataclass(frozen=True)
class LoginTransaction:
    """A pending QQ login: the relying party's validated request, keyed by our upstream state."""

    state_digest: str
    client_id: str
    request_params: Mapping[str, str]
    browser_digest: str
    created_at: int
    expires_at: int


@dataclass(frozen=True)
class AuthorizationCodeRecord:
    """An issued authorization code and everything the token step must check (RFC 6749 §4.1.3)."""

    code_digest: str
    client_id: str
    redirect_uri: str
    scope: str
    user_id: str
    auth_time: int
    expires_at: int
    nonce: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    sid: str | None = None
    claims_request: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TokenRecord:
    """An issued access token (opaque, stored as a digest)."""

    token_digest: str
    client_id: str
    user_id: str
    scope: str
    issued_at: int
    expires_at: int
    auth_time: int
    revoked: bool = False
    sid: str | None = None
    family_id: str | None = None
    code_digest: str | None = None
    claims_request: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RefreshTokenRecord:
    """A refresh token (stored as a digest), one link of a rotation family (RFC 9700 §4.14.2)."""

    token_digest: str
    family_id: str
    client_id: str
    user_id: str
    scope: str
    auth_time: int
    issued_at: int
    expires_at: int  # idle expiry of this link
    family_expires_at: int  # absolute expiry of the family
    sid: str | None = None
    claims_request: Mapping[str, Any] | None = None
    used: bool = False
    revoked: bool = False


@dataclass(frozen=True)
class SessionRecord:
    """A broker SSO session: ``sid`` is public (ID tokens), the cookie secret only a digest."""

    sid: str
    secret_digest: str
    user_id: str
    auth_time: int
    expires_at: int
    ended: bool = False


@dataclass(frozen=True)
class UserRecord:
    """What the broker knows of a QQ user: ids and the last known profile."""

    user_id: str  # the QQ OpenID for this app
    unionid: str | None
    profile: Mapping[str, Any] = field(default_factory=dict)
    updated_at: int = 0


@dataclass(frozen=True)
class SigningKeyRecord:
    """A signing key kept in the database (``keys.storage: database``).

    ``private_key`` is opaque here: the key ring encrypts it before it is stored.
    The key is published from ``created_at`` and signs from ``activates_at``;
    ``retired_at`` (set by an operator) withdraws it from JWKS at once.
    """

    kid: str
    alg: str
    private_key: str = field(repr=False)
    created_at: int
    activates_at: int
    retired_at: int | None = None


@dataclass(frozen=True)
class Revocation:
    """What a bulk revocation reached: the *live* rows it revoked, voided or ended.

    Rows that had already expired or been revoked are revoked too where it matters, but
    not counted: the numbers tell an operator what stopped working because of them.
    """

    access_tokens: int = 0
    refresh_tokens: int = 0
    codes: int = 0
    sessions: int = 0


@dataclass(frozen=True)
class ClientActivity:
    """One client's live sessions and tokens for a user (counts only, never tokens)."""

    client_id: str
    sessions: int = 0
    access_tokens: int = 0
    refresh_tokens: int = 0


@dataclass(frozen=True)
class UserActivity:
    """What a user has live at the broker: sessions, and per client sessions and tokens."""

    sessions: int
    clients: tuple[ClientActivity, ...] = ()


class Store(Protocol):
    """Storage operations the broker needs; every backend passes the same conformance tests."""

    def create_schema(self) -> None: ...

    def sync_clients(self, clients: Sequence[ClientRecord]) -> None:
        """Make the config-sourced clients exactly ``clients`` (others untouched)."""

    def get_client(self, client_id: str) -> ClientRecord | None: ...

    def list_clients(self) -> list[ClientRecord]:
        """Every stored client (config and command-line ones), by client id."""

    def add_client(self, client: ClientRecord, now: int) -> bool:
        """Store a new client; False (nothing changed) if a client with its id exists.

        Tokens left by an earlier client of the same id are revoked in the same
        transaction: a new registration never inherits them.
        """

    def delete_client(self, client_id: str, now: int) -> Revocation | None:
        """Remove a client that is not from the config and revoke its tokens, atomically;
        None if there is no such client (config clients are never deleted here)."""

    def set_client_secret(self, client_id: str, secret_digest: str) -> bool:
        """Replace the secret digest of a client that is not from the config; False if none."""

    def revoke_client_tokens(self, client_id: str, now: int) -> Revocation:
        """Revoke every access and refresh token of a client (whole families) and void its
        unredeemed codes; tokens still being issued from them are born revoked."""

    def revoke_user_tokens(self, user_id: str, now: int) -> Revocation:
        """Like :meth:`revoke_client_tokens` for one user, ending the user's sessions too
        (else single sign-on would hand out new tokens at once)."""

    def user_activity(self, user_id: str, now: int) -> UserActivity:
        """Counts of the user's live sessions and tokens, per client."""

    def create_login(self, tx: LoginTransaction) -> None: ...

    def consume_login(self, state_digest: str, browser_digest: str) -> LoginTransaction | None:
        """Atomically mark a login used and return it, only for the browser that started it.

        None if unknown, already used, or bound to another browser (so a leaked
        callback URL cannot be burned elsewhere). Expiry is left to the caller.
        """

    def login_status(self, state_digest: str) -> str:
        """Why a login could not be consumed: ``unknown``, ``used`` or ``pending``."""

    def cap_pending_logins(self, browser_digest: str, keep: int) -> None:
        """Drop this browser's oldest pending logins beyond ``keep``."""

    def save_code(self, code: AuthorizationCodeRecord) -> None: ...

    def consume_code(self, code_digest: str, now: int) -> AuthorizationCodeRecord | None:
        """Atomically redeem a code: exactly one caller gets it, and only before it expires."""

    def save_token(self, token: TokenRecord) -> None: ...

    def save_issued_tokens(self, access: TokenRecord, refresh: RefreshTokenRecord | None) -> None:
        """Store one token response atomically; born revoked when its code was replayed, its
        family revoked or its session ended before (or while) it was saved."""

    def get_token(self, token_digest: str) -> TokenRecord | None: ...

    def upsert_user(self, user: UserRecord) -> None:
        """Insert or update; a ``None`` UnionID keeps the stored one."""

    def get_user(self, user_id: str) -> UserRecord | None: ...

    def find_user_by_unionid(self, unionid: str) -> UserRecord | None: ...

    # -- refresh tokens (rotation with reuse detection) --

    def save_refresh_token(self, token: RefreshTokenRecord) -> None: ...

    def get_refresh_token(self, token_digest: str) -> RefreshTokenRecord | None: ...

    def rotate_refresh_token(self, token_digest: str, now: int) -> RefreshTokenRecord | None:
        """Atomically mark a live token used and return it; None if unknown, used, revoked
        or expired. Exactly one of several racing callers gets it."""

    def revoke_family(self, family_id: str) -> None:
        """Revoke every refresh token of the family and the access tokens issued from it."""

    def revoke_access_token(self, token_digest: str) -> None: ...

    def revoke_tokens_of_code(self, code_digest: str) -> None:
        """Revoke what a code issued (a replayed code, RFC 6749 §4.1.2)."""

    def code_was_used(self, code_digest: str) -> bool: ...

    # -- sessions --

    def create_session(self, session: SessionRecord) -> None: ...

    def find_session(self, secret_digest: str, now: int) -> SessionRecord | None:
        """The live (not ended, not expired) session whose cookie secret has this digest."""

    def get_session(self, sid: str) -> SessionRecord | None: ...

    def end_session(self, sid: str) -> list[str]:
        """End a session and revoke its tokens; returns the clients that took part in it."""

    def add_session_client(self, sid: str, client_id: str, expires_at: int) -> None: ...

    # -- upstream tokens, replay cache --

    def save_upstream_tokens(
        self, user_id: str, ciphertext: str, expires_at: int, now: int
    ) -> None:
        """Keep the user's latest QQ tokens (already encrypted by the caller)."""

    def get_upstream_tokens(self, user_id: str) -> tuple[str, int] | None: ...

    def remember_jti(self, jti_digest: str, expires_at: int, now: int) -> bool:
        """Record a one-time assertion id; False if it was seen before (replay)."""

    # -- keys, shared secrets, coordination between instances --

    def list_signing_keys(self) -> list[SigningKeyRecord]:
        """Every stored signing key, oldest ``activates_at`` first."""

    def add_signing_key(self, key: SigningKeyRecord) -> None: ...

    def retire_signing_key(self, kid: str, now: int) -> bool:
        """Withdraw a key; False if no such (unretired) key."""

    def get_or_create_secret(self, name: str, value: str) -> str:
        """The stored value of ``name``, storing ``value`` first if there is none.

        Instances starting together all get the value of whichever stored first.
        """

    def acquire_lease(self, name: str, holder: str, now: int, ttl: int) -> bool:
        """Take (or renew) the lease ``name`` for ``ttl`` seconds; True for exactly one
        holder while the lease is live, so only one instance runs a scheduled job."""

    def purge_expired(self, now: int, batch: int = 500) -> int:
        """Delete expired logins, codes and tokens, ``batch`` rows per transaction (short
        locks; safe on every instance at once); returns how many rows went."""

    def schema_revision(self) -> tuple[str | None, str]:
        """(the database's schema revision, the revision this version needs)."""

    def ping(self) -> None:
        """Raise StorageError unless the database answers."""

    def close(self) -> None: ...
