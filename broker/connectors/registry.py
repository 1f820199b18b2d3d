"""Find upstream connectors by name, through the ``qq_oidc_broker.connectors`` entry points.

Why entry points: a connector for another upstream (WeChat, Weibo, a corporate OAuth2
server) should be a package of its own that the operator installs next to the broker,
without patching it; the built-in QQ connector is registered the same way (pyproject.toml)
so that it gets no path the others do not. ``upstream.connector`` in the config names the
entry point (default ``qq``) and ``upstream.<name>`` holds its options.

An entry point resolves to a *factory*, called once at start-up::

    def factory(options: Mapping[str, Any], context: ConnectorContext) -> Connector: ...

``options`` is the connector's config section (``${VAR}`` already expanded); the factory
validates it and raises ``ValueError`` (or ``TypeError``/``KeyError``) with a message that
names the option and never echoes a secret. Every way loading can go wrong (unknown name,
two packages claiming one name, an import error, a factory that raises or returns
something that is not a :class:`~broker.connectors.base.Connector`) becomes one
:class:`ConnectorLoadError` line, a :class:`~broker.config.ConfigError`, so the CLI prints
it like any other config problem and exits 2.

This module imports no connector at import time: ``broker.config`` asks it which names are
installed without pulling in an HTTP stack for connectors it will not use.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from broker.config import ConfigError
from broker.connectors.base import Connector

if TYPE_CHECKING:
    from broker.config import Config

__all__ = [
    "BUILTIN_CONNECTOR",
    "CALLBACK_PATH",
    "CONNECTOR_MEMBERS",
    "ENTRY_POINT_GROUP",
    "ConnectorContext",
    "ConnectorFactory",
    "ConnectorLoadError",
    "connector_from_config",
    "connector_options",
    "create_connector",
    "installed_connectors",
    "load_factory",
    "not_installed",
]

log = logging.getLogger("broker.connectors.registry")

#: The entry point group a connector package registers its factory in.
ENTRY_POINT_GROUP: Final = "qq_oidc_broker.connectors"
#: The connector used when ``upstream.connector`` is not set.
BUILTIN_CONNECTOR: Final = "qq"
#: Where the upstream sends the browser back, under the issuer. Every connector shares this
#: path: it is part of the DESIGN.md contract and what operators register upstream.
CALLBACK_PATH: Final = "/qq/callback"
#: What the broker calls on a connector (base.Connector); reported when one is missing.
CONNECTOR_MEMBERS: Final = (
    "name",
    "authorization_url",
    "parse_callback",
    "exchange",
    "refresh",
    "check_token",
    "user_info",
)
#: Used when the broker runs from a source tree that was never ``pip install``-ed, so
#: that the default config still starts; an installed "qq" entry point always wins.
_BUILTIN_FACTORY: Final = "broker.connectors.qq:factory"
#: Option names whose values are masked in a factory's error message, in case it quotes them.
_SECRET_OPTION = re.compile(r"secret|key|password|passwd|token|credential", re.IGNORECASE)


@dataclass(frozen=True)
class ConnectorContext:
    """What a factory may need besides its own options, taken from the broker's config.

    ``callback_url`` is ``{issuer}/qq/callback``: the redirect URI the broker passes to
    ``authorization_url`` and ``exchange``, and the one to register upstream. A factory
    must apply production rules itself when ``development`` is false (a loopback issuer
    is development, DESIGN.md): e.g. refuse ``http://`` upstream URLs or an emulator.
    """

    issuer: str
    callback_url: str
    development: bool


class ConnectorFactory(Protocol):
    """The object an entry point resolves to: builds the connector from its options."""

    def __call__(self, options: Mapping[str, Any], context: ConnectorContext) -> Connector:
        """Validate ``options`` (raise ValueError naming the option) and build the connector."""
        ...


class ConnectorLoadError(ConfigError):
    """A connector could not be found or built; one line, like every config error."""


def installed_connectors() -> dict[str, list[importlib.metadata.EntryPoint]]:
    """Entry points of the group by name, as installed in this environment.

    A list per name because two packages may claim the same one; importlib.metadata
    already drops the second copy of one distribution found twice on ``sys.path``
    (an editable checkout's ``.egg-info`` next to its ``.dist-info``).
    """
    found: dict[str, list[importlib.metadata.EntryPoint]] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        same = found.setdefault(entry_point.name, [])
        if all(other.value != entry_point.value for other in same):
            same.append(entry_point)
    return found


def _available(found: Mapping[str, object]) -> list[str]:
    return sorted({*found, BUILTIN_CONNECTOR})


def _unknown(name: str, found: Mapping[str, object]) -> str:
    available = _available(found)
    close = difflib.get_close_matches(name, available, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return (
        f"no connector named {name!r} is installed (entry point group {ENTRY_POINT_GROUP})"
        f"{hint}; installed: {', '.join(available)}"
    )


def not_installed(name: str) -> str | None:
    """Why ``name`` cannot be loaded when no package registers it, else None.

    What ``broker.config`` checks ``upstream.connector`` with: names only, nothing imported.
    """
    found = installed_connectors()
    if name in found or name == BUILTIN_CONNECTOR:
        return None
    return _unknown(name, found)


def _origin(entry_point: importlib.metadata.EntryPoint) -> str:
    dist = entry_point.dist
    package = f"{dist.metadata['Name']} {dist.version}" if dist is not None else "?"
    return f"{package} ({entry_point.value})"


def load_factory(name: str, *, source: str = "<config>") -> ConnectorFactory:
    """The factory registered under ``name``, imported; ConnectorLoadError if there is none."""
    found = installed_connectors()
    entry_points = found.get(name, [])
    if len(entry_points) > 1:
        claims = ", ".join(_origin(entry_point) for entry_point in entry_points)
        raise ConnectorLoadError(
            f"connector {name!r} is registered by several packages: {claims}; uninstall one",
            source=source,
            path="upstream.connector",
        )
    if entry_points:
        target = entry_points[0].value
        loaded = _import(entry_points[0], name, source)
    elif name == BUILTIN_CONNECTOR:
        log.debug("no %r entry point installed; using the built-in %s", name, _BUILTIN_FACTORY)
        target = _BUILTIN_FACTORY
        loaded = _import(
            importlib.metadata.EntryPoint(name, _BUILTIN_FACTORY, ENTRY_POINT_GROUP), name, source
        )
    else:
        raise ConnectorLoadError(_unknown(name, found), source=source, path="upstream.connector")
    if not callable(loaded):
        raise ConnectorLoadError(
            f"connector {name!r}: entry point {target} is a {type(loaded).__name__}, not a "
            "factory (a callable taking options and a ConnectorContext)",
            source=source,
            path="upstream.connector",
        )
    factory: ConnectorFactory = loaded
    return factory


def _import(entry_point: importlib.metadata.EntryPoint, name: str, source: str) -> Any:
    try:
        return entry_point.load()
    except Exception as exc:  # any import-time failure of a plug-in is one config line
        raise ConnectorLoadError(
            f"connector {name!r}: cannot import {entry_point.value} ({type(exc).__name__}: {exc})",
            source=source,
            path="upstream.connector",
        ) from exc


def create_connector(
    name: str,
    options: Mapping[str, Any],
    context: ConnectorContext,
    *,
    source: str = "<config>",
) -> Connector:
    """Load ``name``'s factory and build the connector; every failure is ConnectorLoadError."""
    factory = load_factory(name, source=source)
    path = f"upstream.{name}"
    try:
        connector = factory(options, context)
    except Exception as exc:  # a plug-in's failure must not become a traceback at start-up
        # The chained exception is dropped: its message (masked below) is what matters,
        # and the original may quote an option value that is a secret.
        raise ConnectorLoadError(
            f"connector {name!r} refused its options: {_masked(str(exc), options)} "
            f"({type(exc).__name__})",
            source=source,
            path=path,
        ) from None
    missing = _missing_members(connector)
    if missing:
        raise ConnectorLoadError(
            f"connector {name!r}: the factory returned a value of type "
            f"{type(connector).__name__}, which is not a Connector (missing: {', '.join(missing)})",
            source=source,
            path=path,
        )
    if not isinstance(connector.name, str) or not connector.name:
        raise ConnectorLoadError(
            f"connector {name!r}: the connector's name must be a non-empty string",
            source=source,
            path=path,
        )
    return connector


def _missing_members(connector: object) -> list[str]:
    missing = [member for member in CONNECTOR_MEMBERS if not hasattr(connector, member)]
    missing += [
        member
        for member in CONNECTOR_MEMBERS[1:]
        if hasattr(connector, member) and not callable(getattr(connector, member))
    ]
    if not missing and not isinstance(connector, Connector):  # belt and braces
        missing.append("the Connector protocol")
    return missing


def _masked(text: str, options: Mapping[str, Any]) -> str:
    """``text`` with the values of secret-looking options replaced by ``***``."""
    for key, value in options.items():
        if isinstance(value, str) and value and _SECRET_OPTION.search(str(key)):
            text = text.replace(value, "***")
    return text


def connector_options(config: Config) -> Mapping[str, Any]:
    """The options handed to the configured connector's factory.

    For ``qq`` these are the already validated ``upstream.qq`` values (config.py keeps
    every QQ rule it always had); any other connector gets its ``upstream.<name>``
    section as written, and its factory validates it.
    """
    upstream = config.upstream
    if upstream.connector == BUILTIN_CONNECTOR:
        qq = upstream.qq
        return {
            "app_id": qq.app_id,
            "app_key": qq.app_key,
            "base_url": qq.base_url,
            "scope": qq.scope,
        }
    return upstream.options


def connector_from_config(config: Config) -> Connector:
    """Build the connector ``upstream.connector`` names (what ``create_app`` uses)."""
    context = ConnectorContext(
        issuer=config.issuer,
        callback_url=config.issuer + CALLBACK_PATH,
        development=config.is_development,
    )
    return create_connector(
        config.upstream.connector, connector_options(config), context, source=config.source
    )
