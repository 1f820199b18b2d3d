"""``qq-oidc-broker doctor``: check a real deployment and say what to fix, in zh-CN and en.

``check`` only proves that a config parses. Most broken deployments parse fine and still
cannot log anyone in: the issuer is not reachable (or its certificate is not trusted), the
broker serves other keys than the ones it signs with, the clock is off, QQ does not know
the app id or key, the callback is not registered, UnionID is not enabled. Each of those
shows up only at the first real login, as a vague error page. ``doctor`` asks the running
broker and QQ the same questions a login would, one small check each, and prints the
answer with the fix in both languages, so the operator does not need to know QQ's codes.

Why the checks look the way they do:

* Every QQ question goes through :class:`~broker.connectors.qq.QQConnector` and is
  answered by its typed errors (``message_key``, ``upstream_code``, ``hint``): QQ's wire
  formats stay in the connector (DESIGN.md), doctor only maps outcomes to advice.
* The app id and key are proven without a user by exchanging a made-up code: QQ checks the
  client before the code, so "invalid code" means the credentials were accepted.
* The callback is proven at QQ's authorize page, which refuses an unregistered callback
  (100010) before showing the login page; the token endpoint checks the code first and so
  cannot tell.
* QQ answers the UnionID permission (100048) only for a user's access token, so that check
  needs ``--access-token`` and is skipped (with instructions) without one.

Exit status (cli.py): 0 when no check failed (skipped checks are fine), 1 when one did;
a config that does not load is exit 2 with its one line, like every other command,
because no other check can run without it.

Nothing printed contains a secret: the app key only travels inside the connector, the
access token is handed to the connector and scrubbed from its errors.
"""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import requests

from broker import __version__
from broker.config import Config
from broker.connectors.base import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamRejected,
    UpstreamUnavailable,
)
from broker.connectors.qq import QQConnector

__all__ = [
    "FAIL",
    "LANGS",
    "MAX_CLOCK_SKEW",
    "OK",
    "SKIP",
    "CheckResult",
    "Text",
    "exit_status",
    "render_json",
    "render_text",
    "run_checks",
]

OK, FAIL, SKIP = "ok", "fail", "skip"
LANGS = ("zh-CN", "en")
#: Seconds of clock difference to QQ tolerated. ID tokens carry iat/exp from this clock;
#: relying parties usually allow a few minutes of leeway, so one minute is safe.
MAX_CLOCK_SKEW = 60
_TIMEOUT = (3.05, 10.0)  # connect, read: a deployment that needs longer is broken too
_HEADERS = {"User-Agent": f"qq-oidc-broker-doctor/{__version__}", "Accept": "application/json"}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Text:
    """One sentence in both languages (zh-CN first: QQ's operators mostly read Chinese)."""

    zh: str
    en: str

    def get(self, lang: str) -> str:
        return self.zh if lang == "zh-CN" else self.en

    def to_json(self) -> dict[str, str]:
        return {"zh-CN": self.zh, "en": self.en}


@dataclass(frozen=True)
class Outcome:
    """What one check found: status, what it means, and (for failures) what to change."""

    status: str
    message: Text
    fix: Text | None = None


@dataclass(frozen=True)
class CheckResult:
    """An :class:`Outcome` with the check's name (stable, for scripts) and title."""

    name: str
    title: Text
    status: str
    message: Text
    fix: Text | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title.to_json(),
            "status": self.status,
            "message": self.message.to_json(),
            "fix": self.fix.to_json() if self.fix else None,
        }


def _ok(zh: str, en: str) -> Outcome:
    return Outcome(OK, Text(zh, en))


def _skip(message: Text, fix: Text | None = None) -> Outcome:
    return Outcome(SKIP, message, fix)


def _fail(message: Text, fix: Text) -> Outcome:
    return Outcome(FAIL, message, fix)


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What the checks share: the config, HTTP clients, and findings later checks need."""

    config: Config
    http: requests.Session
    qq_connector: QQConnector | None  # None: the upstream is another connector (QQ skipped)
    access_token: str | None = field(default=None, repr=False)
    discovery: dict[str, Any] | None = None  # set by the issuer check when it passes
    app_failed: bool = False  # set by the app check: later QQ checks cannot tell then

    @property
    def qq(self) -> QQConnector:
        """The QQ connector; only the QQ checks ask, and they run only when there is one."""
        if self.qq_connector is None:
            raise RuntimeError("a QQ check ran without a QQ connector")
        return self.qq_connector

    @property
    def callback_url(self) -> str:
        """What the broker sends as redirect_uri, and what must be registered at QQ."""
        return f"{self.config.issuer}/qq/callback"


Check = Callable[[Context], Outcome]


# --------------------------------------------------------------------------- HTTP helpers


class _Unreachable(Exception):
    """A URL could not be fetched; ``reason`` says why in both languages."""

    def __init__(self, reason: Text) -> None:
        super().__init__(reason.en)
        self.reason = reason


def _get(ctx: Context, url: str) -> requests.Response:
    """GET with TLS verification and no redirects; transport failures become _Unreachable.

    Redirects are not followed: discovery must be served at exactly the issuer's URL
    (OpenID Connect Discovery section 4), and a redirect is worth reporting.
    """
    reason: Text | None = None
    try:
        return ctx.http.get(url, headers=_HEADERS, timeout=_TIMEOUT, allow_redirects=False)
    except requests.exceptions.SSLError as exc:
        problem = _tls_problem(exc)
        reason = Text(f"TLS 证书验证失败：{problem}", f"TLS verification failed: {problem}")
    except requests.Timeout:
        reason = Text(f"{_TIMEOUT[1]:g} 秒内没有应答", f"no answer within {_TIMEOUT[1]:g} s")
    except requests.ConnectionError as exc:
        problem = _connection_problem(exc)
        reason = Text(f"无法连接（{problem}）", f"cannot connect ({problem})")
    except requests.RequestException as exc:
        name = type(exc).__name__
        reason = Text(f"请求失败（{name}）", f"the request failed ({name})")
    raise _Unreachable(reason)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: requests and urllib3 nest errors in args and ``reason``."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        inner = [getattr(current, "reason", None), current.__cause__, current.__context__]
        inner += list(current.args)
        pending += [item for item in inner if isinstance(item, BaseException)]


def _tls_problem(exc: BaseException) -> str:
    """The certificate problem as OpenSSL states it (expired, self-signed, wrong host...)."""
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause.reason or "certificate verify failed")
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLError):
            return str(cause.reason or type(cause).__name__)
    return "unknown TLS error"


def _connection_problem(exc: BaseException) -> str:
    """Refused, DNS or unreachable, without requests' long wrapper text."""
    for cause in _causes(exc):
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return type(exc).__name__


def _json_object(response: requests.Response) -> dict[str, Any] | None:
    try:
        value = response.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --------------------------------------------------------------------------- 1. config


def check_config(ctx: Context) -> Outcome:
    """The config loaded (or doctor would not be running); say what it amounts to.

    Settings the config accepts but this version ignores are repeated here, because an
    operator reading doctor's output believes what it does not contradict.
    """
    from broker.app import unenforced_settings

    config = ctx.config
    mode_zh, mode_en = ("开发", "development") if config.is_development else ("生产", "production")
    count = len(config.clients)
    message = Text(
        f"配置有效：{mode_zh}模式，issuer {config.issuer}，{count} 个客户端。",
        f"The config is valid: {mode_en} mode, issuer {config.issuer}, {count} client(s).",
    )
    notes = unenforced_settings(config)
    if notes:
        joined = "; ".join(notes)
        message = Text(f"{message.zh} 注意：{joined}", f"{message.en} Note: {joined}")
    return Outcome(OK, message)


# --------------------------------------------------------------------------- 2. issuer


def check_issuer(ctx: Context) -> Outcome:
    """The discovery document is served, over trusted TLS, and names this issuer."""
    issuer = ctx.config.issuer
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = _get(ctx, url)
    except _Unreachable as exc:
        return _fail(
            Text(f"无法获取 {url}：{exc.reason.zh}。", f"Cannot fetch {url}: {exc.reason.en}."),
            _ISSUER_FIX,
        )
    with response:
        if response.status_code != 200:
            return _issuer_status(url, response)
        document = _json_object(response)
    if document is None:
        return _fail(
            Text(f"{url} 返回的不是 JSON 对象。", f"{url} did not return a JSON object."),
            _ISSUER_FIX,
        )
    served = document.get("issuer")
    if served != issuer:
        shown = json.dumps(served, ensure_ascii=False)[:200]
        return _fail(
            Text(
                f"发现文档中的 issuer 是 {shown}，而配置是 {issuer}。",
                f"The discovery document says issuer {shown}, the config says {issuer}.",
            ),
            Text(
                "依赖方要求两者完全一致：把配置中的 issuer 改成用户访问的公开地址"
                "（协议、主机、端口、路径都要相同，末尾不带 /），或检查反向代理转发到了哪个实例。",
                "Relying parties require an exact match: set issuer to the public URL users "
                "reach (same scheme, host, port and path, no trailing /), or check which "
                "instance the reverse proxy forwards to.",
            ),
        )
    ctx.discovery = document
    return _ok(f"{url} 可访问，issuer 一致。", f"{url} is reachable and names the same issuer.")


_ISSUER_FIX = Text(
    "确认 broker 正在运行（qq-oidc-broker serve），issuer 的域名解析、防火墙和反向代理"
    "指向它；https 的证书须由受信任的 CA 签发、未过期且包含该域名（含中间证书）。",
    "Make sure the broker is running (qq-oidc-broker serve) and that DNS, firewalls and the "
    "reverse proxy lead the issuer URL to it; for https the certificate must come from a "
    "trusted CA, be valid now and name the host (with the intermediate certificates).",
)


def _issuer_status(url: str, response: requests.Response) -> Outcome:
    status = response.status_code
    location = response.headers.get("Location")
    if response.is_redirect and location:
        return _fail(
            Text(f"{url} 重定向到 {location}。", f"{url} redirects to {location}."),
            Text(
                "发现文档必须直接在 issuer 之下提供：把 issuer 设为重定向后的地址，"
                "或让反向代理不再重定向该路径。",
                "Discovery must be served directly under the issuer: set issuer to the "
                "redirect's target, or stop the reverse proxy redirecting this path.",
            ),
        )
    return _fail(
        Text(f"{url} 返回 HTTP {status}。", f"{url} answered HTTP {status}."),
        _ISSUER_FIX,
    )


# --------------------------------------------------------------------------- 3. JWKS


def check_jwks(ctx: Context) -> Outcome:
    """The served JWKS holds the keys this config signs with, and lives under the issuer.

    A broker that signs with keys it does not publish (another keys.dir, another
    database, a stale instance behind the load balancer) issues ID tokens no relying
    party can verify.
    """
    if ctx.discovery is None:
        return _skip(
            Text("issuer 检查未通过，无法读取 jwks_uri。", "Skipped: the issuer check failed.")
        )
    jwks_uri = ctx.discovery.get("jwks_uri")
    issuer = ctx.config.issuer
    if not isinstance(jwks_uri, str) or not jwks_uri.startswith(issuer + "/"):
        shown = json.dumps(jwks_uri, ensure_ascii=False)[:200]
        return _fail(
            Text(
                f"发现文档中的 jwks_uri {shown} 不在 issuer 之下。",
                f"The discovery jwks_uri {shown} is not under the issuer.",
            ),
            Text(
                "jwks_uri 由 broker 根据 issuer 生成；若不一致，说明回答的不是本配置的 broker。",
                "The broker derives jwks_uri from its issuer; a mismatch means another "
                "broker answered. Check the reverse proxy.",
            ),
        )
    served = _served_keys(ctx, jwks_uri)
    if isinstance(served, Outcome):
        return served
    local = _local_signing_keys(ctx.config)
    if isinstance(local, Outcome):
        return local
    return _compare_keys(jwks_uri, served, local)


def _served_keys(ctx: Context, jwks_uri: str) -> dict[str, dict[str, Any]] | Outcome:
    """kid -> JWK as published at jwks_uri."""
    fix = Text("确认 broker 正常运行并能提供 jwks_uri。", "Make sure the broker serves jwks_uri.")
    try:
        response = _get(ctx, jwks_uri)
    except _Unreachable as exc:
        return _fail(
            Text(
                f"无法获取 {jwks_uri}：{exc.reason.zh}。",
                f"Cannot fetch {jwks_uri}: {exc.reason.en}.",
            ),
            fix,
        )
    with response:
        document = _json_object(response) if response.status_code == 200 else None
    keys = document.get("keys") if document else None
    if not isinstance(keys, list):
        return _fail(
            Text(
                f"{jwks_uri} 没有返回 JWK 集合（keys 数组）。",
                f"{jwks_uri} did not return a JWK set (a keys array).",
            ),
            fix,
        )
    return {
        jwk["kid"]: jwk for jwk in keys if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str)
    }


def _local_signing_keys(config: Config) -> dict[str, dict[str, Any]] | Outcome:
    """kid -> public JWK of each key this config signs with now, read without creating any.

    Opened like ``keys list`` does (cli.py ``_open_keyring``): keys.dir, or the database
    for ``keys.storage: database``.
    """
    from broker.keys import KeyRing, KeyStoreError
    from broker.storage import StorageError

    store: Any = None
    try:
        if config.keys.storage == "database":
            store = _open_store(config)
            current, head = store.schema_revision()
            if current != head:
                return _keys_unreadable(
                    f"the database schema is at {current or 'none'}, this version needs {head}: "
                    "run `qq-oidc-broker db upgrade`"
                )
        ring = KeyRing.from_config(config.keys, config.lifetimes, store, create=False)
        signing = ring.signing_keys
    except (KeyStoreError, StorageError, ValueError) as exc:
        return _keys_unreadable(str(exc))
    finally:
        if store is not None:
            store.close()
    if not signing:
        return _fail(
            Text(f"{_where(config)} 中没有签名密钥。", f"{_where(config)} holds no signing key."),
            Text(
                "broker 在首次启动时生成密钥：请在 broker 所在主机上、"
                "用它使用的同一份配置运行 doctor。",
                "The broker creates its keys on first start: run doctor on the broker's "
                "host with the config it runs with.",
            ),
        )
    published = {jwk["kid"]: jwk for jwk in ring.jwks()["keys"]}
    return {key.kid: published.get(key.kid, key.public_jwk()) for key in signing}


def _open_store(config: Config) -> Any:
    from broker.storage import SQLStore

    return SQLStore(config.storage.url, pool_size=1, max_overflow=0)


def _where(config: Config) -> str:
    if config.keys.storage == "database":
        return "the database (keys.storage: database)"
    return f"keys.dir {config.keys.dir}"


def _keys_unreadable(problem: str) -> Outcome:
    return _fail(
        Text(
            f"无法读取本配置的签名密钥：{problem}",
            f"Cannot read this config's signing keys: {problem}",
        ),
        Text(
            "在 broker 所在主机上、用它使用的同一份配置运行 doctor，并修复上述问题。",
            "Run doctor on the broker's host with the config it runs with, and fix the "
            "problem above.",
        ),
    )


def _compare_keys(
    jwks_uri: str, served: dict[str, dict[str, Any]], local: dict[str, dict[str, Any]]
) -> Outcome:
    missing = [kid for kid in local if kid not in served]
    differ = [
        kid
        for kid in local
        if kid in served and any(served[kid].get(k) != v for k, v in local[kid].items())
    ]
    if missing or differ:
        kids = ", ".join(missing + differ)
        return _fail(
            Text(
                f"{jwks_uri} 没有发布本配置用来签名的密钥（kid：{kids}）："
                "依赖方将无法验证 ID token。",
                f"{jwks_uri} does not publish the key(s) this config signs with (kid: {kids}): "
                "relying parties cannot verify its ID tokens.",
            ),
            Text(
                "所有实例必须共享同一份密钥（同一个 keys.dir 或同一个数据库）；"
                "确认运行中的 broker 用的是这份配置，修改密钥后重启它。",
                "Every instance must share the same keys (one keys.dir or one database): "
                "make sure the running broker uses this config, and restart it after "
                "changing its keys.",
            ),
        )
    algs = ", ".join(sorted({str(jwk.get("alg", "?")) for jwk in local.values()}))
    return _ok(
        f"{jwks_uri} 发布了本配置的 {len(local)} 把签名密钥（{algs}）。",
        f"{jwks_uri} publishes this config's {len(local)} signing key(s) ({algs}).",
    )


# --------------------------------------------------------------------------- 4. clock


def check_clock(ctx: Context) -> Outcome:
    """This machine's clock against the Date header of QQ (upstream.qq.base_url).

    The broker stamps iat/exp into ID tokens from this clock; relying parties compare
    them with theirs. QQ's servers are a clock every deployment can reach.
    """
    url = ctx.config.upstream.qq.base_url + "/"
    fix = Text(
        "检查 upstream.qq.base_url 与出站网络（代理、防火墙、DNS）。",
        "Check upstream.qq.base_url and outbound network access (proxy, firewall, DNS).",
    )
    before = time.time()
    try:
        response = _get(ctx, url)
    except _Unreachable as exc:
        return _fail(
            Text(f"无法访问 {url}：{exc.reason.zh}。", f"Cannot reach {url}: {exc.reason.en}."), fix
        )
    local = (before + time.time()) / 2
    with response:
        date = response.headers.get("Date")
    remote = _http_time(date)
    if remote is None:
        return _skip(
            Text(
                f"{url} 的应答没有可用的 Date 头，无法比较时钟。",
                f"Skipped: {url} sent no usable Date header to compare clocks with.",
            ),
        )
    return _clock_outcome(round(remote - local))


def _http_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def _clock_outcome(skew: int) -> Outcome:
    """``skew`` > 0: QQ's clock is ahead of ours, i.e. this machine is behind."""
    if abs(skew) <= MAX_CLOCK_SKEW:
        return _ok(
            f"本机时钟与 QQ 相差 {abs(skew)} 秒（允许 ±{MAX_CLOCK_SKEW} 秒）。",
            f"This machine's clock is within {abs(skew)} s of QQ's "
            f"(tolerance ±{MAX_CLOCK_SKEW} s).",
        )
    zh_dir, en_dir = ("慢", "behind") if skew > 0 else ("快", "ahead of")
    return _fail(
        Text(
            f"本机时钟比 QQ 服务器{zh_dir} {abs(skew)} 秒（允许 ±{MAX_CLOCK_SKEW} 秒）："
            "ID token 的 iat/exp 会随之偏移，依赖方可能拒绝它们。",
            f"This machine's clock is {abs(skew)} s {en_dir} QQ's (tolerance "
            f"±{MAX_CLOCK_SKEW} s): ID tokens' iat/exp are off by as much and relying "
            "parties may reject them.",
        ),
        Text(
            "用 NTP 同步本机时钟（chrony、systemd-timesyncd），在 broker 所在主机上再运行 doctor。",
            "Synchronise this machine's clock with NTP (chrony, systemd-timesyncd) and run "
            "doctor again on the broker's host.",
        ),
    )


# --------------------------------------------------------------------------- 5. app id / key


def check_qq_app(ctx: Context) -> Outcome:
    """QQ accepts upstream.qq.app_id and app_key (a made-up code must fail as a code)."""
    app_id = ctx.config.upstream.qq.app_id
    try:
        ctx.qq.check_credentials(ctx.callback_url)
    except UpstreamError as err:
        ctx.app_failed = True
        return _qq_failure(err, ctx)
    return _ok(
        f"QQ 接受 app id {app_id} 和 app key（试探用的假授权码按预期被拒绝为无效）。",
        f"QQ accepts app id {app_id} and the app key (a made-up code was refused as "
        "invalid, as expected).",
    )


# --------------------------------------------------------------------------- 6. callback


def check_qq_callback(ctx: Context) -> Outcome:
    """QQ's authorize page accepts {issuer}/qq/callback as a registered callback.

    The page needs no app key, so this runs even when the app check failed; only when QQ
    stopped before the callback (an unknown app id) is it skipped, not failed twice.
    """
    try:
        ctx.qq.check_callback(ctx.callback_url)
    except UpstreamError as err:
        if ctx.app_failed and err.upstream_code != _CALLBACK_REFUSED:
            return _skip(
                Text(
                    "QQ 在检查回调地址之前就拒绝了请求（见 qq_app）。",
                    "Not checked: QQ refused the request before it got to the callback "
                    "(see qq_app).",
                )
            )
        return _qq_failure(err, ctx)
    return _ok(
        f"QQ 接受回调地址 {ctx.callback_url}。",
        f"QQ accepts the callback {ctx.callback_url}.",
    )


# --------------------------------------------------------------------------- 7. UnionID


def check_qq_unionid(ctx: Context) -> Outcome:
    """UnionID permission (100048), when the broker will ask for UnionIDs.

    QQ only answers it for a user's access token (``/oauth2.0/me?unionid=1`` checks the
    token first), so without ``--access-token`` the check is skipped with instructions.
    """
    users = _unionid_users(ctx.config)
    if not users:
        return _skip(
            Text(
                "没有客户端使用 subject: unionid，不需要 UnionID 权限。",
                "Not needed: no client uses subject: unionid.",
            ),
        )
    who = ", ".join(users)
    if not ctx.access_token:
        return _skip(
            Text(
                f"{who} 使用 subject: unionid，但 QQ 只针对用户的 access token 回答 UnionID 权限，"
                "没有令牌无法检查。",
                f"Not checked: {who} use(s) subject: unionid, but QQ only reveals the UnionID "
                "permission for a user's access token.",
            ),
            Text(
                "用 doctor --access-token TOKEN 传入本应用的一个 QQ access token 再检查；"
                "或用这些客户端登录一次（没有权限时登录会报“未开通 UnionID”）。",
                "Run doctor --access-token TOKEN with a QQ access token of this app, or log "
                "in once through one of these clients (a missing permission fails the login "
                "with 'UnionID not enabled').",
            ),
        )
    try:
        ctx.qq.check_token(ctx.access_token, want_unionid=True)
    except UpstreamError as err:
        return _qq_failure(err, ctx, unionid_users=who)
    return _ok(
        f"本应用已开通 UnionID（{who} 需要）。",
        f"UnionID is enabled for the app (needed by {who}).",
    )


def _unionid_users(config: Config) -> list[str]:
    """Who makes the broker ask /me for a UnionID: a client's subject, else the default."""
    default = config.upstream.qq.subject
    names = [c.client_id for c in config.clients if (c.subject or default) == "unionid"]
    if default == "unionid" and not names:
        names = ["upstream.qq.subject"]
    return names


# --------------------------------------------------------------------------- QQ advice


def _qq_failure(err: UpstreamError, ctx: Context, unionid_users: str = "") -> Outcome:
    """Turn the connector's typed error into bilingual advice.

    Branches on the typed attributes only (class, ``message_key``, ``upstream_code``).
    Codes doctor has no advice of its own for fall back to the connector's hint (ASCII
    English, names the setting), so nothing QQ says is ever lost.
    """
    hint = err.hint
    if isinstance(err, UpstreamUnavailable):
        return _fail(
            Text(
                f"无法访问 QQ（{ctx.config.upstream.qq.base_url}）。",
                f"QQ ({ctx.config.upstream.qq.base_url}) is unreachable.",
            ),
            Text(
                f"检查出站网络（代理、防火墙、DNS）。详情：{hint}",
                f"Check outbound network. {hint}",
            ),
        )
    if isinstance(err, UpstreamProtocolError):
        return _fail(
            Text("QQ 的应答不符合预期。", "QQ's answer was not what QQ Connect sends."),
            Text(
                f"确认 upstream.qq.base_url 指向 QQ 互联（https://graph.qq.com）。详情：{hint}",
                f"Make sure upstream.qq.base_url points at QQ Connect "
                f"(https://graph.qq.com). {hint}",
            ),
        )
    advice = _ADVICE.get(err.upstream_code) if isinstance(err, UpstreamRejected) else None
    if advice is None and err.message_key == "upstream.token_expired":
        advice = _TOKEN_ADVICE
    if advice is None:
        code = err.upstream_code
        return _fail(
            Text(f"QQ 拒绝了请求（{code}）。", f"QQ refused the request ({code})."),
            Text(f"见 docs/doctor.md。详情：{hint}", f"See docs/doctor.md. {hint}"),
        )
    message, fix = advice
    fill = {
        "app_id": ctx.config.upstream.qq.app_id,
        "callback": ctx.callback_url,
        "users": unionid_users,
    }
    return _fail(
        Text(message.zh.format(**fill), message.en.format(**fill)),
        Text(fix.zh.format(**fill), fix.en.format(**fill)),
    )


#: Advice for the QQ codes doctor can provoke (qq-connect.md section 5.1). Values are
#: str.format templates over app_id, callback and users.
_ADVICE: dict[int | None, tuple[Text, Text]] = {
    100001: (
        Text("QQ 没有收到 app id。", "QQ got no app id."),
        Text(
            "设置 upstream.qq.app_id（环境变量 QQ_APP_ID）。", "Set upstream.qq.app_id (QQ_APP_ID)."
        ),
    ),
    100002: (
        Text("QQ 没有收到 app key。", "QQ got no app key."),
        Text(
            "设置 upstream.qq.app_key（环境变量 QQ_APP_KEY）。",
            "Set upstream.qq.app_key (QQ_APP_KEY).",
        ),
    ),
    100008: (
        Text("QQ 不认识 app id {app_id}（100008）。", "QQ does not know app id {app_id} (100008)."),
        Text(
            "把 upstream.qq.app_id 改成 QQ 互联管理中心里该网站应用的 APP ID。",
            "Set upstream.qq.app_id to the APP ID of the website app in the QQ Connect console.",
        ),
    ),
    100009: (
        Text(
            "QQ 拒绝了 app id {app_id} 的 app key（100009）。",
            "QQ rejected the app key of app id {app_id} (100009).",
        ),
        Text(
            "把 upstream.qq.app_key（通常来自环境变量 QQ_APP_KEY）改成 QQ 互联管理中心里"
            "该应用的 APP Key；重置过 APP Key 的话要用新的。",
            "Set upstream.qq.app_key (usually from the QQ_APP_KEY environment variable) to "
            "the app's APP Key from the QQ Connect console; after a key reset, the new one.",
        ),
    ),
    100010: (
        Text(
            "QQ 说回调地址 {callback} 未登记（redirect uri is illegal，100010）。",
            "QQ says the callback {callback} is not registered (redirect uri is illegal, 100010).",
        ),
        Text(
            "在 QQ 互联管理中心的网站回调域中登记完整地址 {callback}（多个用 ; 分隔，"
            "不能带端口；修改约 30 分钟后生效），或修正 issuer。",
            "Register the full URL {callback} as a callback in the QQ Connect console "
            "(several are separated by ';', no port; changes take about 30 minutes), or "
            "correct issuer.",
        ),
    ),
    100011: (
        Text(
            "QQ 说应用 {app_id} 未上线（100011）。", "QQ says app {app_id} is not online (100011)."
        ),
        Text(
            "在 QQ 互联管理中心检查应用的审核状态。",
            "Check the app's review status in the QQ Connect console.",
        ),
    ),
    100048: (
        Text(
            "本应用没有 UnionID 权限（companyid not set，100048），而 {users} 需要它。",
            "The app has no UnionID permission (companyid not set, 100048), which {users} need(s).",
        ),
        Text(
            "在 QQ 互联管理中心为该应用开通 UnionID（应用须已通过审核），"
            "或把这些客户端改为 subject: openid。",
            "Enable UnionID for the app in the QQ Connect console (the app must be "
            "approved), or switch these clients to subject: openid.",
        ),
    ),
}
_CALLBACK_REFUSED = 100010  # redirect uri is illegal
_TOKEN_ADVICE = (
    Text("传入的 access token 无效或已过期。", "The access token given is invalid or expired."),
    Text(
        "用本应用一次新登录得到的 QQ access token 再运行。",
        "Run again with a QQ access token from a fresh login to this app.",
    ),
)


# --------------------------------------------------------------------------- running


#: (name, title, check) in the order they run: later checks read what earlier ones found.
CHECKS: tuple[tuple[str, Text, Check], ...] = (
    ("config", Text("配置", "Configuration"), check_config),
    ("issuer", Text("issuer 可访问", "Issuer reachable"), check_issuer),
    ("jwks", Text("JWKS 与签名密钥一致", "JWKS matches the signing keys"), check_jwks),
    ("clock", Text("与 QQ 的时钟偏差", "Clock skew against QQ"), check_clock),
    ("qq_app", Text("QQ app id / app key", "QQ app id / app key"), check_qq_app),
    ("qq_callback", Text("QQ 回调地址登记", "QQ callback registration"), check_qq_callback),
    ("qq_unionid", Text("QQ UnionID 权限", "QQ UnionID permission"), check_qq_unionid),
)


#: Checks that talk to QQ Connect; another upstream connector has its own failure modes.
QQ_CHECKS = frozenset({"clock", "qq_app", "qq_callback", "qq_unionid"})


def run_checks(config: Config, *, access_token: str | None = None) -> list[CheckResult]:
    """Run every check against the deployment ``config`` describes, in order."""
    if config.upstream.connector != "qq":
        return _run_without_qq(config)
    qq = config.upstream.qq
    results = []
    with (
        requests.Session() as http,
        QQConnector(
            app_id=qq.app_id,
            app_key=qq.app_key,
            base_url=qq.base_url,
            scope=qq.scope,
            read_timeout=_TIMEOUT[1],
        ) as connector,
    ):
        ctx = Context(
            config=config, http=http, qq_connector=connector, access_token=access_token
        )
        for name, title, check in CHECKS:
            outcome = check(ctx)
            results.append(CheckResult(name, title, outcome.status, outcome.message, outcome.fix))
    return results


def _run_without_qq(config: Config) -> list[CheckResult]:
    """A non-QQ connector: the broker-side checks run, the QQ ones say why they do not."""
    name = config.upstream.connector
    skipped = Outcome(
        SKIP,
        Text(f"上游连接器是 {name}，不是 QQ：不检查 QQ 互联", f"the upstream connector is {name}, "
             "not QQ: QQ Connect is not checked"),
    )  # fmt: skip
    results = []
    with requests.Session() as http:
        ctx = Context(config=config, http=http, qq_connector=None)
        for check_name, title, check in CHECKS:
            outcome = skipped if check_name in QQ_CHECKS else check(ctx)
            results.append(
                CheckResult(check_name, title, outcome.status, outcome.message, outcome.fix)
            )
    return results


def exit_status(results: Sequence[CheckResult]) -> int:
    """0 when nothing failed (skips are fine), 1 otherwise."""
    return 1 if any(result.status == FAIL for result in results) else 0


_MARKS = {OK: "[ OK ]", FAIL: "[FAIL]", SKIP: "[SKIP]"}
_FIX_LABEL = Text("修复：", "Fix: ")


def render_text(results: Sequence[CheckResult], langs: Sequence[str] = LANGS) -> str:
    """One block per check, in the chosen language(s), then a one-line summary."""
    blocks = []
    for result in results:
        title = " / ".join(dict.fromkeys(result.title.get(lang) for lang in langs))
        lines = [f"{_MARKS[result.status]} {result.name}: {title}"]
        lines += [f"       {result.message.get(lang)}" for lang in langs]
        if result.fix is not None:
            lines += [f"       {_FIX_LABEL.get(lang)}{result.fix.get(lang)}" for lang in langs]
        blocks.append("\n".join(lines))
    counts = {status: sum(r.status == status for r in results) for status in (OK, FAIL, SKIP)}
    summary = Text(
        f"通过 {counts[OK]} 项，失败 {counts[FAIL]} 项，跳过 {counts[SKIP]} 项。",
        f"{counts[OK]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped.",
    )
    blocks.append("\n".join(summary.get(lang) for lang in langs))
    return "\n\n".join(blocks)


def render_json(results: Sequence[CheckResult]) -> str:
    """``{"ok": bool, "checks": [...]}`` with both languages, for scripts."""
    data = {"ok": exit_status(results) == 0, "checks": [r.to_json() for r in results]}
    return json.dumps(data, ensure_ascii=False)
