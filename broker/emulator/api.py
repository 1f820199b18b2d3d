"""The server-to-server endpoints: /oauth2.0/token, /oauth2.0/me, /user/get_user_info
(qq-connect.md §2.2–§2.5, §3, §4, §5, §8).

Each view: log, delay, maybe replace with a fault, run the real logic (raising
:class:`QQError` in QQ's check order), render in the endpoint's shape, shape faults last.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response

from broker.emulator.common import begin, merged_params
from broker.emulator.faults import (
    forced_openid,
    profile_overrides,
    replacing_response,
    shape_me_fields,
    shape_token_fields,
    with_trailing_whitespace,
)
from broker.emulator.settings import EmulatorSettings
from broker.emulator.state import EmulatorState, Grant
from broker.emulator.wire import (
    CONTENT_TYPE_HTML_UTF8,
    INVALID_OPENID_MSG,
    QQError,
    TokenAnswer,
    api_error_body,
    compact_json_fields,
    form_fields,
    me_fields,
    oauth_error_body,
    qq_response,
    render_me,
    token_success_fields,
    user_info_body,
)

bp = Blueprint("qq_api", __name__)


def _json_mode(params: dict[str, str], fault: str | None) -> bool:
    """fmt=json switches token and me to JSON (§2.2, §2.4) unless ``ignore_fmt`` is on."""
    return params.get("fmt") == "json" and fault != "ignore_fmt"


def check_client(params: dict[str, str], settings: EmulatorSettings) -> None:
    """client_id 100001/100008, then client_secret 100002/100009 (§5.1)."""
    client_id = params.get("client_id", "")
    if not client_id:
        raise QQError(100001)
    if client_id != settings.app_id:
        raise QQError(100008)
    secret = params.get("client_secret", "")
    if not secret:
        raise QQError(100002)
    if not hmac.compare_digest(secret.encode("utf-8"), settings.app_key.encode("utf-8")):
        raise QQError(100009)


def run_token_grant(state: EmulatorState, params: dict[str, str]) -> Grant:
    """Both grants in the order of §8: grant_type, client, then code or refresh_token."""
    grant_type = params.get("grant_type", "")
    if grant_type not in ("authorization_code", "refresh_token"):
        raise QQError(100004)
    check_client(params, state.settings)
    if grant_type == "authorization_code":
        code = params.get("code", "")
        if not code:
            raise QQError(100005)
        return state.exchange_code(code, params.get("redirect_uri", ""))
    refresh_token = params.get("refresh_token", "")
    if not refresh_token:
        raise QQError(100006)
    return state.refresh(refresh_token)


@bp.route("/oauth2.0/token", methods=["GET", "POST"])
def token() -> Response:
    """Code exchange and refresh; form body by default, JSONP errors, JSON with fmt=json."""
    params = merged_params()
    state = begin("token", "token", params)
    fault = state.control.fault("token")
    json_mode = _json_mode(params, fault)
    refreshing = params.get("grant_type") == "refresh_token"
    replaced = replacing_response(
        fault,
        api_shape=False,
        json_mode=json_mode,
        default_error=QQError(100021 if refreshing else 100019),
    )
    if replaced is not None:
        return replaced
    try:
        grant = run_token_grant(state, params)
    except QQError as error:
        body = oauth_error_body(error, json_mode=json_mode)
    else:
        wants_openid = params.get("need_openid") == "1" and fault != "omit_openid"
        answer = TokenAnswer(
            grant.access_token,
            grant.refresh_token,
            state.settings.expires_in,
            state.openid(grant.user) if wants_openid else None,
        )
        fields = token_success_fields(
            answer, json_mode=json_mode, expires_in_int=fault == "expires_in_int"
        )
        fields, form_only = shape_token_fields(
            fields, fault, need_openid=params.get("need_openid") == "1"
        )
        body = compact_json_fields(fields) if json_mode and not form_only else form_fields(fields)
    return qq_response(with_trailing_whitespace(body, fault))


def other_client_id(app_id: str) -> str:
    """A different, plausible app id for the ``other_client_id`` fault (UP-07)."""
    return "101000001" if app_id != "101000001" else "101000002"


@bp.get("/oauth2.0/me")
def me() -> Response:
    """access_token → client_id, openid[, unionid]: 100007, 100013, 100016, 100048 (§2.4)."""
    params = merged_params()
    state = begin("me", "me", params)
    fault = state.control.fault("me")
    json_mode = _json_mode(params, fault)
    replaced = replacing_response(
        fault, api_shape=False, json_mode=json_mode, default_error=QQError(100016)
    )
    if replaced is not None:
        return replaced
    try:
        body = _me_answer(state, params, json_mode, fault)
    except QQError as error:
        body = oauth_error_body(error, json_mode=json_mode)
    return qq_response(with_trailing_whitespace(body, fault))


def _me_answer(
    state: EmulatorState, params: dict[str, str], json_mode: bool, fault: str | None
) -> str:
    access_token = params.get("access_token", "")
    if not access_token:
        raise QQError(100007)
    user = state.token_user(access_token)
    unionid = None
    if params.get("unionid") == "1":
        if not state.settings.unionid_enabled:
            raise QQError(100048)
        unionid = state.unionid(user)
    app_id = state.settings.app_id
    client_id = other_client_id(app_id) if fault == "other_client_id" else app_id
    fields = shape_me_fields(
        me_fields(client_id, state.openid(user), unionid),
        fault,
        unionid_asked=unionid is not None,
    )
    return render_me(fields, json_mode=json_mode)


@bp.get("/user/get_user_info")
def get_user_info() -> Response:
    """The profile (§4); errors as ``{"ret":N,"msg":…}`` (§5.2); JSON whatever fmt says."""
    params = merged_params()
    state = begin("get_user_info", "get_user_info", params)
    fault = state.control.fault("get_user_info")
    replaced = replacing_response(
        fault, api_shape=True, json_mode=True, default_error=QQError(100016)
    )
    if replaced is not None:
        return replaced
    try:
        body = _user_info_answer(state, params)
    except QQError as error:
        body = api_error_body(error)
    return qq_response(with_trailing_whitespace(body, fault), content_type=CONTENT_TYPE_HTML_UTF8)


def _user_info_answer(state: EmulatorState, params: dict[str, str]) -> str:
    access_token = params.get("access_token", "")
    consumer_key = params.get("oauth_consumer_key", "")
    openid = params.get("openid", "")
    if not (access_token and consumer_key and openid):
        raise QQError(-1)
    try:
        user = state.token_user(access_token)
    except QQError:
        raise QQError(100016) from None  # any bad token reads "access token check failed"
    control = state.control
    # An openid:<value> fault stands for an openid QQ issued, so it is accepted here too.
    accepted = {state.openid(user), forced_openid(control)}
    if consumer_key != state.settings.app_id or openid not in accepted:
        raise QQError(-1, INVALID_OPENID_MSG)
    overrides = profile_overrides(control.fault("get_user_info"))
    return user_info_body(state.settings.app_id, openid, user, overrides)
