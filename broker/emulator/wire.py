"""QQ Connect wire formats: error texts, JSONP/form/JSON bodies, headers (qq-connect.md §3–§5).

This module is the emulator's twin of the connector's parser: every byte-level quirk the
connector must survive is produced here and nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from flask import Response

from broker.emulator.users import EmulatorUser

# §3.3: what graph.qq.com sends on /me (and, inferred, everywhere else).
CONTENT_TYPE_HTML = "text/html"
CONTENT_TYPE_HTML_UTF8 = "text/html; charset=utf-8"  # get_user_info, per the W11 sibling docs
QQ_HEADERS: Mapping[str, str] = {
    "Server": "tws",
    "Cache-Control": "no-cache",
    "Connection": "close",
}

# §5.1 / §5.2. Texts seen in real traffic are quoted in the spec; the ones marked [?] were
# never observed and are our own wording in the same style.
ERROR_DESCRIPTIONS: Mapping[int, str] = {
    -1: "client request's parameters are invalid",
    -22: "openid is invalid",
    100000: "param response_type is wrong or missing",  # [?]
    100001: "param client_id is missing",  # [?]
    100002: "param client_secret is missing",  # [?]
    100004: "param grant_type is wrong or missing",  # [?]
    100005: "param code is missing",  # [?]
    100006: "param refresh_token is missing",  # [?]
    100007: "param access_token is missing",  # [?]
    100008: "client id is illegal",  # [?] 该appid不存在
    100009: "client secret is illegal",
    100010: "redirect uri is illegal",
    100013: "access token is illegal",
    100014: "access token is expired",  # [?]
    100015: "access token is revoked",  # [?]
    100016: "access token check failed",
    100019: "code to access token error",
    100020: "code is reused error",
    100021: "get access token error",
    100028: "param which is missing",  # [?] 缺少参数which
    100048: "companyid not set",
}
# The official Chinese meanings (§5.1), shown on the HTML error pages next to the code.
ERROR_MEANINGS_ZH: Mapping[int, str] = {
    100000: "缺少参数response_type或response_type非法",
    100001: "缺少参数client_id",
    100008: "该appid不存在",
    100010: "回调地址不合法",
    100018: "获取code值失败",
    100028: "缺少参数which",
}
INVALID_OPENID_MSG = "client request's parameters are invalid, invalid openid"  # §5.2 [X10]


def describe(code: int) -> str:
    """The English ``error_description`` QQ uses for ``code`` (a generic text if unknown)."""
    return ERROR_DESCRIPTIONS.get(code, "unknown error")


class QQError(Exception):
    """A QQ error answer: ``code`` plus its description, rendered per endpoint shape."""

    def __init__(self, code: int, description: str | None = None) -> None:
        self.code = code
        self.description = describe(code) if description is None else description
        super().__init__(f"{self.description}({code})")


def qq_response(
    body: str | bytes, *, status: int = 200, content_type: str = CONTENT_TYPE_HTML
) -> Response:
    """A response with graph.qq.com's headers: 200 even for errors, text/html (§1, §3.3)."""
    response = Response(body, status=status, content_type=content_type)
    response.headers.update(QQ_HEADERS)
    return response


def compact_json(obj: Mapping[str, object]) -> str:
    """QQ's inner JSON: no spaces, keys in insertion order, UTF-8 kept as is (§3.2)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def jsonp(obj: Mapping[str, object]) -> str:
    """``callback( <json> );\\n``: a space inside both parentheses and a trailing LF (§3.2)."""
    return f"callback( {compact_json(obj)} );\n"


def oauth_error_body(error: QQError, *, json_mode: bool) -> str:
    """Token/me error: JSONP by default, plain JSON with fmt=json; ``error`` first (§3.1)."""
    obj = {"error": error.code, "error_description": error.description}
    return compact_json(obj) if json_mode else jsonp(obj)


def api_error_body(error: QQError) -> str:
    """OpenAPI-layer error (get_user_info): always JSON ``{"ret":N,"msg":"…"}`` (§5.2)."""
    return compact_json({"ret": error.code, "msg": error.description})


@dataclass(frozen=True)
class TokenAnswer:
    """What a successful token exchange or refresh hands out."""

    access_token: str
    refresh_token: str
    expires_in: int
    openid: str | None


#: An ordered list of members; unlike a dict it can hold a key twice (fault injection).
Fields = list[tuple[str, object]]


def compact_json_fields(fields: Fields) -> str:
    """Like :func:`compact_json`, but from ordered pairs, so duplicate keys survive."""
    members = (
        f"{json.dumps(key, ensure_ascii=False)}:"
        f"{json.dumps(value, separators=(',', ':'), ensure_ascii=False)}"
        for key, value in fields
    )
    return "{" + ",".join(members) + "}"


def form_fields(fields: Fields) -> str:
    """``key=value&...``, each value percent-encoded once; None is written as ``null``."""
    return "&".join(
        f"{key}={quote('null' if value is None else str(value), safe='')}" for key, value in fields
    )


def token_success_fields(answer: TokenAnswer, *, json_mode: bool, expires_in_int: bool) -> Fields:
    """The members of a token success answer, in QQ's order (§3.1)."""
    expires: object = str(answer.expires_in)
    if json_mode and expires_in_int:
        expires = answer.expires_in
    fields: Fields = [
        ("access_token", answer.access_token),
        ("expires_in", expires),
        ("refresh_token", answer.refresh_token),
    ]
    if answer.openid is not None:
        fields.append(("openid", answer.openid))
    return fields


def token_success_body(answer: TokenAnswer, *, json_mode: bool, expires_in_int: bool) -> str:
    """Form-encoded by default, JSON with fmt=json where expires_in is a STRING (§3.1, §10.3).

    ``expires_in_int`` is a fault switch producing the integer some clients expect.
    """
    fields = token_success_fields(answer, json_mode=json_mode, expires_in_int=expires_in_int)
    return compact_json_fields(fields) if json_mode else form_fields(fields)


def me_fields(client_id: str, openid: str, unionid: str | None) -> Fields:
    """The members of a ``/oauth2.0/me`` answer: client_id, openid[, unionid] (§2.4)."""
    fields: Fields = [("client_id", client_id), ("openid", openid)]
    if unionid is not None:
        fields.append(("unionid", unionid))
    return fields


def render_me(fields: Fields, *, json_mode: bool) -> str:
    """JSON with fmt=json, else JSONP ``callback( {...} );\n`` (§3.1, §3.2)."""
    inner = compact_json_fields(fields)
    return inner if json_mode else f"callback( {inner} );\n"


def me_body(client_id: str, openid: str, unionid: str | None, *, json_mode: bool) -> str:
    """``/oauth2.0/me``: keys client_id, openid[, unionid]; JSONP unless fmt=json (§3.1)."""
    return render_me(me_fields(client_id, openid, unionid), json_mode=json_mode)


def qzapp_avatar(app_id: str, openid: str, size: int) -> str:
    """QQ空间 avatar: ``http://qzapp.qlogo.cn/qzapp/{appid}/{openid}/{30|50|100}`` (§4)."""
    return f"http://qzapp.qlogo.cn/qzapp/{app_id}/{openid}/{size}"


def thirdqq_avatar(user: EmulatorUser, size: int) -> str:
    """QQ avatar in the 2019+ form ``http://thirdqq.qlogo.cn/g?b=oidb&k=…&kti=…&s=N&t=…`` (§4)."""
    digest = hashlib.sha256(b"qq-emulator-kti:" + user.id.encode("utf-8")).digest()
    kti = base64.urlsafe_b64encode(digest[:6]).decode("ascii")[:7] + "AAAA"
    stamp = 1448142454 + int.from_bytes(digest[6:10], "big") % 200_000_000
    return f"http://thirdqq.qlogo.cn/g?b=oidb&k={user.avatar_key}&kti={kti}&s={size}&t={stamp}"


def _user_info_fields(app_id: str, openid: str, user: EmulatorUser) -> list[tuple[str, object]]:
    """All §4 keys in observed order, with the post-2022 privacy defaults (§4, W6)."""
    qq_40 = thirdqq_avatar(user, 40)
    qq_100 = thirdqq_avatar(user, 100) if user.has_qq_avatar_100 else qq_40
    qq_largest = thirdqq_avatar(user, 640) if user.has_qq_avatar_100 else qq_40
    return [
        ("ret", 0),
        ("msg", ""),
        ("is_lost", 0),
        ("nickname", user.nickname),
        ("gender", user.gender),
        ("gender_type", 2),
        ("province", "广东"),
        ("city", "深圳"),
        ("year", "1990"),
        ("constellation", ""),
        ("figureurl", qzapp_avatar(app_id, openid, 30)),
        ("figureurl_1", qzapp_avatar(app_id, openid, 50)),
        ("figureurl_2", qzapp_avatar(app_id, openid, 100)),
        ("figureurl_qq_1", qq_40),
        ("figureurl_qq_2", qq_100),
        ("figureurl_qq", qq_largest),
        ("figureurl_type", "1"),
        ("is_yellow_vip", "0"),
        ("vip", "0"),
        ("yellow_vip_level", "0"),
        ("level", "0"),
        ("is_yellow_year_vip", "0"),
    ]


_SLASH_ESCAPED = frozenset({"figureurl", "figureurl_1", "figureurl_2"})


def user_info_body(
    app_id: str,
    openid: str,
    user: EmulatorUser,
    overrides: Mapping[str, object] | None = None,
) -> str:
    """get_user_info success, copying the observed layout byte for byte (§4 quirks).

    Multi-line, tab-indented, ``"key": value`` except ``"is_lost":0``, and ``\\/`` only in
    the three qzapp URLs. Any JSON parser reads it; the quirks catch hand-rolled parsers.
    ``overrides`` replaces the values of existing keys (profile fault injection).
    """
    lines = []
    for key, original in _user_info_fields(app_id, openid, user):
        value = overrides[key] if overrides and key in overrides else original
        encoded = json.dumps(value, ensure_ascii=False)
        if key in _SLASH_ESCAPED:
            encoded = encoded.replace("/", "\\/")
        separator = ":" if key == "is_lost" else ": "
        lines.append(f'\t"{key}"{separator}{encoded}')
    return "{\n" + ",\n".join(lines) + "\n}"
