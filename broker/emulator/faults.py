"""Fault injection: bodies that break clients the way real networks and QQ do (§7, §8).

Faults come in two kinds. *Replacing* faults answer instead of the endpoint without
touching state (a code survives an ``http_500`` so the test can retry). *Shaping* faults
(``omit_openid``, ``expires_in_int``, ``ignore_fmt``, ``other_client_id``,
``trailing_whitespace``) are applied by the endpoint to its real answer.

The hostile-upstream shaping faults below serve the security checklist (UP-06 fail closed,
UP-08 identifier checks, UP-09 unionid conflicts, UP-12 avatar SSRF, UP-16 untrusted
profile data). They model a buggy or compromised QQ, so they break QQ's own invariants on
purpose:

* token: ``no_access_token`` (a form body without access_token, whatever fmt says),
  ``openid_null`` (``"openid":null``), ``openid:<value>`` (that openid, with need_openid=1).
* me: ``openid_null``, ``openid_missing``, ``openid:<value>``, ``unionid:<value>`` (only
  when the unionid was asked for), ``duplicate_openid`` (the key twice, the second value
  another user's), ``paren_in_value`` (a string member holding ``)``/``;``/``callback(``,
  which trips JSONP parsers that cut at the first parenthesis).
* get_user_info: ``nickname:<text>``, ``figureurl:<url>`` (every figureurl* key), and
  ``fixed_profile`` (the same nickname and avatar for every user).

An ``openid:<value>`` fault on token or me also makes get_user_info accept that openid, as
QQ would for an openid it had issued.
"""

from __future__ import annotations

from flask import Response, render_template

from broker.emulator.control import Control, error_fault_code, fault_value
from broker.emulator.wire import (
    Fields,
    QQError,
    api_error_body,
    compact_json,
    jsonp,
    oauth_error_body,
    qq_response,
)

OVERSIZED_BYTES = 5 * 1024 * 1024
TRAILING_WHITESPACE = " \r\n\t \n"
GARBAGE_BODY = "<<< ?? 502 upstream hiccup ]}{ not a QQ response & = ; >>>"


def replacing_response(
    fault: str | None, *, api_shape: bool, json_mode: bool, default_error: QQError
) -> Response | None:
    """The response a replacing fault sends instead of the endpoint, or None.

    ``api_shape`` selects get_user_info's ``ret``/``msg`` shape over token/me's
    ``error``/``error_description``; ``default_error`` is what ``jsonp_error`` reports.
    """
    if fault is None:
        return None
    code = error_fault_code(fault)
    if code is not None:
        error = QQError(code)
        body = api_error_body(error) if api_shape else oauth_error_body(error, json_mode=json_mode)
        return qq_response(body)
    if fault == "jsonp_error":
        return qq_response(_jsonp_error(default_error, api_shape=api_shape))
    if fault == "http_500":
        page = render_template(
            "fault.html",
            title="500 Internal Server Error",
            message="服务器内部错误 / Internal Server Error",
        )
        return qq_response(page, status=500)
    if fault == "html":
        page = render_template(
            "fault.html",
            title="QQ互联",
            message="系统繁忙，请稍后再试 / The system is busy, try again later",
        )
        return qq_response(page)
    return _static_fault(fault)


def _static_fault(fault: str) -> Response | None:
    if fault == "empty":
        return qq_response("")
    if fault == "garbage":
        return qq_response(GARBAGE_BODY)
    if fault == "oversized":
        return qq_response(_oversized_body())
    return None


def _jsonp_error(error: QQError, *, api_shape: bool) -> str:
    """A QQ error in JSONP (§3.2) regardless of fmt, as clients must tolerate."""
    if api_shape:
        return jsonp({"ret": error.code, "msg": error.description})
    return jsonp({"error": error.code, "error_description": error.description})


def _oversized_body() -> bytes:
    """About 5 MiB of syntactically valid JSON, to exercise a client's body-size cap."""
    head = compact_json({"error": 100016, "padding": ""})[:-2].encode("ascii")
    return head + b"A" * (OVERSIZED_BYTES - len(head) - 2) + b'"}'


def with_trailing_whitespace(body: str, fault: str | None) -> str:
    """Append whitespace when the ``trailing_whitespace`` fault is on (§3.2: clients strip)."""
    return body + TRAILING_WHITESPACE if fault == "trailing_whitespace" else body


# --------------------------------------------------------------------------- hostile upstream

#: ``fixed_profile``: what every user looks like (UP-08/UP-10: same nickname and avatar).
FIXED_NICKNAME = "同名用户"
FIXED_FIGUREURL = "http://thirdqq.qlogo.cn/g?b=oidb&k=SameAvatarForAll&kti=AAAAAAA&s=100&t=1"
#: ``paren_in_value``: an extra member that a naive JSONP parser cuts or re-reads.
PAREN_NOTE = '); callback( {"client_id":"0","openid":"None"} ); ('
#: ``duplicate_openid``: the second, conflicting value.
DUPLICATE_OPENID = "0123456789ABCDEF0123456789ABCDEF"
FIGUREURL_KEYS = (
    "figureurl",
    "figureurl_1",
    "figureurl_2",
    "figureurl_qq_1",
    "figureurl_qq_2",
    "figureurl_qq",
)


def forced_openid(control: Control) -> str | None:
    """The openid an ``openid:<value>`` fault on token or me hands out, if any."""
    for endpoint in ("token", "me"):
        value = fault_value(control.fault(endpoint), "openid:")
        if value is not None:
            return value
    return None


def _replace(fields: Fields, key: str, value: object) -> Fields:
    """``fields`` with ``key`` set to ``value`` (appended when absent)."""
    if any(name == key for name, _ in fields):
        return [(name, value if name == key else old) for name, old in fields]
    return [*fields, (key, value)]


def shape_token_fields(
    fields: Fields, fault: str | None, *, need_openid: bool
) -> tuple[Fields, bool]:
    """Apply a hostile token fault; returns the fields and whether to force a form body."""
    if fault == "no_access_token":
        return [(key, value) for key, value in fields if key != "access_token"], True
    if fault == "openid_null" and need_openid:
        return _replace(fields, "openid", None), False
    forced = fault_value(fault, "openid:")
    if forced is not None and need_openid:
        return _replace(fields, "openid", forced), False
    return fields, False


def shape_me_fields(fields: Fields, fault: str | None, *, unionid_asked: bool) -> Fields:
    """Apply a hostile /me fault to the answer's members."""
    if fault == "openid_null":
        return _replace(fields, "openid", None)
    if fault == "openid_missing":
        return [(key, value) for key, value in fields if key != "openid"]
    if fault == "duplicate_openid":
        index = next(i for i, (key, _) in enumerate(fields) if key == "openid")
        return [*fields[: index + 1], ("openid", DUPLICATE_OPENID), *fields[index + 1 :]]
    if fault == "paren_in_value":
        return [*fields, ("msg", PAREN_NOTE)]
    forced = fault_value(fault, "openid:")
    if forced is not None:
        return _replace(fields, "openid", forced)
    unionid = fault_value(fault, "unionid:")
    if unionid is not None and unionid_asked:
        return _replace(fields, "unionid", unionid)
    return fields


def profile_overrides(fault: str | None) -> dict[str, object]:
    """get_user_info values replaced by ``nickname:``, ``figureurl:`` or ``fixed_profile``."""
    if fault == "fixed_profile":
        return {"nickname": FIXED_NICKNAME, **dict.fromkeys(FIGUREURL_KEYS, FIXED_FIGUREURL)}
    nickname = fault_value(fault, "nickname:")
    if nickname is not None:
        return {"nickname": nickname}
    figureurl = fault_value(fault, "figureurl:")
    if figureurl is not None:
        return dict.fromkeys(FIGUREURL_KEYS, figureurl)
    return {}
