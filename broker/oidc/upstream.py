"""Upstream-aware refresh: the broker keeps each user's QQ tokens and, per client, asks QQ.

Why this exists: a downstream refresh token outlives the QQ login it came from. QQ access
tokens last 60 days and its refresh tokens are single use, rotated on every refresh, with
the chain ending about 3 months after the login (qq-connect.md §2.3, §6). A user who
revokes the app at QQ, or whose QQ login simply ran out, should not keep getting fresh
broker tokens forever, so ``upstream_check`` (per client, DESIGN.md) decides how much QQ
is asked on each downstream refresh:

* ``off``: never. The downstream refresh token's own lifetimes are the only limit.
* ``cached`` (default): no QQ call while the stored QQ access token is unexpired; once it
  has expired, QQ's refresh grant renews it (§2.3). QQ saying the login is over ends the
  token family. A user with no stored (or no readable) QQ tokens is treated like ``off``:
  there is nothing to renew, and logging everyone out because a row is missing would be
  worse than the staleness ``cached`` already accepts. A QQ outage also fails open: the
  refresh succeeds and the renewal is tried again next time (``cached`` buys availability).
* ``strict``: renew first when the QQ token is near expiry, then ``/oauth2.0/me`` (§2.4)
  must name the same OpenID, then get_user_info (§2.5) refreshes the profile claims. QQ
  saying the login is over ends the family; a QQ outage fails this refresh without ending
  the family (see :class:`TemporarilyUnavailableError`).

"The login is over" means QQ's dead-token codes: 100013–100016 for the access token and
100021 for a used or expired refresh token (§5.1, §7.1 point 8). The connector reports
them as ``message_key == "upstream.token_expired"`` (base.py), so nothing here reads QQ
codes. A dead access token is renewed once through the refresh grant before giving up,
because that is exactly what a refresh token is for ("beyond refresh").

At rest the tokens are sealed with AES-256-GCM, keyed by ``keys/upstream_token_key`` and
bound to the user id as associated data, so a row copied onto another user fails to open.
Token values are never logged: :class:`StoredTokens` keeps them out of ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import InvalidGrantError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.config import Config
from broker.connectors.base import Connector, Identity, UpstreamError, UpstreamTokens
from broker.oidc.claims import stored_profile
from broker.oidc.errors import describe_upstream_error
from broker.storage.base import Store, UserRecord

if TYPE_CHECKING:
    from broker.oidc.grants import ClientUser
    from broker.oidc.models import EndUser

__all__ = [
    "KEY_BYTES",
    "StoredTokens",
    "TemporarilyUnavailableError",
    "UpstreamSessions",
    "open_tokens",
    "seal_tokens",
]

log = logging.getLogger("broker.oidc.upstream")

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # the 96-bit GCM nonce NIST SP 800-38D recommends; random per seal
FORMAT_VERSION = 1  # first byte of the sealed blob, so a key or format change can be told
#: QQ's refresh chain ends about 3 months after the login (qq-connect.md §2.3, marked [?]):
#: only used to date the row (``expires_at``), never to refuse a refresh; QQ decides that.
REFRESH_CHAIN_SECONDS = 7_776_000
#: strict renews this close to expiry: a tenth of the token's life, at most a day. A tenth
#: keeps short-lived tokens from being renewed on every refresh; a day is plenty of slack
#: for a 60-day QQ token (§6) and keeps QQ refresh-grant traffic low.
MAX_RENEW_MARGIN = 86_400
#: cached treats a token this close to expiry as expired (clock skew between us and QQ).
CLOCK_SKEW = 60
#: Refreshes of one user are serialised (QQ refresh tokens are single use); striped locks
#: bound the memory to a constant however many users there are.
_LOCK_STRIPES = 256

_DEAD = "upstream.token_expired"


class TemporarilyUnavailableError(OAuth2Error):  # type: ignore[misc]
    """strict could not reach a verdict from QQ (outage, garbage, misconfiguration).

    Decision: ``temporarily_unavailable`` with HTTP 503, not ``invalid_grant``. RFC 6749
    §5.2 has no code for "try again later" at the token endpoint, but ``invalid_grant``
    tells the relying party that its refresh token is dead, and most libraries then drop
    the session and force a new login: an outage at QQ would log everyone out. The broker
    already answers its own outages (storage) at ``/token`` with this code and 503 (web
    errors), and RFC 6749 §4.1.2.1 defines it for the same meaning at the authorization
    endpoint. The family is not revoked: QQ said nothing about the login.
    """

    error = "temporarily_unavailable"
    status_code = 503


@dataclass(frozen=True)
class StoredTokens:
    """A user's QQ tokens as sealed in the store. Values are kept out of ``repr``."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_at: int  # of the access token: obtained_at + expires_in
    obtained_at: int
    chain_expires_at: int  # end of QQ's refresh chain (estimate, §2.3)

    @classmethod
    def from_upstream(cls, tokens: UpstreamTokens, chain_expires_at: int | None) -> StoredTokens:
        """A login starts a refresh chain; a QQ refresh continues the old one (§2.3)."""
        return cls(
            access_token=tokens.access_token,
            refresh_token=tokens.refresh_token,
            expires_at=tokens.obtained_at + tokens.expires_in,
            obtained_at=tokens.obtained_at,
            chain_expires_at=chain_expires_at or tokens.obtained_at + REFRESH_CHAIN_SECONDS,
        )

    @property
    def row_expires_at(self) -> int:
        """When the row is worthless: the chain's end if it can be renewed, else the token's."""
        return (
            max(self.expires_at, self.chain_expires_at) if self.refresh_token else self.expires_at
        )

    def expires_within(self, now: int, margin: int) -> bool:
        return now >= self.expires_at - margin

    def renew_margin(self) -> int:
        """strict's head start: a tenth of the token's life, at most :data:`MAX_RENEW_MARGIN`."""
        return min(MAX_RENEW_MARGIN, max(0, self.expires_at - self.obtained_at) // 10)


# --------------------------------------------------------------------------- sealing


def seal_tokens(key: bytes, user_id: str, tokens: StoredTokens) -> str:
    """``base64url(version || nonce || AES-GCM(json, aad=user_id))``: text for a Text column."""
    plain = json.dumps(
        {
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "expires_at": tokens.expires_at,
            "obtained_at": tokens.obtained_at,
            "chain_expires_at": tokens.chain_expires_at,
        },
        separators=(",", ":"),
    ).encode("utf-8")
    nonce = os.urandom(NONCE_BYTES)
    sealed = AESGCM(key).encrypt(nonce, plain, user_id.encode("utf-8"))
    blob = bytes([FORMAT_VERSION]) + nonce + sealed
    return base64.urlsafe_b64encode(blob).decode("ascii")


def open_tokens(key: bytes, user_id: str, text: str) -> StoredTokens | None:
    """The tokens sealed for ``user_id``, or None for anything that does not open cleanly:
    another key, another user's row, a tampered or truncated blob, an unknown format."""
    try:
        blob = base64.urlsafe_b64decode(text.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[0] != FORMAT_VERSION:
        return None
    nonce, sealed = blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :]
    try:
        plain = AESGCM(key).decrypt(nonce, sealed, user_id.encode("utf-8"))
        data = json.loads(plain)
    except (InvalidTag, ValueError):
        return None
    return _tokens_from_json(data)


def _tokens_from_json(data: Any) -> StoredTokens | None:
    """Only well-typed rows come back; an authenticated but odd row is still refused."""
    if not isinstance(data, dict):
        return None
    access, refresh = data.get("access_token"), data.get("refresh_token")
    if not isinstance(access, str) or not (refresh is None or isinstance(refresh, str)):
        return None
    numbers: list[int] = []
    for name in ("expires_at", "obtained_at", "chain_expires_at"):
        value = data.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        numbers.append(value)
    expires_at, obtained_at, chain_expires_at = numbers
    return StoredTokens(access, refresh, expires_at, obtained_at, chain_expires_at)


# --------------------------------------------------------------------------- policy


class _LoginOver(Exception):
    """This login cannot continue; ``revoke`` says whether QQ (not our own state) said so."""

    def __init__(self, reason: str, *, revoke: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.revoke = revoke


def _is_dead(err: UpstreamError) -> bool:
    """QQ's "log in again" answers (100013–100016, 100021; qq-connect.md §5.1, §7.1.8)."""
    return err.message_key == _DEAD


class UpstreamSessions:
    """QQ tokens at rest (encrypted) and the refresh-time check of ``upstream_check``."""

    def __init__(self, config: Config, store: Store, connector: Connector, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the upstream token key must be {KEY_BYTES} bytes")
        self.config = config
        self.store = store
        self.connector = connector
        self._key = key
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    def __repr__(self) -> str:
        return f"UpstreamSessions(connector={self.connector!r})"  # never the key

    # -- after a QQ login ------------------------------------------------------------

    def remember(self, identity: Identity) -> None:
        """Keep the QQ tokens of a fresh login: the newest login's tokens win (§6)."""
        tokens = StoredTokens.from_upstream(identity.tokens, chain_expires_at=None)
        with self._lock_for(identity.openid):
            self._save(identity.openid, tokens)

    # -- on a downstream refresh -----------------------------------------------------

    def on_refresh(self, principal: ClientUser, family_id: str) -> EndUser:
        """The user as of this refresh; raises InvalidGrantError (after revoking the
        family) when QQ says the login is over."""
        policy = principal.client.config.upstream_check
        user = principal.user
        if policy == "off":
            return user
        client_id = principal.client.client_id
        with self._lock_for(user.user_id):
            try:
                return self._strict(user) if policy == "strict" else self._cached(user)
            except _LoginOver as over:
                self._end(family_id, client_id, over.reason, revoke=over.revoke)
                raise InvalidGrantError(over.reason) from None
            except UpstreamError as err:
                if _is_dead(err):
                    self._end(family_id, client_id, str(err), revoke=True)
                    raise InvalidGrantError(describe_upstream_error(err)) from None
                log.warning("strict refresh: no verdict from QQ (client=%s): %s", client_id, err)
                raise TemporarilyUnavailableError(describe_upstream_error(err)) from None

    def _cached(self, user: EndUser) -> EndUser:
        """Renew only an expired QQ token; everything but "login over" lets the refresh pass."""
        tokens = self._load(user.user_id)
        if tokens is None or not tokens.expires_within(_now(), CLOCK_SKEW):
            return user
        try:
            self._renew(user.user_id, tokens)
        except UpstreamError as err:
            if _is_dead(err):
                raise
            log.warning("cached refresh: QQ token not renewed, retried next time: %s", err)
        return user

    def _strict(self, user: EndUser) -> EndUser:
        """Renew when near expiry, prove the token is the user's at /me, refresh the profile."""
        tokens = self._load(user.user_id)
        if tokens is None:
            # Nothing to check with: fail closed, but QQ said nothing, so keep the family.
            raise _LoginOver("No QQ authorization is on record; log in again.", revoke=False)
        tokens, attempted = self._renew_if_due(user.user_id, tokens)
        tokens, openid = self._whose(user.user_id, tokens, renew=not attempted)
        if openid != user.user_id:
            raise _LoginOver("The QQ authorization belongs to another user.", revoke=True)
        return self._with_profile(user, tokens)

    def _renew_if_due(self, user_id: str, tokens: StoredTokens) -> tuple[StoredTokens, bool]:
        """strict renews ahead of expiry; returns the tokens and whether renewal was tried.

        The access token is still valid here, so a failed renewal is not a verdict: /me
        gives it next, with the old token (a dead refresh token surfaces once that expires).
        """
        if not tokens.expires_within(_now(), tokens.renew_margin()):
            return tokens, False
        try:
            return self._renew(user_id, tokens), True
        except (UpstreamError, _LoginOver) as err:
            log.warning("strict refresh: early QQ token renewal failed: %s", err)
            return tokens, True

    def _whose(
        self, user_id: str, tokens: StoredTokens, *, renew: bool
    ) -> tuple[StoredTokens, str]:
        """``/me`` for the stored token; a dead token is renewed (at most once) and re-asked."""
        try:
            openid, _ = self.connector.check_token(tokens.access_token)
        except UpstreamError as err:
            if not renew or not _is_dead(err):
                raise
            tokens = self._renew(user_id, tokens)
            openid, _ = self.connector.check_token(tokens.access_token)
        return tokens, openid

    def _with_profile(self, user: EndUser, tokens: StoredTokens) -> EndUser:
        """Profile claims from get_user_info (§2.5, §4). The token was just proven valid, so
        only a dead-token answer ends the login; any other failure keeps the last profile."""
        try:
            nickname, picture, raw = self.connector.user_info(tokens.access_token, user.user_id)
        except UpstreamError as err:
            if _is_dead(err):
                raise
            log.warning("strict refresh: profile not updated, keeping the last one: %s", err)
            return user
        profile = stored_profile(nickname, picture, raw)
        # unionid None keeps the stored one (Store.upsert_user); /me was asked without it.
        self.store.upsert_user(UserRecord(user.user_id, user.unionid, profile, _now()))
        return replace(user, profile=profile)

    def _renew(self, user_id: str, tokens: StoredTokens) -> StoredTokens:
        """Spend the single-use QQ refresh token and store the rotated pair (§2.3, §7.1.8).

        Another instance may have rotated it a moment ago (our lock is per process): QQ
        then answers 100021, and the row already holds the new pair, which is used instead.
        """
        if tokens.refresh_token is None:
            raise _LoginOver("The QQ authorization expired; log in again.", revoke=True)
        try:
            fresh = self.connector.refresh(tokens.refresh_token)
        except UpstreamError as err:
            current = self._load(user_id) if _is_dead(err) else None
            if current is not None and current.refresh_token != tokens.refresh_token:
                return current
            raise
        renewed = StoredTokens.from_upstream(fresh, chain_expires_at=tokens.chain_expires_at)
        self._save(user_id, renewed)
        return renewed

    def _end(self, family_id: str, client_id: str, reason: str, *, revoke: bool) -> None:
        if revoke:
            self.store.revoke_family(family_id)
        log.info(
            "upstream check ended a refresh (client=%s, family revoked=%s): %s",
            client_id, revoke, reason,
        )  # fmt: skip

    # -- storage ---------------------------------------------------------------------

    def _save(self, user_id: str, tokens: StoredTokens) -> None:
        sealed = seal_tokens(self._key, user_id, tokens)
        self.store.save_upstream_tokens(user_id, sealed, tokens.row_expires_at, _now())

    def _load(self, user_id: str) -> StoredTokens | None:
        row = self.store.get_upstream_tokens(user_id)
        if row is None:
            return None
        tokens = open_tokens(self._key, user_id, row[0])
        if tokens is None:
            # Wrong key (keys/ not shared between instances?) or a tampered row.
            log.error("stored QQ tokens do not decrypt with upstream_token_key; ignoring them")
        return tokens

    def _lock_for(self, user_id: str) -> threading.Lock:
        return self._locks[zlib.crc32(user_id.encode("utf-8")) % _LOCK_STRIPES]


def _now() -> int:
    return int(time.time())
