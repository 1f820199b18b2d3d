"""Claim mapping: from what QQ told us to the claims a relying party receives.

DESIGN.md "Claims" is the contract: ``sub`` is the OpenID (or UnionID, or a
pairwise value); ``name``/``nickname``/``picture`` come from get_user_info;
nothing QQ fakes (gender by default, birthdate, address) and no guessed e-mail.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import unicodedata
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import scope_to_list

from broker.config import ClaimsConfig, ClientConfig
from broker.oidc.avatars import AvatarUrls
from broker.oidc.models import EndUser

MAX_NICKNAME_CHARS = 128
MAX_PICTURE_CHARS = 1024
#: RFC 3986 characters only (unreserved, reserved and percent escapes).
URL_CHARACTERS = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")
#: QQ's avatar host that also serves https (qq-connect.md §4).
HTTPS_CAPABLE_AVATAR_HOSTS = frozenset({"thirdqq.qlogo.cn"})


class SubjectUnavailable(Exception):
    """The client's subject strategy needs an identifier QQ did not provide."""


def subject_for(
    client: ClientConfig, user: EndUser, default_strategy: str, pairwise_salt: bytes
) -> str:
    """The ``sub`` this client sees for this user (OIDC Core §8)."""
    strategy = client.subject or default_strategy
    if strategy == "openid":
        return user.user_id
    if strategy == "unionid":
        if not user.unionid:
            raise SubjectUnavailable("the client's subject is unionid but QQ returned none")
        return user.unionid
    return pairwise_subject(sector_of(client), user.user_id, pairwise_salt)


def sector_of(client: ClientConfig) -> str:
    """OIDC Core §8.1: the sector is the host of sector_identifier_uri, else of the redirect URI."""
    uri = client.sector_identifier_uri or client.redirect_uris[0]
    return urlsplit(uri).hostname or uri


def pairwise_subject(sector: str, openid: str, salt: bytes) -> str:
    """OIDC Core §8.1: a keyed hash, so the value cannot be linked across sectors."""
    mac = hmac.new(salt, f"{sector}\x00{openid}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def clean_nickname(value: Any) -> str:
    """Nicknames are untrusted UTF-8: drop control and bidi-override characters, cap the length."""
    if not isinstance(value, str):
        return ""
    kept = "".join(ch for ch in value if unicodedata.category(ch) not in {"Cc", "Cf"})
    return kept.strip()[:MAX_NICKNAME_CHARS]


def picture_claim(url: Any, policy: str, avatars: AvatarUrls | None = None) -> str | None:
    """``picture`` per ``claims.picture``: only absolute http(s) URLs ever leave the broker.

    ``https`` upgrades QQ's http avatar host that supports TLS and drops the
    rest (mixed content breaks https relying parties). ``proxy`` turns an avatar
    on QQ's avatar hosts into a signed broker URL (``avatars``), which is https
    whenever the issuer is and hides the upstream URL with any OpenID in it;
    anything else is treated as ``https`` would (and so without ``avatars``).
    """
    if not isinstance(url, str) or len(url) > MAX_PICTURE_CHARS:
        return None
    if not URL_CHARACTERS.fullmatch(url):
        return None  # quotes, spaces, markup: not a URL QQ would send (UP-16)
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[": not a URL
        return None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    if policy == "proxy" and avatars is not None:
        proxied = avatars.proxied(url)
        if proxied is not None:
            return proxied
    if policy == "passthrough" or parts.scheme == "https":
        return url
    if parts.hostname in HTTPS_CAPABLE_AVATAR_HOSTS:
        return "https" + url[len("http") :]
    return None


def reveals_qq_ids(url: str, user: EndUser) -> bool:
    """QQ's older avatar URLs embed the OpenID (``/qqapp/{appid}/{openid}/40``)."""
    lowered = url.lower()
    ids = [user.user_id, user.unionid or ""]
    return any(i and i.lower() in lowered for i in ids) or "/qqapp/" in lowered


def profile_claims(
    user: EndUser,
    claims_config: ClaimsConfig,
    may_see_openid: bool = True,
    avatars: AvatarUrls | None = None,
) -> dict[str, Any]:
    """The ``profile`` scope's claims (OIDC Core §5.4), omitting what QQ left empty.

    A client that must not learn the OpenID (pairwise or UnionID subjects) gets
    no avatar URL that contains it (security-checklist UP-11); a proxied one
    (``claims.picture: proxy``) never does, so every client gets that.
    """
    claims: dict[str, Any] = {}
    nickname = clean_nickname(user.profile.get("nickname"))
    if nickname:
        claims["name"] = nickname
        claims["nickname"] = nickname
    picture = picture_claim(user.profile.get("picture"), claims_config.picture, avatars)
    if picture and (may_see_openid or not reveals_qq_ids(picture, user)):
        claims["picture"] = picture
    if claims_config.gender:
        gender = {"男": "male", "女": "female"}.get(str(user.profile.get("gender", "")))
        if gender:
            claims["gender"] = gender
    return claims


def user_claims(
    *,
    client: ClientConfig,
    user: EndUser,
    scope: str,
    subject: str,
    claims_config: ClaimsConfig,
    requested: set[str] | None = None,
    avatars: AvatarUrls | None = None,
) -> dict[str, Any]:
    """Every claim for this client, user and granted scope, plus those asked for one by
    one with the ``claims`` parameter (OIDC Core §5.5) within the same policies.

    ``avatars`` seals ``picture`` URLs under ``claims.picture: proxy``."""
    claims: dict[str, Any] = {"sub": subject}
    scopes = set(scope_to_list(scope or ""))
    asked = requested or set()
    may_see_openid = subject == user.user_id or client.expose_qq_ids
    profile = profile_claims(user, claims_config, may_see_openid, avatars)
    if "profile" in scopes:
        claims.update(profile)
    else:
        claims.update({name: value for name, value in profile.items() if name in asked})
    if client.email == "synthetic" and ("email" in scopes or "email" in asked):
        claims["email"] = f"{subject}@{claims_config.email_domain}"
        claims["email_verified"] = False
    if client.expose_qq_ids:
        claims["qq_openid"] = user.user_id
        if user.unionid:
            claims["qq_unionid"] = user.unionid
    return claims


def stored_profile(nickname: str, picture: str | None, raw: Mapping[str, Any]) -> dict[str, Any]:
    """What is kept as the user's last known profile: the normalised fields plus QQ's object."""
    return {"nickname": nickname, "picture": picture, "gender": raw.get("gender"), "qq": dict(raw)}
