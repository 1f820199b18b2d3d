"""The emulator's Flask app factory (qq-connect.md §8; DESIGN.md ``broker/emulator/``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import flask
from werkzeug.http import http_date

from broker.emulator import admin, api, authorize, avatars
from broker.emulator.settings import EmulatorSettings
from broker.emulator.state import EXTENSION_KEY, EmulatorState

__all__ = ["EmulatorSettings", "create_emulator_app"]

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def create_emulator_app(settings: EmulatorSettings) -> flask.Flask:
    """A fresh graph.qq.com look-alike for ``settings`` with its own in-memory state."""
    settings.validate()
    app = flask.Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION_KEY] = EmulatorState(settings)
    app.register_blueprint(authorize.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(avatars.bp)
    if settings.clock_skew_seconds:
        app.after_request(_skewed_date(settings.clock_skew_seconds))
    app.wsgi_app = WaitressConnectionClose(app.wsgi_app)  # type: ignore[method-assign]
    return app


def _skewed_date(skew: int) -> Callable[[flask.Response], flask.Response]:
    """A ``Date`` header from a clock ``skew`` seconds off (waitress keeps an app's Date)."""

    def set_date(response: flask.Response) -> flask.Response:
        response.headers["Date"] = http_date(time.time() + skew)
        return response

    return set_date


class WaitressConnectionClose:
    """Let ``Connection: close`` (§3.3) survive waitress.

    PEP 3333 forbids hop-by-hop headers from applications and waitress enforces it, so
    under waitress we drop our ``Connection`` header *and* ``Content-Length``: waitress
    then answers HTTP/1.1 chunked and adds ``Connection: close`` itself, closing the
    socket like tws does. Other servers get the header as is.
    """

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if not _is_waitress(environ):
            return self.app(environ, start_response)

        def patched(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            closing = any(name.lower() == "connection" for name, _ in headers)
            if closing:
                headers = [
                    (name, value)
                    for name, value in headers
                    if name.lower() not in ("connection", "content-length")
                ]
            return start_response(status, headers, exc_info)

        return self.app(environ, patched)


def _is_waitress(environ: dict[str, Any]) -> bool:
    software = str(environ.get("SERVER_SOFTWARE", ""))
    return software.startswith("waitress") or "waitress.client_disconnected" in environ
