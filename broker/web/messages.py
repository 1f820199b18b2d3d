"""User-facing text in zh-CN and en, keyed by the message keys the layers below raise.

Keys are stable: the provider and the connector name a situation, this
module says it in the user's language. Operators read hints in the log.
"""

from __future__ import annotations

from collections.abc import Iterable

LOCALES = ("zh-CN", "en")

MESSAGES: dict[str, dict[str, str]] = {
    "duplicate_parameter": {
        "en": "The sign-in request is malformed: a parameter was sent twice.",
        "zh-CN": "登录请求格式错误：有参数重复出现。",
    },
    "missing_client": {
        "en": "The sign-in request does not say which application it is for.",
        "zh-CN": "登录请求缺少应用标识（client_id）。",
    },
    "unknown_client": {
        "en": "The application that sent you here is not registered with this login service.",
        "zh-CN": "发起登录的应用未在本登录服务注册。",
    },
    "missing_redirect_uri": {
        "en": "The sign-in request does not say where to return to.",
        "zh-CN": "登录请求缺少回调地址（redirect_uri）。",
    },
    "unregistered_redirect_uri": {
        "en": "The application asked to return to an address it has not registered. "
        "For your safety you were not sent there.",
        "zh-CN": "应用请求的回调地址未注册。为了您的安全，我们没有跳转。",
    },
    "callback_duplicate": {
        "en": "The answer from QQ is malformed.",
        "zh-CN": "QQ 返回的参数格式错误。",
    },
    "callback_no_state": {
        "en": "The answer from QQ does not belong to a login started here.",
        "zh-CN": "QQ 返回的结果不属于本站发起的登录。",
    },
    "login_unknown": {
        "en": "This login is unknown or has already been completed. "
        "Go back to the application and sign in again.",
        "zh-CN": "该登录不存在或已完成。请返回应用重新登录。",
    },
    "login_expired": {
        "en": "This login took too long and has expired. "
        "Go back to the application and sign in again.",
        "zh-CN": "登录超时已失效。请返回应用重新登录。",
    },
    "login_other_browser": {
        "en": "This login was started in another browser. Sign in again from this browser.",
        "zh-CN": "该登录是在其他浏览器中发起的。请在本浏览器中重新登录。",
    },
    "logout_invalid": {
        "en": "This sign-out request is not valid, so you were not sent anywhere.",
        "zh-CN": "该退出登录请求无效，因此没有进行跳转。",
    },
    "not_found": {"en": "This page does not exist.", "zh-CN": "页面不存在。"},
    "method_not_allowed": {
        "en": "This address does not accept that kind of request.",
        "zh-CN": "该地址不接受此类请求。",
    },
    "too_large": {"en": "The request is too large.", "zh-CN": "请求过大。"},
    "bad_request": {"en": "The request is malformed.", "zh-CN": "请求格式错误。"},
    "rate_limited": {
        "en": "Too many requests from your network. Please wait a moment and try again.",
        "zh-CN": "来自您网络的请求过于频繁，请稍候片刻再试。",
    },
    "unavailable": {
        "en": "The login service is temporarily unavailable. Please try again shortly.",
        "zh-CN": "登录服务暂时不可用，请稍后再试。",
    },
    # What the QQ connector's typed errors mean to the person at the browser
    # (broker/connectors/base.py message keys; the operator hint goes to the log).
    "upstream.cancelled": {
        "en": "You cancelled the QQ login.",
        "zh-CN": "您已取消 QQ 登录。",
    },
    "upstream.unavailable": {
        "en": "QQ could not be reached. Please try again in a moment.",
        "zh-CN": "暂时无法连接 QQ，请稍后再试。",
    },
    "upstream.misconfigured": {
        "en": "QQ login is not set up correctly for this site. The site's administrator "
        "has been told what to fix.",
        "zh-CN": "本站的 QQ 登录配置有误，管理员可在日志中看到修复方法。",
    },
    "upstream.rejected": {
        "en": "QQ refused this login request. Please try again; if it keeps happening, "
        "contact the site's administrator.",
        "zh-CN": "QQ 拒绝了本次登录请求。请重试；如果反复出现，请联系网站管理员。",
    },
    "upstream.protocol": {
        "en": "QQ sent an answer this service does not understand. Please try again.",
        "zh-CN": "QQ 返回了无法识别的结果，请重试。",
    },
    "upstream.code_invalid": {
        "en": "The QQ login expired or was already used. Please sign in again.",
        "zh-CN": "QQ 登录已过期或已被使用，请重新登录。",
    },
    "upstream.token_expired": {
        "en": "Your QQ authorization has expired or was withdrawn. Please sign in again.",
        "zh-CN": "您的 QQ 授权已过期或已被撤销，请重新登录。",
    },
    "upstream.unionid_not_enabled": {
        "en": "This site needs a QQ permission (UnionID) it has not been granted. "
        "The site's administrator has been told.",
        "zh-CN": "本站需要的 QQ 权限（UnionID）尚未开通，管理员可在日志中看到说明。",
    },
    "internal": {
        "en": "Something went wrong on our side. Please try again.",
        "zh-CN": "服务器内部错误，请重试。",
    },
}

TITLES = {"en": "Sign-in problem", "zh-CN": "登录出现问题"}


def pick_locale(ui_locales: str | None, accepted: Iterable[str]) -> str:
    """OIDC Core §3.1.2.1 ``ui_locales`` first, then the browser's Accept-Language."""
    for tag in [*(ui_locales or "").split(), *accepted]:
        lowered = tag.lower()
        if lowered.startswith("zh"):
            return "zh-CN"
        if lowered.startswith("en"):
            return "en"
    return "zh-CN"


def message(key: str, locale: str) -> str:
    texts = MESSAGES.get(key, MESSAGES["bad_request"])
    return texts.get(locale, texts["en"])
