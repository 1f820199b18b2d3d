"""Fault injection: bodies that break clients the way real networks and QQ do (§7, §8).

Faults come in two kinds. *Replacing* faults answer instead of the endpoint without
touching state (a code survives an ``http_500`` so the test can retry). *Shaping* faults
(``omit_openid``, ``expires_in_int``, ``ignore_fmt``, ``other_client_id``,
``trailing_whitespace``) are applied by the endpoint to its real answer.
"""

from __future__ import annotations

from flask import Response, render_template

from broker.emulator.control import error_fault_code
from broker.emulator.wire import (
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
