"""The upstream connector interface, kept small like Dex's connectors.

Data flows web -> oidc -> connectors (DESIGN.md). Everything above this package sees only
the types defined here: an :class:`Identity` after a login, :class:`UpstreamTokens` after a
refresh, and an :class:`UpstreamError` subclass when a step fails. Pages, the token endpoint
and ``doctor`` branch on ``oauth_error`` / ``message_key`` and never parse QQ's codes or
bodies; those wire quirks live only in :mod:`broker.connectors.qq`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

__all__ = [
    "MESSAGE_KEYS",
    "OAUTH_ERRORS",
    "Connector",
    "Identity",
    "UpstreamCancelled",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamRejected",
    "UpstreamTokens",
    "UpstreamUnavailable",
]

#: OAuth error codes an :class:`UpstreamError` may carry. ``invalid_grant`` only comes out of
#: refresh-time calls (the token endpoint); login-time failures use the authorization
#: endpoint's codes (RFC 6749 section 4.1.2.1).
OAUTH_ERRORS = frozenset(
    {"access_denied", "temporarily_unavailable", "server_error", "invalid_grant"}
)

#: Stable keys for user-facing text (the web layer translates them, zh-CN and en).
MESSAGE_KEYS = frozenset(
    {
        "upstream.cancelled",
        "upstream.unavailable",
        "upstream.misconfigured",
        "upstream.rejected",
        "upstream.protocol",
        "upstream.code_invalid",
        "upstream.token_expired",
        "upstream.unionid_not_enabled",
    }
)


@dataclass(frozen=True)
class UpstreamTokens:
    """Upstream (QQ) tokens as the broker stores them.

    The token values are left out of ``repr`` so that logging an :class:`Identity` or a
    token record never writes a live QQ token into a log file.
    """

    access_token: str = field(repr=False)
    refresh_token: str | None = field(repr=False)
    expires_in: int  # seconds; QQ sends a string under fmt=json (qq-connect.md section 3.1)
    obtained_at: int  # unix time


@dataclass(frozen=True)
class Identity:
    """Who logged in upstream, as the broker needs it. Never contains the app key."""

    openid: str
    unionid: str | None
    nickname: str  # "" when QQ gives none; never unique (qq-connect.md section 4)
    picture: str | None  # figureurl_qq_2, else figureurl_qq_1, untouched (http://)
    # The get_user_info object minus ret/msg, kept as the "last known profile". A plain dict
    # so storage can JSON-encode it; excluded from hashing because dicts are unhashable.
    profile: Mapping[str, Any] = field(hash=False)
    tokens: UpstreamTokens


def _ascii(text: str) -> str:
    """Make text safe for ASCII-only log lines and exception messages."""
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _rebuild(cls: type[UpstreamError], state: dict[str, Any]) -> UpstreamError:
    """Unpickle helper: exceptions with keyword-only ``__init__`` need it."""
    return cls(**state)


class UpstreamError(Exception):
    """A failed upstream step, typed so pages and doctor never parse QQ codes.

    ``str(error)`` is ASCII and safe to log: it carries the operator hint, the endpoint and
    QQ's numeric code, never a token, an authorization code, the app key or a raw body.
    QQ's own (often Chinese) text is kept apart in ``upstream_message`` for logs.
    """

    default_oauth_error: ClassVar[str] = "server_error"
    default_message_key: ClassVar[str] = "upstream.rejected"

    oauth_error: str
    message_key: str
    hint: str
    upstream_code: int | None
    upstream_message: str | None
    endpoint: str | None

    def __init__(
        self,
        *,
        oauth_error: str | None = None,
        message_key: str | None = None,
        hint: str,
        upstream_code: int | None = None,
        upstream_message: str | None = None,
        endpoint: str | None = None,
    ) -> None:
        self.oauth_error = oauth_error or self.default_oauth_error
        self.message_key = message_key or self.default_message_key
        self.hint = _ascii(hint)
        self.upstream_code = upstream_code
        self.upstream_message = upstream_message
        self.endpoint = endpoint
        super().__init__(self._text())

    def _text(self) -> str:
        details = []
        if self.endpoint:
            details.append(f"endpoint={_ascii(self.endpoint)}")
        if self.upstream_code is not None:
            details.append(f"qq_code={self.upstream_code}")
        return f"{self.hint} [{', '.join(details)}]" if details else self.hint

    def __str__(self) -> str:
        return self._text()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(oauth_error={self.oauth_error!r}, "
            f"message_key={self.message_key!r}, upstream_code={self.upstream_code!r}, "
            f"endpoint={self.endpoint!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        state = {
            "oauth_error": self.oauth_error,
            "message_key": self.message_key,
            "hint": self.hint,
            "upstream_code": self.upstream_code,
            "upstream_message": self.upstream_message,
            "endpoint": self.endpoint,
        }
        return (_rebuild, (type(self), state))


class UpstreamCancelled(UpstreamError):
    """The user cancelled at QQ (``usercancel=1``, or a callback without a code)."""

    default_oauth_error = "access_denied"
    default_message_key = "upstream.cancelled"


class UpstreamUnavailable(UpstreamError):
    """QQ could not be reached in time: timeout, connection error, HTTP 5xx, oversized body."""

    default_oauth_error = "temporarily_unavailable"
    default_message_key = "upstream.unavailable"


class UpstreamRejected(UpstreamError):
    """QQ answered with an error code; oauth_error and message_key come from the code table."""


class UpstreamProtocolError(UpstreamError):
    """QQ's body was not what it claims: HTML, garbage, missing fields, a foreign client_id."""

    default_message_key = "upstream.protocol"


@runtime_checkable
class Connector(Protocol):
    """An upstream identity provider, as the OIDC layer drives it."""

    name: str

    def authorization_url(
        self, *, redirect_uri: str, state: str, display: str | None = None
    ) -> str:
        """The upstream authorize URL to redirect the browser to."""
        ...

    def parse_callback(self, args: Mapping[str, str]) -> str:
        """Return the upstream code from the callback query (already de-duplicated).

        Raises UpstreamCancelled when the user cancelled or no code came back, and
        UpstreamProtocolError for a code that cannot be genuine.
        """
        ...

    def exchange(self, *, code: str, redirect_uri: str, want_unionid: bool = False) -> Identity:
        """Turn a callback code into the logged-in identity (redirect_uri as authorized)."""
        ...

    def refresh(self, refresh_token: str) -> UpstreamTokens:
        """Use (and so consume) an upstream refresh token; returns the rotated tokens."""
        ...

    def check_token(self, access_token: str, want_unionid: bool = False) -> tuple[str, str | None]:
        """Whom a stored access token belongs to: ``(openid, unionid)`` (strict refresh)."""
        ...

    def user_info(self, access_token: str, openid: str) -> tuple[str, str | None, dict[str, Any]]:
        """The current profile for a stored access token: ``(nickname, picture, profile)``."""
        ...
