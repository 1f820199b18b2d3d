"""Typed broker configuration, loaded from YAML with ``${VAR}`` environment interpolation.

Why this module is strict: a misconfigured identity provider fails *open* far more often
than it fails closed (an ``http://`` redirect URI, a sample secret key, an emulator as the
upstream). So every value is checked once, at start-up, and every problem is reported as
one line that names the file, the YAML line and the dotted key path::

    config.yaml: line 14: clients[0].redirect_uris[1]: 'http://app.example/cb' ...

Secrets (``app_key``, ``client_secret``, ``secret_key``, ``pairwise_salt``, URLs that may
carry passwords) are never echoed in an error message, and are kept out of ``repr()``.

Interpolation: inside string scalars (never keys), ``${NAME}`` is replaced by the
environment variable ``NAME`` (an error when it is unset) and ``${NAME:-default}`` by its
value, or ``default`` when it is unset or empty. An integer or boolean setting may be
written as an unquoted ``${PORT:-8000}``. A setting that interpolates to the empty string
counts as "not configured": optional secrets become ``None``, other settings take their
default, required ones are reported missing.

YAML booleans follow YAML 1.2 (only ``true``/``false``), so ``upstream_check: off`` or a
client called ``no`` stay strings instead of turning into ``False``.
"""

from __future__ import annotations

import base64
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final
from urllib.parse import SplitResult, parse_qsl, urlsplit

import yaml

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_NAME",
    "MAX_WORKERS",
    "PRODUCTION_QQ_BASE_URL",
    "SIGNING_ALGORITHMS",
    "UNUSED_QQ",
    "ClaimsConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "KeysConfig",
    "LifetimesConfig",
    "QQConfig",
    "RateLimitConfig",
    "ServerConfig",
    "StorageConfig",
    "UpstreamConfig",
    "auto_workers",
    "is_loopback_host",
    "is_loopback_url",
    "load_config",
    "parse_client",
    "parse_config",
    "resolve_config_path",
]

DEFAULT_CONFIG_NAME: Final = "config.yaml"
CONFIG_ENV_VAR: Final = "BROKER_CONFIG"
PRODUCTION_QQ_BASE_URL: Final = "https://graph.qq.com"
#: Must match ``broker.keys.SUPPORTED_ALGORITHMS`` (a test checks it); kept here so that
#: loading a config does not import the JOSE stack.
SIGNING_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")

TOKEN_ENDPOINT_AUTH_METHODS: Final = (
    "client_secret_basic",
    "client_secret_post",
    "none",
    "private_key_jwt",
)
GRANT_TYPES: Final = ("authorization_code", "refresh_token")
CLIENT_SUBJECTS: Final = ("openid", "unionid", "pairwise")
UPSTREAM_SUBJECTS: Final = ("openid", "unionid")
EMAIL_POLICIES: Final = ("omit", "synthetic")
UPSTREAM_CHECKS: Final = ("strict", "cached", "off")
ACCESS_TOKEN_FORMATS: Final = ("opaque", "jwt")
PICTURE_POLICIES: Final = ("https", "proxy", "passthrough")

#: Query parameters the broker itself puts on redirects; a registered URI that already
#: carries one would let an attacker-controlled value shadow the real one
#: (RFC 6749 §4.1.2, RFC 9207).
_RESERVED_REDIRECT_PARAMS: Final = frozenset(
    {"code", "state", "iss", "error", "error_description", "error_uri", "response"}
)
#: JWK members that only a private key has; a client's ``jwks`` must be public.
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_MIN_SECRET_KEY_BITS: Final = 256
# DESIGN.md: client secrets carry >= 128 bits; 22 base64url characters are 132 bits.
_MIN_CLIENT_SECRET_CHARS: Final = 22
_MIN_PAIRWISE_SALT_CHARS: Final = 16
_MAX_CODE_LIFETIME: Final = 600
#: Placeholder words that show up in sample configs and tutorials (normalised: lowercase,
#: letters and digits only). A secret key containing one is a copy-paste, not a secret.
_SAMPLE_SECRET_WORDS: Final = (
    "changeme",
    "changethis",
    "replaceme",
    "yoursecret",
    "mysecret",
    "secretkey",
    "example",
    "placeholder",
    "notsecret",
    "insecure",
)
_SAMPLE_SECRETS: Final = frozenset({"dev", "secret", "test", "password", "development", "key"})

_VAR_REFERENCE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}")
_DIGITS = re.compile(r"[0-9]+")
_REDIS_DB = re.compile(r"(?:/[0-9]{0,5})?")
_SIGNED_INT = re.compile(r"[+-]?[0-9]+")
_URL_WITH_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_RELATIVE_SQLITE = re.compile(r"(?P<prefix>sqlite(?:\+[A-Za-z0-9_]+)?:///)(?P<rest>[^/].*)")
_CLIENT_ID = re.compile(r"[\x21-\x7e]{1,255}")
_SCOPE = re.compile(r"[A-Za-z0-9_, ]+")
_CONNECTOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DOMAIN = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
_HEX = frozenset("0123456789abcdefABCDEF")
_BASE64 = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_=")

_KeyPath = tuple[str | int, ...]


# --------------------------------------------------------------------------- errors


class ConfigError(Exception):
    """A config problem, as one line: ``<file>: line N: <key.path>: <problem>``.

    ``line`` and ``path`` are left out when unknown (a missing file, a dict given to
    :func:`parse_config`). The attributes let the CLI or tests inspect the parts.
    """

    def __init__(
        self,
        problem: str,
        *,
        source: str = "<config>",
        line: int | None = None,
        path: str = "",
    ) -> None:
        self.problem = " ".join(problem.split())
        self.source = source
        self.line = line
        self.path = path
        super().__init__(self._format())

    def _format(self) -> str:
        parts = [self.source]
        if self.line is not None:
            parts.append(f"line {self.line}")
        if self.path:
            parts.append(self.path)
        parts.append(self.problem)
        return ": ".join(parts)


# --------------------------------------------------------------------------- dataclasses


#: The most processes ``server.workers`` may ask for (``auto`` included).
MAX_WORKERS: Final = 64


def auto_workers() -> int:
    """``server.workers: auto``: the CPUs this process may run on (its affinity mask, which
    a container's cpuset narrows), else every CPU; at most ``MAX_WORKERS``."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = 32  # QQ calls are I/O-bound: slow upstream logins must not starve /token
    #: Processes ``serve`` runs on one port (broker/workers.py): threads cover QQ's latency,
    #: workers the cores (the GIL runs one process's Python on one core at a time).
    #: ``auto`` (the default): one per CPU this process may run on, at most ``MAX_WORKERS``.
    workers: int = field(default_factory=auto_workers)
    #: SIGTERM stops accepting, then waits this long for in-flight requests before exiting.
    shutdown_timeout: int = 30
    #: Proxies (IP addresses or CIDR networks) whose X-Forwarded-For is believed.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True)
class StorageConfig:
    """``url`` is a SQLAlchemy URL; a relative SQLite path is already made absolute."""

    url: str = field(default="sqlite:///broker.sqlite3", repr=False)  # may carry a password
    #: Run the Alembic migrations on start (under a lock); off: refuse to start on an old schema.
    auto_upgrade: bool = True
    #: Connections each process keeps open (PostgreSQL), and how many more it may open at peaks.
    pool_size: int = 10
    max_overflow: int = 10
    #: Seconds between purges of expired rows on each instance (0: only ``db purge``).
    purge_interval: int = 300


@dataclass(frozen=True)
class KeysConfig:
    """``dir`` is absolute; ``algorithms`` always starts with RS256 and holds ``algorithm``."""

    dir: Path
    algorithm: str = "RS256"
    algorithms: tuple[str, ...] = ("RS256",)
    #: ``files`` (``dir``, shared between instances by a shared mount) or ``database``.
    storage: str = "files"
    #: base64url of 32 random bytes: encrypts private keys and secrets kept in the database.
    encryption_key: str | None = field(default=None, repr=False)
    #: ``Cache-Control: max-age`` of /jwks.json: how long a relying party may keep our keys.
    jwks_max_age: int = 3600
    #: Seconds between automatic rotations (0: only ``keys rotate``).
    rotation_interval: int = 90 * 86400
    #: How long a new key is published before it signs; at least jwks_max_age + refresh.
    publish_ahead: int = 2 * 3600

    @property
    def refresh_interval(self) -> int:
        """How often each instance re-reads the key set (to see keys another one added)."""
        return max(1, min(30, self.jwks_max_age // 2))


@dataclass(frozen=True)
class QQConfig:
    app_id: str
    app_key: str = field(repr=False)
    base_url: str = PRODUCTION_QQ_BASE_URL
    scope: str = "get_user_info"
    subject: str = "openid"
    allow_staging_base_url: bool = False


@dataclass(frozen=True)
class UpstreamConfig:
    """``connector`` names the upstream connector, an entry point of the group
    ``qq_oidc_broker.connectors`` (broker.connectors.registry); ``qq`` is the built-in one.

    ``qq`` is ``upstream.qq``, validated as always. With another connector it is optional
    (only its ``subject`` still applies) and, when absent, :data:`UNUSED_QQ`. ``options`` is
    ``upstream.<connector>`` for a non-QQ connector: free-form with ``${VAR}`` expanded,
    validated by the connector's factory at start-up, and kept out of ``repr`` (secrets).
    """

    qq: QQConfig
    connector: str = "qq"
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)


#: ``upstream.qq`` for a non-QQ connector configured without one: the defaults (subject
#: ``openid``) with no app. Nothing builds a QQ connector from it.
UNUSED_QQ: Final = QQConfig(app_id="", app_key="")


@dataclass(frozen=True)
class MetricsConfig:
    """Prometheus metrics: on their own port (``port``), and/or at ``/metrics`` on the main
    port for requests bearing ``token``. Neither set: no metrics endpoint at all."""

    port: int = 0  # 0: no separate listener
    host: str = "127.0.0.1"
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LoggingConfig:
    """``format: json`` writes one JSON object per line; ``text`` is for people at a terminal.
    OpenIDs are logged as a keyed hash unless ``log_identifiers`` (debugging only)."""

    format: str = "text"
    level: str = "INFO"
    log_identifiers: bool = False


@dataclass(frozen=True)
class RateLimitConfig:
    enabled: bool = True
    storage: str = field(default="memory", repr=False)  # a redis:// URL may carry a password


@dataclass(frozen=True)
class LifetimesConfig:
    """Seconds."""

    code: int = 60
    login: int = 600
    access_token: int = 3600
    id_token: int = 3600
    refresh_idle: int = 2592000
    refresh_absolute: int = 7776000
    session: int = 86400


@dataclass(frozen=True)
class ClaimsConfig:
    """``avatar_hosts``: extra ``host:port`` pairs the avatar proxy may fetch from,
    loopback addresses included; development only (the emulator serves avatars)."""

    picture: str = "https"
    gender: bool = False
    email_domain: str = "qq-user.invalid"
    avatar_hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClientConfig:
    """A registered relying party. ``subject=None`` means "use ``upstream.qq.subject``";
    ``id_token_signed_response_alg=None`` means "use ``keys.algorithm``"."""

    client_id: str
    client_secret: str | None = field(repr=False)
    redirect_uris: tuple[str, ...]
    token_endpoint_auth_method: str = "client_secret_basic"
    grant_types: tuple[str, ...] = ("authorization_code",)
    post_logout_redirect_uris: tuple[str, ...] = ()
    backchannel_logout_uri: str | None = None
    subject: str | None = None
    sector_identifier_uri: str | None = None
    email: str = "omit"
    upstream_check: str = "cached"
    access_token_format: str = "opaque"
    id_token_signed_response_alg: str | None = None
    expose_qq_ids: bool = False
    jwks: Mapping[str, Any] | None = None
    jwks_uri: str | None = None


@dataclass(frozen=True)
class Config:
    """The whole broker configuration. ``secret_key``/``pairwise_salt`` are ``None`` when
    not configured (the broker then generates and keeps them beside the signing keys)."""

    issuer: str
    server: ServerConfig
    secret_key: str | None = field(repr=False)
    storage: StorageConfig
    keys: KeysConfig
    upstream: UpstreamConfig
    rate_limits: RateLimitConfig
    lifetimes: LifetimesConfig
    claims: ClaimsConfig
    clients: tuple[ClientConfig, ...]
    pairwise_salt: str | None = field(default=None, repr=False)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    source: str = "<config>"

    @cached_property
    def _clients_by_id(self) -> Mapping[str, ClientConfig]:
        # Built once so that a per-request client lookup is a dict hit, not a scan.
        return {client.client_id: client for client in self.clients}

    @property
    def is_development(self) -> bool:
        """A loopback issuer means development: only there may URLs be ``http://``, the
        emulator be the upstream, and cookies drop ``Secure``."""
        return is_loopback_url(self.issuer)

    def client(self, client_id: str) -> ClientConfig | None:
        """The registered client with this id, or ``None``."""
        return self._clients_by_id.get(client_id)


# --------------------------------------------------------------------------- public API


def resolve_config_path(cli_value: str | None, environ: Mapping[str, str] = os.environ) -> Path:
    """``--config`` wins, then ``BROKER_CONFIG``, then ``./config.yaml``."""
    if cli_value:
        return Path(cli_value)
    from_env = environ.get(CONFIG_ENV_VAR)
    if from_env:
        return Path(from_env)
    return Path(DEFAULT_CONFIG_NAME)


def load_config(path: Path, environ: Mapping[str, str] = os.environ) -> Config:
    """Read, interpolate and validate a YAML config file; raise :class:`ConfigError`."""
    source = str(path)
    text = _read_text(path, source)
    data, lines = _parse_yaml(text, source)
    if data is None:
        raise ConfigError(
            "the file is empty; 'issuer', 'upstream' and 'clients' are needed", source=source
        )
    base_dir = Path(os.path.abspath(path)).parent
    ctx = _Context(source=source, lines=lines, environ=environ, base_dir=base_dir)
    return _build_config(ctx, data)


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str = "<config>",
    base_dir: Path | None = None,
    environ: Mapping[str, str] = os.environ,
) -> Config:
    """Validate an in-memory config (dev mode, tests) exactly like :func:`load_config`.

    ``base_dir`` (default: the current directory at call time) anchors relative paths.
    """
    root = Path.cwd() if base_dir is None else base_dir
    ctx = _Context(source=source, lines={}, environ=environ, base_dir=Path(os.path.abspath(root)))
    return _build_config(ctx, data)


def parse_client(
    data: Mapping[str, Any], config: Config, *, source: str = "<client>"
) -> ClientConfig:
    """Validate one client mapping exactly as an entry of ``clients`` in ``config`` would be.

    Clients kept in the database (``qq-oidc-broker clients add``) pass the same rules as
    configured ones (keys, URIs, methods, secrets, the production checks and the published
    algorithms of ``config``), so the command line can never register a client that the
    config file would refuse. There is no environment here (``${VAR}`` names no variable).
    Errors name ``source`` and the client key (``redirect_uris[0]: ...``).
    """
    ctx = _Context(source=source, lines={}, environ={}, base_dir=Path.cwd())
    return _client(_Section(ctx, (), data, _CLIENT_KEYS), config.keys, not config.is_development)


def is_loopback_host(host: str | None) -> bool:
    """127.0.0.0/8, ::1 (with or without brackets) and ``localhost``."""
    if not host:
        return False
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_loopback_url(url: str) -> bool:
    """Whether the URL's host is a loopback host (see :func:`is_loopback_host`)."""
    try:
        return is_loopback_host(urlsplit(url).hostname)
    except ValueError:
        return False


# --------------------------------------------------------------------------- YAML with lines


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: ``on``/``off``/``yes``/``no`` stay strings."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _read_text(path: Path, source: str) -> str:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"file not found (pass --config FILE or set {CONFIG_ENV_VAR})", source=source
        ) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", source=source) from None
    except PermissionError:
        raise ConfigError("cannot read the file: permission denied", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror}", source=source) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError("the file is not UTF-8 text", source=source) from None


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[_KeyPath, int]]:
    """Parse YAML into plain data plus a map from key path to 1-based line.

    The node tree is walked by hand (instead of ``yaml.safe_load``) to keep the marks;
    the messages are rebuilt from the error's parts because PyYAML's own ``str()`` quotes
    the offending line, which may hold a secret.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        lines: dict[_KeyPath, int] = {}
        data = _NodeWalker(loader, source, lines).build(node, ()) if node is not None else None
        return data, lines
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML: {type(exc).__name__}", source=source) from None
    finally:
        loader.dispose()


def _yaml_error(exc: yaml.MarkedYAMLError, source: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "cannot parse"
    if exc.context and exc.problem:
        problem = f"{problem} ({exc.context}"
        if exc.context_mark is not None and exc.context_mark is not mark:
            problem += f" that starts at line {exc.context_mark.line + 1}"
        problem += ")"
    line = mark.line + 1 if mark is not None else None
    return ConfigError(f"malformed YAML: {problem}", source=source, line=line)


class _NodeWalker:
    """Turns a composed YAML node tree into dicts/lists/scalars, recording line numbers."""

    _MERGE_TAG = "tag:yaml.org,2002:merge"

    def __init__(self, loader: _Loader, source: str, lines: dict[_KeyPath, int]) -> None:
        self._loader = loader
        self._source = source
        self._lines = lines
        self._active: set[int] = set()

    def build(self, node: yaml.Node, path: _KeyPath) -> Any:
        if id(node) in self._active:
            raise self._error(node, path, "recursive YAML alias")
        if isinstance(node, yaml.MappingNode):
            self._active.add(id(node))
            try:
                return self._mapping(node, path)
            finally:
                self._active.discard(id(node))
        if isinstance(node, yaml.SequenceNode):
            self._active.add(id(node))
            try:
                return self._sequence(node, path)
            finally:
                self._active.discard(id(node))
        return self._loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: _KeyPath) -> dict[str, Any]:
        self._reject_duplicate_keys(node, path)
        self._loader.flatten_mapping(node)  # applies ``<<`` merge keys like safe_load does
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._error(key_node, path, "a key must be a plain string")
            key = self._loader.construct_object(key_node)
            if not isinstance(key, str):
                raise self._error(
                    key_node, path, f"key {key_node.value!r} must be a string (quote it)"
                )
            self._lines[(*path, key)] = key_node.start_mark.line + 1
            result[key] = self.build(value_node, (*path, key))
        return result

    def _sequence(self, node: yaml.SequenceNode, path: _KeyPath) -> list[Any]:
        items: list[Any] = []
        for index, item in enumerate(node.value):
            self._lines[(*path, index)] = item.start_mark.line + 1
            items.append(self.build(item, (*path, index)))
        return items

    def _reject_duplicate_keys(self, node: yaml.MappingNode, path: _KeyPath) -> None:
        """PyYAML keeps the last of two equal keys silently; a second ``client_secret``
        or ``redirect_uris`` further down a long file must not win unnoticed."""
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == self._MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise ConfigError(
                    f"duplicate key (first at line {seen[key_node.value]})",
                    source=self._source,
                    line=line,
                    path=_format_path((*path, key_node.value)),
                )
            seen[key_node.value] = line

    def _error(self, node: yaml.Node, path: _KeyPath, problem: str) -> ConfigError:
        return ConfigError(
            problem, source=self._source, line=node.start_mark.line + 1, path=_format_path(path)
        )


# --------------------------------------------------------------------------- reading values


def _format_path(path: _KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _show(value: str, limit: int = 80) -> str:
    """A non-secret value quoted for a message, cut short so a line stays a line."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


@dataclass(frozen=True)
class _Context:
    source: str
    lines: Mapping[_KeyPath, int]
    environ: Mapping[str, str]
    base_dir: Path

    def error(self, path: _KeyPath, problem: str) -> ConfigError:
        return ConfigError(
            problem, source=self.source, line=self.line_of(path), path=_format_path(path)
        )

    def line_of(self, path: _KeyPath) -> int | None:
        """The line of the key itself, else of the nearest enclosing key that has one."""
        for end in range(len(path), 0, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def interpolate(self, path: _KeyPath, text: str) -> str:
        """Expand ``${NAME}`` / ``${NAME:-default}``; the text itself is never echoed."""
        if "${" not in text:
            return text
        out: list[str] = []
        pos = 0
        while (start := text.find("${", pos)) != -1:
            match = _VAR_REFERENCE.match(text, start)
            if match is None:
                raise self.error(
                    path, "malformed variable reference; write ${NAME} or ${NAME:-default}"
                )
            out.append(text[pos:start])
            out.append(self._variable(path, match))
            pos = match.end()
        out.append(text[pos:])
        return "".join(out)

    def _variable(self, path: _KeyPath, match: re.Match[str]) -> str:
        name, default = match.group("name"), match.group("default")
        value = self.environ.get(name)
        if default is not None:
            return value if value else default
        if value is None:
            raise self.error(
                path,
                f"environment variable {name} is not set "
                f"(set it, or write ${{{name}:-default}} for a default)",
            )
        return value

    def resolve_path(self, value: str) -> Path:
        return Path(os.path.normpath(self.base_dir / value))


class _Section:
    """One mapping of the config, read key by key with its dotted path for errors.

    Unknown keys are refused up front, so a typo is reported as a typo ("did you mean
    'redirect_uris'?") and not as the required key it was meant to be going missing.
    """

    def __init__(self, ctx: _Context, path: _KeyPath, raw: Any, known: Sequence[str]) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ctx.error(path, f"must be a mapping of keys, got {_type_name(raw)}")
        self.ctx = ctx
        self.path = path
        self.raw: Mapping[str, Any] = raw
        self._reject_unknown(known)

    def _reject_unknown(self, known: Sequence[str]) -> None:
        for key in self.raw:
            if key in known:
                continue
            name = str(key)
            hint = ""
            if ":" in name:
                # ``app_key:value`` (no space after the colon) is one scalar: show only the
                # part before the colon, the rest may be a secret.
                name = name.split(":", 1)[0]
                hint = " (missing a space after ':'?)"
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
            suggestion = f"; did you mean {close[0]!r}?" if close else ""
            allowed = "" if close else f"; known keys: {', '.join(known)}"
            raise self.ctx.error(
                (*self.path, str(key) if not hint else name),
                f"unknown key {_show(name, 40)}{hint}{suggestion}{allowed}",
            )

    def at(self, key: str | int) -> _KeyPath:
        return (*self.path, key)

    def error(self, key: str | int, problem: str) -> ConfigError:
        return self.ctx.error(self.at(key), problem)

    def present(self, key: str) -> bool:
        return self.raw.get(key) is not None

    # -- strings

    def _string(self, key: str, *, secret: bool = False) -> str | None:
        """The interpolated string, or None when absent/null/empty (= not configured)."""
        raw = self.raw.get(key)
        if raw is None:
            return None
        if not isinstance(raw, str):
            hint = "" if secret else " (quote it)"
            raise self.error(key, f"must be a string, got {_type_name(raw)}{hint}")
        value = self.ctx.interpolate(self.at(key), raw)
        return value if value != "" else None

    def required_str(self, key: str, *, secret: bool = False) -> str:
        value = self._string(key, secret=secret)
        if value is None:
            problem = "must not be empty" if key in self.raw else "is required"
            raise self.error(key, problem)
        return value

    def optional_str(self, key: str, *, secret: bool = False) -> str | None:
        return self._string(key, secret=secret)

    def str_or(self, key: str, default: str) -> str:
        value = self._string(key)
        return default if value is None else value

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.str_or(key, default)
        self.check_choice(key, value, choices)
        return value

    def optional_choice(self, key: str, choices: Sequence[str]) -> str | None:
        value = self._string(key)
        if value is not None:
            self.check_choice(key, value, choices)
        return value

    def check_choice(self, key: str, value: str, choices: Sequence[str]) -> None:
        if value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise self.error(key, f"{_show(value, 40)} is not one of: {', '.join(choices)}{hint}")

    # -- numbers and flags

    def integer(
        self, key: str, default: int, *, minimum: int = 1, maximum: int | None = None
    ) -> int:
        raw = self.raw.get(key)
        value = self._coerce_int(key, raw, default)
        if value < minimum:
            raise self.error(key, f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}, got {value}")
        return value

    def _coerce_int(self, key: str, raw: Any, default: int) -> int:
        if raw is None:
            return default
        if isinstance(raw, bool) or not isinstance(raw, int | str):
            raise self.error(key, f"must be an integer, got {_type_name(raw)}")
        if isinstance(raw, int):
            return raw
        text = self.ctx.interpolate(self.at(key), raw).strip()
        if "${" in raw and text == "":
            return default
        if "${" in raw and _SIGNED_INT.fullmatch(text):
            return int(text)
        raise self.error(key, "must be an integer, got a string")

    def boolean(self, key: str, default: bool) -> bool:
        raw = self.raw.get(key)
        if raw is None:
            return default
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and "${" in raw:
            text = self.ctx.interpolate(self.at(key), raw).strip().lower()
            if text == "":
                return default
            if text in ("true", "false"):
                return text == "true"
        raise self.error(key, f"must be true or false, got {_type_name(raw)}")

    # -- lists and sections

    def str_list(self, key: str, default: tuple[str, ...] | None) -> tuple[str, ...]:
        """A list of non-empty strings; ``default=None`` makes it required and non-empty."""
        raw = self.raw.get(key)
        if raw is None:
            if default is None:
                raise self.error(key, "is required (a non-empty list)")
            return default
        if not isinstance(raw, list):
            raise self.error(key, f"must be a list, got {_type_name(raw)}")
        if not raw and default is None:
            raise self.error(key, "must not be empty")
        items: list[str] = []
        for index, item in enumerate(raw):
            path = (*self.at(key), index)
            if not isinstance(item, str):
                raise self.ctx.error(path, f"must be a string, got {_type_name(item)}")
            value = self.ctx.interpolate(path, item)
            if value == "":
                raise self.ctx.error(path, "must not be empty")
            items.append(value)
        return tuple(items)

    def section(self, key: str, known: Sequence[str]) -> _Section:
        return _Section(self.ctx, self.at(key), self.raw.get(key), known)

    def sections(self, key: str, known: Sequence[str]) -> list[_Section]:
        raw = self.raw.get(key)
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise self.error(key, f"must be a list, got {_type_name(raw)}")
        return [_Section(self.ctx, (*self.at(key), i), item, known) for i, item in enumerate(raw)]


# --------------------------------------------------------------------------- URL checks


def _url_parts(section: _Section, key: str | int, value: str, what: str) -> SplitResult:
    """Shared URL syntax checks; returns ``urlsplit`` parts."""
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise section.error(key, f"{what} must not contain whitespace or control characters")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise section.error(key, f"{_show(value)} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise section.error(
            key,
            f"{_show(value)}: {what} must be an absolute https:// URL "
            "(http:// only for a loopback host)",
        )
    if not parts.hostname:
        raise section.error(key, f"{_show(value)}: {what} has no host")
    if "@" in parts.netloc:
        raise section.error(key, f"{_show(value)}: {what} must not contain user info (user@)")
    if "#" in value:
        raise section.error(key, f"{_show(value)}: {what} must not contain a fragment (#)")
    return parts


def _require_https_unless_loopback(
    section: _Section, key: str | int, value: str, parts: SplitResult, what: str
) -> None:
    if parts.scheme.lower() == "http" and not is_loopback_host(parts.hostname):
        raise section.error(
            key,
            f"{_show(value)}: {what} must use https:// (http:// is only allowed for a loopback "
            "host: 127.0.0.1, [::1], localhost)",
        )


def _check_client_uri(section: _Section, key: str | int, value: str, what: str) -> str:
    """A URI the broker sends browsers or requests to: exact, absolute, https (or loopback
    http, in production as in development), no wildcard, no fragment, no reserved params."""
    if "*" in value:
        raise section.error(key, f"{_show(value)}: wildcards are not allowed; list each URI")
    parts = _url_parts(section, key, value, what)
    _require_https_unless_loopback(section, key, value, parts, what)
    names = {name for name, _ in parse_qsl(parts.query, keep_blank_values=True)}
    reserved = sorted(names & _RESERVED_REDIRECT_PARAMS)
    if reserved:
        raise section.error(
            key,
            f"{_show(value)}: the query must not carry {', '.join(reserved)} "
            "(the broker adds these itself)",
        )
    return value


def _check_issuer(section: _Section, value: str) -> str:
    parts = _url_parts(section, "issuer", value, "the issuer")
    if "?" in value:
        raise section.error("issuer", f"{_show(value)}: the issuer must not have a query")
    if parts.path.endswith("/"):
        raise section.error(
            "issuer",
            f"{_show(value)}: the issuer must not end with '/' (write {_show(value.rstrip('/'))})",
        )
    _require_https_unless_loopback(section, "issuer", value, parts, "the issuer")
    return value


# --------------------------------------------------------------------------- sections


_TOP_KEYS: Final = (
    "issuer",
    "server",
    "secret_key",
    "storage",
    "keys",
    "upstream",
    "rate_limits",
    "metrics",
    "logging",
    "lifetimes",
    "claims",
    "clients",
    "pairwise_salt",
)
_CLIENT_KEYS: Final = (
    "client_id",
    "client_secret",
    "redirect_uris",
    "token_endpoint_auth_method",
    "grant_types",
    "post_logout_redirect_uris",
    "backchannel_logout_uri",
    "subject",
    "sector_identifier_uri",
    "email",
    "upstream_check",
    "access_token_format",
    "id_token_signed_response_alg",
    "expose_qq_ids",
    "jwks",
    "jwks_uri",
)


_SERVER_KEYS: Final = (
    "host",
    "port",
    "threads",
    "workers",
    "shutdown_timeout",
    "trusted_proxies",
)
_STORAGE_KEYS: Final = ("url", "auto_upgrade", "pool_size", "max_overflow", "purge_interval")
_KEYS_KEYS: Final = (
    "dir",
    "algorithm",
    "algorithms",
    "storage",
    "encryption_key",
    "jwks_max_age",
    "rotation",
)
KEY_STORAGES: Final = ("files", "database")


def _build_config(ctx: _Context, data: Any) -> Config:
    top = _Section(ctx, (), data, _TOP_KEYS)
    issuer = _check_issuer(top, top.required_str("issuer"))
    production = not is_loopback_url(issuer)
    keys = _keys(top.section("keys", _KEYS_KEYS))
    upstream = _upstream(top, production)
    return Config(
        issuer=issuer,
        server=_server(top.section("server", _SERVER_KEYS)),
        secret_key=_secret_key(top, production),
        storage=_storage(top.section("storage", _STORAGE_KEYS)),
        keys=keys,
        upstream=upstream,
        rate_limits=_rate_limits(top.section("rate_limits", ("enabled", "storage"))),
        metrics=_metrics(top.section("metrics", ("port", "host", "token"))),
        logging=_logging(top.section("logging", ("format", "level", "log_identifiers"))),
        lifetimes=_lifetimes(top.section("lifetimes", tuple(LifetimesConfig.__annotations__))),
        claims=_claims(
            top.section("claims", ("picture", "gender", "email_domain", "avatar_hosts")),
            production,
        ),
        clients=_clients(top, keys, production),
        pairwise_salt=_pairwise_salt(top, production),
        source=ctx.source,
    )


def _server(section: _Section) -> ServerConfig:
    defaults = ServerConfig()
    return ServerConfig(
        host=section.str_or("host", defaults.host),
        port=section.integer("port", defaults.port, minimum=1, maximum=65535),
        threads=section.integer("threads", defaults.threads, minimum=1, maximum=1024),
        workers=_workers(section),
        shutdown_timeout=section.integer(
            "shutdown_timeout", defaults.shutdown_timeout, minimum=0, maximum=3600
        ),
        trusted_proxies=_trusted_proxies(section),
    )


def _workers(section: _Section) -> int:
    """``auto`` (also when absent or empty) or a number of processes, 1 to ``MAX_WORKERS``."""
    raw = section.raw.get("workers")
    if isinstance(raw, str):
        raw = section.ctx.interpolate(section.at("workers"), raw).strip()
        if raw.isascii() and raw.isdigit():
            raw = int(raw)
    if raw is None or raw in ("auto", ""):
        return auto_workers()
    if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= MAX_WORKERS:
        return raw
    if isinstance(raw, str):
        got = _show(raw, 20)
    else:
        got = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else _type_name(raw)
    raise section.error(
        "workers",
        f"must be auto (one per CPU) or a number of processes from 1 to {MAX_WORKERS}, got {got}",
    )


def _trusted_proxies(section: _Section) -> tuple[str, ...]:
    """Addresses or networks (``10.0.0.0/8``), normalised; anything else is an error."""
    networks = []
    for index, item in enumerate(section.str_list("trusted_proxies", ())):
        try:
            networks.append(str(ipaddress.ip_network(item.strip(), strict=False)))
        except ValueError:
            raise section.ctx.error(
                (*section.at("trusted_proxies"), index),
                f"{_show(item, 45)} is not an IP address or network such as 10.0.0.0/8",
            ) from None
    return tuple(networks)


def _secret_key(top: _Section, production: bool) -> str | None:
    value = top.optional_str("secret_key", secret=True)
    if value is None or not production:
        return value
    if _looks_like_sample(value):
        raise top.error(
            "secret_key",
            "is a well-known sample value; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` or leave it empty",
        )
    if _estimated_bits(value) < _MIN_SECRET_KEY_BITS:
        raise top.error(
            "secret_key",
            f"is too weak for a production issuer: it needs at least {_MIN_SECRET_KEY_BITS} "
            "random bits (32 random bytes, e.g. 43 base64url or 64 hex characters from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`); "
            "or leave it empty to have one generated",
        )
    return value


def _looks_like_sample(value: str) -> bool:
    normalised = re.sub(r"[^a-z0-9]", "", value.lower())
    if normalised in _SAMPLE_SECRETS or len(set(value)) < 8:
        return True
    return any(word in normalised for word in _SAMPLE_SECRET_WORDS)


def _estimated_bits(value: str) -> int:
    """Upper bound of the randomness a string can carry, by its alphabet: a 32-character
    hex string is 32 bytes long but only 128 bits of secret."""
    chars = set(value)
    if chars <= _HEX:
        return len(value) * 4
    if chars <= _BASE64:
        return len(value) * 6
    return len(value.encode("utf-8")) * 8


def _pairwise_salt(top: _Section, production: bool) -> str | None:
    value = top.optional_str("pairwise_salt", secret=True)
    if value is not None and production and len(value) < _MIN_PAIRWISE_SALT_CHARS:
        raise top.error(
            "pairwise_salt",
            f"is too short for a production issuer (at least {_MIN_PAIRWISE_SALT_CHARS} random "
            "characters), or leave it empty to have one generated",
        )
    return value


def _storage(section: _Section) -> StorageConfig:
    url = section.str_or("url", StorageConfig.url)
    if not _URL_WITH_SCHEME.match(url):
        # Not echoed: a database URL may carry a password.
        raise section.error(
            "url",
            "must be a database URL such as sqlite:///broker.sqlite3 or "
            "postgresql+psycopg://user@host/db",
        )
    defaults = StorageConfig()
    return StorageConfig(
        url=_absolute_sqlite_url(section.ctx, url),
        auto_upgrade=section.boolean("auto_upgrade", defaults.auto_upgrade),
        pool_size=section.integer("pool_size", defaults.pool_size, minimum=1, maximum=1000),
        max_overflow=section.integer(
            "max_overflow", defaults.max_overflow, minimum=0, maximum=1000
        ),
        purge_interval=section.integer(
            "purge_interval", defaults.purge_interval, minimum=0, maximum=86400
        ),
    )


def _absolute_sqlite_url(ctx: _Context, url: str) -> str:
    """``sqlite:///broker.sqlite3`` → ``sqlite:////<config dir>/broker.sqlite3``, so the
    database does not move with the working directory of whoever starts the broker."""
    match = _RELATIVE_SQLITE.fullmatch(url)
    if match is None:
        return url
    rest = match.group("rest")
    file_part, sep, query = rest.partition("?")
    if file_part == ":memory:" or file_part.startswith("file:"):
        return url
    return f"{match.group('prefix')}{ctx.resolve_path(file_part)}{sep}{query}"


def _keys(section: _Section) -> KeysConfig:
    directory = section.ctx.resolve_path(section.str_or("dir", "keys"))
    algorithm = section.choice("algorithm", "RS256", SIGNING_ALGORITHMS)
    listed = section.str_list("algorithms", ())
    seen: list[str] = []
    for index, alg in enumerate(listed):
        path = (*section.at("algorithms"), index)
        if alg not in SIGNING_ALGORITHMS:
            raise section.ctx.error(
                path, f"{_show(alg, 20)} is not one of: {', '.join(SIGNING_ALGORITHMS)}"
            )
        if alg in seen:
            raise section.ctx.error(path, f"{alg} is listed twice")
        seen.append(alg)
    if not listed:
        seen = [algorithm]
    if algorithm not in ("RS256", *seen):
        raise section.error("algorithm", f"{algorithm} must also be listed in keys.algorithms")
    # RS256 is always published: OpenID Connect requires every RP to be able to use it.
    algorithms = ("RS256", *(alg for alg in seen if alg != "RS256"))
    storage = section.choice("storage", "files", KEY_STORAGES)
    encryption_key = section.optional_str("encryption_key", secret=True)
    if storage == "database":
        _check_encryption_key(section, encryption_key)
    jwks_max_age = section.integer("jwks_max_age", 3600, minimum=1, maximum=7 * 86400)
    rotation = section.section("rotation", ("interval", "publish_ahead"))
    keys = KeysConfig(
        dir=directory,
        algorithm=algorithm,
        algorithms=algorithms,
        storage=storage,
        encryption_key=encryption_key,
        jwks_max_age=jwks_max_age,
        rotation_interval=rotation.integer("interval", 90 * 86400, minimum=0),
        publish_ahead=rotation.integer("publish_ahead", 2 * jwks_max_age, minimum=1),
    )
    # A relying party may hold our JWKS for jwks_max_age, and an instance sees a key
    # another one added only after refresh_interval: a new key that signed sooner would
    # fail verification at a relying party with a fresh-looking cache.
    needed = keys.jwks_max_age + keys.refresh_interval
    if keys.publish_ahead < needed:
        raise rotation.error(
            "publish_ahead",
            f"must be at least keys.jwks_max_age + {keys.refresh_interval} s key refresh "
            f"= {needed} s, got {keys.publish_ahead}",
        )
    if keys.rotation_interval and keys.rotation_interval < 2 * keys.publish_ahead:
        raise rotation.error(
            "interval",
            f"must be 0 (off) or at least twice publish_ahead ({2 * keys.publish_ahead} s), "
            f"got {keys.rotation_interval}",
        )
    return keys


def _check_encryption_key(section: _Section, value: str | None) -> None:
    """The key-encryption key: 32 random bytes as base64url, normally from the environment."""
    hint = (
        "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'` "
        "and pass it from the environment, e.g. encryption_key: ${BROKER_KEY_ENCRYPTION_KEY}"
    )
    if value is None:
        raise section.error("encryption_key", f"is required with keys.storage: database; {hint}")
    text = value.strip()
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError:
        raw = b""
    if len(raw) != 32 or not re.fullmatch(r"[A-Za-z0-9_-]+=*", text):
        raise section.error("encryption_key", f"must be 32 bytes as base64url; {hint}")


def _upstream(top: _Section, production: bool) -> UpstreamConfig:
    if not top.present("upstream"):
        raise top.error("upstream", "is required (upstream.qq with app_id and app_key)")
    name = _connector_name(top)
    if name != "qq":
        upstream = top.section("upstream", ("connector", "qq", name))
        qq_config = _qq(upstream, production) if upstream.present("qq") else UNUSED_QQ
        options = upstream.raw.get(name)
        if options is not None and not isinstance(options, Mapping):
            raise upstream.error(name, f"must be a mapping of the {name!r} connector's options")
        return UpstreamConfig(
            qq=qq_config,
            connector=name,
            options=_expanded(top.ctx, upstream.at(name), options or {}),
        )
    upstream = top.section("upstream", ("connector", "qq"))
    if not upstream.present("qq"):
        raise upstream.error("qq", "is required (app_id and app_key)")
    return UpstreamConfig(qq=_qq(upstream, production))


def _connector_name(top: _Section) -> str:
    """``upstream.connector``, checked against the installed connectors (default ``qq``).

    Read before the ``upstream`` section is, because it decides which keys that section
    may have (``upstream.<name>``). Only the entry point names are looked up here; the
    connector itself is imported and built by ``create_app``.
    """
    raw = top.raw.get("upstream")
    value = raw.get("connector") if isinstance(raw, Mapping) else None
    path: _KeyPath = ("upstream", "connector")
    if value is None:
        return "qq"
    if not isinstance(value, str):
        raise top.ctx.error(path, f"must be a string, got {_type_name(value)}")
    name = top.ctx.interpolate(path, value).strip() or "qq"
    if not _CONNECTOR_NAME.fullmatch(name) or name == "connector":
        raise top.ctx.error(
            path, f"{_show(name, 40)} is not a connector name (letters, digits, '_', '-', '.')"
        )
    if name != "qq":
        from broker.connectors.registry import not_installed

        problem = not_installed(name)
        if problem:
            raise top.ctx.error(path, problem)
    return name


def _expanded(ctx: _Context, path: _KeyPath, raw: Any) -> Any:
    """A free-form value with ``${VAR}`` expanded in every string (secrets come from the
    environment for any connector, as for QQ)."""
    if isinstance(raw, str):
        return ctx.interpolate(path, raw)
    if isinstance(raw, Mapping):
        return {str(key): _expanded(ctx, (*path, str(key)), item) for key, item in raw.items()}
    if isinstance(raw, list):
        return [_expanded(ctx, (*path, index), item) for index, item in enumerate(raw)]
    return raw


def _qq(upstream: _Section, production: bool) -> QQConfig:
    qq = upstream.section(
        "qq", ("app_id", "app_key", "base_url", "scope", "subject", "allow_staging_base_url")
    )
    allow_staging = qq.boolean("allow_staging_base_url", False)
    scope = qq.str_or("scope", "get_user_info")
    if not _SCOPE.fullmatch(scope):
        raise qq.error("scope", f"{_show(scope)} is not a QQ scope list like get_user_info")
    return QQConfig(
        app_id=_app_id(qq),
        app_key=qq.required_str("app_key", secret=True),
        base_url=_base_url(qq, production, allow_staging),
        scope=scope,
        subject=qq.choice("subject", "openid", UPSTREAM_SUBJECTS),
        allow_staging_base_url=allow_staging,
    )


def _app_id(qq: _Section) -> str:
    raw = qq.raw.get("app_id")
    # QQ app ids are numbers, and YAML reads an unquoted one as an int: accept that.
    value = str(raw) if isinstance(raw, int) and not isinstance(raw, bool) else None
    if value is None:
        value = qq.required_str("app_id")
    if not _DIGITS.fullmatch(value):
        raise qq.error("app_id", "must be the numeric QQ Connect app id (digits only)")
    return value


def _base_url(qq: _Section, production: bool, allow_staging: bool) -> str:
    value = qq.str_or("base_url", PRODUCTION_QQ_BASE_URL).rstrip("/")
    parts = _url_parts(qq, "base_url", value, "the QQ base URL")
    if parts.query or "?" in value:
        raise qq.error("base_url", f"{_show(value)}: the QQ base URL must not have a query")
    if production and not allow_staging and value.lower() != PRODUCTION_QQ_BASE_URL:
        raise qq.error(
            "base_url",
            f"{_show(value)}: a production issuer must use {PRODUCTION_QQ_BASE_URL} "
            "(set allow_staging_base_url: true only for an https staging twin)",
        )
    if production and parts.scheme.lower() != "https":
        raise qq.error("base_url", f"{_show(value)}: a production issuer needs https://")
    _require_https_unless_loopback(qq, "base_url", value, parts, "the QQ base URL")
    return value


def _rate_limits(section: _Section) -> RateLimitConfig:
    storage = section.str_or("storage", "memory")
    if storage != "memory" and not _is_redis_url(storage):
        # Not echoed: a Redis URL may carry a password.
        raise section.error(
            "storage",
            "must be 'memory' or a Redis URL redis://host:port/db (rediss:// for TLS), "
            "such as redis://127.0.0.1:6379/0",
        )
    return RateLimitConfig(enabled=section.boolean("enabled", True), storage=storage)


def _metrics(section: _Section) -> MetricsConfig:
    token = section.optional_str("token", secret=True)
    if token is not None and len(token) < 16:
        raise section.error("token", "must be at least 16 random characters (a bearer token)")
    return MetricsConfig(
        port=section.integer("port", 0, minimum=0, maximum=65535),
        host=section.str_or("host", "127.0.0.1"),
        token=token,
    )


LOG_FORMATS: Final = ("text", "json")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")


def _logging(section: _Section) -> LoggingConfig:
    return LoggingConfig(
        format=section.choice("format", "text", LOG_FORMATS),
        level=section.choice("level", "INFO", LOG_LEVELS),
        log_identifiers=section.boolean("log_identifiers", False),
    )


def _is_redis_url(value: str) -> bool:
    """``redis://`` or ``rediss://``, a host, an optional port and an optional db number."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("redis", "rediss")
        and bool(parts.hostname)
        and _REDIS_DB.fullmatch(parts.path) is not None
        and not parts.fragment
    )


def _lifetimes(section: _Section) -> LifetimesConfig:
    defaults = LifetimesConfig()
    values = {
        name: section.integer(
            name,
            getattr(defaults, name),
            minimum=1,
            maximum=_MAX_CODE_LIFETIME if name == "code" else None,
        )
        for name in LifetimesConfig.__annotations__
    }
    lifetimes = LifetimesConfig(**values)
    if lifetimes.refresh_idle > lifetimes.refresh_absolute:
        raise section.error("refresh_idle", "must not be longer than lifetimes.refresh_absolute")
    return lifetimes


def _claims(section: _Section, production: bool) -> ClaimsConfig:
    domain = section.str_or("email_domain", "qq-user.invalid")
    if not _DOMAIN.fullmatch(domain):
        raise section.error("email_domain", f"{_show(domain)} is not a domain name")
    return ClaimsConfig(
        picture=section.choice("picture", "https", PICTURE_POLICIES),
        gender=section.boolean("gender", False),
        email_domain=domain,
        avatar_hosts=_avatar_hosts(section, production),
    )


def _avatar_hosts(section: _Section, production: bool) -> tuple[str, ...]:
    """``claims.avatar_hosts``, normalised to ``host:port`` (IPv6 without brackets).

    The avatar proxy fetches these in addition to QQ's hosts and skips its
    private-address check for them (the emulator listens on 127.0.0.1), so a
    production issuer may not have any: there it would be an SSRF switch.
    """
    entries = section.str_list("avatar_hosts", ())
    if entries and production:
        raise section.error(
            "avatar_hosts", "is for development only (a loopback issuer); remove it"
        )
    hosts: list[str] = []
    for index, entry in enumerate(entries):
        try:
            parts = urlsplit(f"//{entry}")
            port = parts.port
        except ValueError:  # "[::1", a port that is not a number or out of range
            parts, port = urlsplit("//"), None
        plain = not (parts.path or parts.query or parts.fragment or parts.username)
        if not (parts.hostname and port and plain):
            raise section.ctx.error(
                (*section.at("avatar_hosts"), index),
                f"{_show(entry)} is not host:port (e.g. 127.0.0.1:8001)",
            )
        hosts.append(f"{parts.hostname}:{port}")
    return tuple(hosts)


# --------------------------------------------------------------------------- clients


def _clients(top: _Section, keys: KeysConfig, production: bool) -> tuple[ClientConfig, ...]:
    clients: list[ClientConfig] = []
    first_seen: dict[str, int] = {}
    for index, section in enumerate(top.sections("clients", _CLIENT_KEYS)):
        client = _client(section, keys, production)
        if client.client_id in first_seen:
            raise section.error(
                "client_id",
                f"{_show(client.client_id, 40)} is already used by "
                f"clients[{first_seen[client.client_id]}]",
            )
        first_seen[client.client_id] = index
        clients.append(client)
    return tuple(clients)


def _client(section: _Section, keys: KeysConfig, production: bool) -> ClientConfig:
    client_id = section.required_str("client_id")
    if not _CLIENT_ID.fullmatch(client_id):
        raise section.error("client_id", "must be 1-255 printable ASCII characters without spaces")
    method = section.choice(
        "token_endpoint_auth_method", "client_secret_basic", TOKEN_ENDPOINT_AUTH_METHODS
    )
    redirect_uris = _uri_list(section, "redirect_uris", None, "a redirect URI")
    jwks = _client_jwks(section)
    jwks_uri = _optional_uri(section, "jwks_uri", "the jwks_uri")
    if jwks is not None and jwks_uri is not None:
        raise section.error("jwks_uri", "give either jwks or jwks_uri, not both")
    subject = section.optional_choice("subject", CLIENT_SUBJECTS)
    sector_identifier_uri = _optional_uri(
        section, "sector_identifier_uri", "the sector identifier URI"
    )
    if subject == "pairwise" and sector_identifier_uri is None:
        hosts = {urlsplit(uri).hostname for uri in redirect_uris}
        if len(hosts) > 1:
            raise section.error(
                "sector_identifier_uri",
                "is required for a pairwise client whose redirect URIs have several hosts",
            )
    alg = section.optional_str("id_token_signed_response_alg")
    if alg is not None and alg not in keys.algorithms:
        raise section.error(
            "id_token_signed_response_alg",
            f"{_show(alg, 20)} is not one of the published algorithms "
            f"({', '.join(keys.algorithms)}; see keys.algorithms)",
        )
    return ClientConfig(
        client_id=client_id,
        client_secret=_client_secret(section, method, production),
        redirect_uris=redirect_uris,
        token_endpoint_auth_method=method,
        grant_types=_grant_types(section),
        post_logout_redirect_uris=_uri_list(
            section, "post_logout_redirect_uris", (), "a post-logout redirect URI"
        ),
        backchannel_logout_uri=_optional_uri(
            section, "backchannel_logout_uri", "the back-channel logout URI"
        ),
        subject=subject,
        sector_identifier_uri=sector_identifier_uri,
        email=section.choice("email", "omit", EMAIL_POLICIES),
        upstream_check=section.choice("upstream_check", "cached", UPSTREAM_CHECKS),
        access_token_format=section.choice("access_token_format", "opaque", ACCESS_TOKEN_FORMATS),
        id_token_signed_response_alg=alg,
        expose_qq_ids=section.boolean("expose_qq_ids", False),
        jwks=jwks,
        jwks_uri=jwks_uri,
    )


def _client_secret(section: _Section, method: str, production: bool) -> str | None:
    secret = section.optional_str("client_secret", secret=True)
    if method == "none":
        if secret is not None:
            raise section.error(
                "client_secret",
                "must be empty for token_endpoint_auth_method: none (a public client)",
            )
        return None
    if method == "private_key_jwt":
        if secret is not None:
            raise section.error(
                "client_secret",
                "must be empty for private_key_jwt (the client authenticates with its key)",
            )
        if not section.present("jwks") and not section.present("jwks_uri"):
            raise section.error(
                "token_endpoint_auth_method", "private_key_jwt needs the client's jwks or jwks_uri"
            )
        return None
    if secret is None:
        raise section.error("client_secret", f"is required for {method}")
    if production and len(secret) < _MIN_CLIENT_SECRET_CHARS:
        raise section.error(
            "client_secret",
            f"is too short for a production issuer (at least {_MIN_CLIENT_SECRET_CHARS} "
            "random characters)",
        )
    return secret


def _grant_types(section: _Section) -> tuple[str, ...]:
    grants = section.str_list("grant_types", ("authorization_code",))
    for index, grant in enumerate(grants):
        if grant not in GRANT_TYPES:
            raise section.ctx.error(
                (*section.at("grant_types"), index),
                f"{_show(grant, 40)} is not one of: {', '.join(GRANT_TYPES)}",
            )
    if "authorization_code" not in grants:
        raise section.error("grant_types", "must include authorization_code")
    return tuple(dict.fromkeys(grants))


def _uri_list(
    section: _Section, key: str, default: tuple[str, ...] | None, what: str
) -> tuple[str, ...]:
    uris = section.str_list(key, default)
    sub = _Section(section.ctx, section.at(key), {}, ())
    for index, uri in enumerate(uris):
        _check_client_uri(sub, index, uri, what)
    return uris


def _optional_uri(section: _Section, key: str, what: str) -> str | None:
    value = section.optional_str(key)
    if value is not None:
        _check_client_uri(section, key, value, what)
    return value


def _client_jwks(section: _Section) -> dict[str, Any] | None:
    raw = section.raw.get("jwks")
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise section.error(
            "jwks", f"must be a JWK set (a mapping with 'keys'), got {_type_name(raw)}"
        )
    keys = raw.get("keys")
    if not isinstance(keys, list) or not keys:
        raise section.error("jwks", "must have a non-empty 'keys' list")
    checked: list[dict[str, Any]] = []
    for index, key in enumerate(keys):
        path = (*section.at("jwks"), "keys", index)
        if not isinstance(key, Mapping) or not isinstance(key.get("kty"), str):
            raise section.ctx.error(path, "must be a JWK (a mapping with 'kty')")
        private = sorted(_PRIVATE_JWK_MEMBERS & set(key))
        if private:
            raise section.ctx.error(
                path,
                f"holds private key material ({', '.join(private)}); register the public key only",
            )
        checked.append(_interpolate_deep(section.ctx, path, dict(key)))
    return {**_interpolate_deep(section.ctx, section.at("jwks"), dict(raw)), "keys": checked}


def _interpolate_deep(ctx: _Context, path: _KeyPath, value: Any) -> Any:
    """Interpolation applies to every string scalar, including free-form values."""
    if isinstance(value, str):
        return ctx.interpolate(path, value)
    if isinstance(value, Mapping):
        return {k: _interpolate_deep(ctx, (*path, str(k)), v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate_deep(ctx, (*path, i), v) for i, v in enumerate(value)]
    return value
