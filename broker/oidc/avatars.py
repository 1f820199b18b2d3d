"""Signed avatar URLs for ``claims.picture: proxy`` (DESIGN.md "Claims", checklist UP-11/UP-12).

QQ's avatar URLs are ``http://`` (mixed content on an https relying party) and some
embed the OpenID (``/qzapp/{appid}/{openid}/100``), which pairwise and UnionID clients
must not learn. With ``proxy`` the ``picture`` claim becomes ``{issuer}/avatar/<token>``,
and :mod:`broker.web.avatar` serves the image from there.

The token is the upstream URL and an expiry sealed with AES-256-GCM: the GCM tag is the
MAC (a changed byte fails), and the encryption keeps the URL, hence the OpenID, out of
sight. It is stateless, so every instance opens a token any other one made; the key is
the shared secret ``avatar_url_key`` kept beside the signing keys. Nonces are random
(96 bits), so the same avatar gives different URLs to different clients: a URL is no
cross-client identifier.

This module decides which URLs may be proxied at all (QQ's avatar domain, plus
development-only ``claims.avatar_hosts``); the web layer checks again before it fetches.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The route :mod:`broker.web.avatar` serves, under the issuer.
AVATAR_PATH = "/avatar/"
#: Name of the shared secret (``keys/avatar_url_key`` or the database) that seals tokens.
SECRET_NAME = "avatar_url_key"
#: How long a ``picture`` URL works: RPs get a fresh one at each login, refresh and
#: userinfo call, so a day covers a page that shows it, not a copy kept for months.
URL_LIFETIME = 86_400
#: QQ's avatar hosts are all under this domain (qq-connect.md §4: q., thirdqq., qzapp.).
QQ_AVATAR_DOMAINS = ("qlogo.cn",)
#: Tokens longer than this are not ours (a 1024-character URL gives about 1400).
MAX_TOKEN_CHARS = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}

_VERSION = 1
_NONCE_BYTES = 12
_EXPIRY_BYTES = 8
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


class AvatarTokenInvalid(Exception):
    """Not a token this broker sealed (tampered, truncated, another key): 404."""


class AvatarTokenExpired(Exception):
    """A genuine token past its expiry: 410, the RP should read ``picture`` again."""


@dataclass(frozen=True)
class AvatarHosts:
    """Where avatars may be fetched from.

    ``domains``: the domains (and their subdomains) on the scheme's default port; their
    addresses must be public, which the fetcher checks after resolving. ``extra``:
    ``host:port`` pairs from ``claims.avatar_hosts`` (development only, validated in
    :mod:`broker.config`), which may resolve to loopback (the emulator).
    """

    domains: tuple[str, ...] = QQ_AVATAR_DOMAINS
    extra: frozenset[str] = frozenset()

    @classmethod
    def with_extra(cls, extra: Iterable[str]) -> AvatarHosts:
        return cls(extra=frozenset(host.lower() for host in extra))

    def allows(self, url: str) -> bool:
        """Whether ``url`` is an http(s) URL on an allowed host and port, without userinfo."""
        parts = split_url(url)
        if parts is None:
            return False
        host, port = parts.hostname or "", effective_port(parts)
        if self.is_extra(host, port):
            return True
        if port != DEFAULT_PORTS[parts.scheme]:
            return False
        return any(host == d or host.endswith("." + d) for d in self.domains)

    def is_extra(self, host: str, port: int) -> bool:
        """A development host, exempt from the public-address check."""
        return f"{host.lower()}:{port}" in self.extra


def split_url(url: str) -> SplitResult | None:
    """``url`` split, if it is an absolute http(s) URL with a host and no credentials."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None:
        return None
    return parts


def effective_port(parts: SplitResult) -> int:
    """The URL's port, or its scheme's default."""
    return parts.port or DEFAULT_PORTS[parts.scheme]


class AvatarUrls:
    """Seals upstream avatar URLs into broker URLs and opens them again."""

    def __init__(
        self,
        issuer: str,
        secret: bytes,
        hosts: AvatarHosts | None = None,
        lifetime: int = URL_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if len(secret) != 32:
            raise ValueError("the avatar URL key must be 32 bytes")
        self.base = issuer.rstrip("/") + AVATAR_PATH
        self.hosts = hosts or AvatarHosts()
        self.lifetime = lifetime
        self._aead = AESGCM(secret)
        # Bound to the issuer: a token from another deployment never opens here.
        self._aad = f"qq-oidc-broker avatar v{_VERSION} {issuer.rstrip('/')}".encode()
        self._clock = clock

    def proxied(self, upstream_url: str) -> str | None:
        """The broker URL for an allowed avatar URL, or ``None`` (not ours to fetch)."""
        if not self.hosts.allows(upstream_url):
            return None
        return self.base + self.seal(upstream_url)

    def seal(self, upstream_url: str, expires_at: int | None = None) -> str:
        """A token for ``upstream_url``, valid until ``expires_at`` (default: the lifetime).

        No allow-list check here: :meth:`proxied` does that for claims, and the fetcher
        checks every opened URL again, so a sealed foreign URL is still never fetched.
        """
        expiry = int(self._clock()) + self.lifetime if expires_at is None else expires_at
        nonce = os.urandom(_NONCE_BYTES)
        plain = expiry.to_bytes(_EXPIRY_BYTES, "big", signed=True) + upstream_url.encode()
        sealed = bytes([_VERSION]) + nonce + self._aead.encrypt(nonce, plain, self._aad)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, token: str) -> tuple[str, int]:
        """``(upstream_url, expires_at)`` of a token; raises :class:`AvatarTokenInvalid`
        or :class:`AvatarTokenExpired`."""
        if len(token) > MAX_TOKEN_CHARS or not _TOKEN_CHARS.fullmatch(token):
            raise AvatarTokenInvalid("not a token")
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise AvatarTokenInvalid("not base64url") from None
        if len(raw) < 1 + _NONCE_BYTES + _EXPIRY_BYTES + 16 or raw[0] != _VERSION:
            raise AvatarTokenInvalid("wrong version or length")
        nonce, sealed = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        try:
            plain = self._aead.decrypt(nonce, sealed, self._aad)
        except InvalidTag:
            raise AvatarTokenInvalid("tag mismatch") from None
        expires_at = int.from_bytes(plain[:_EXPIRY_BYTES], "big", signed=True)
        try:
            url = plain[_EXPIRY_BYTES:].decode("utf-8")
        except UnicodeDecodeError:
            raise AvatarTokenInvalid("not UTF-8") from None
        if self._clock() >= expires_at:
            raise AvatarTokenExpired("expired")
        return url, expires_at
