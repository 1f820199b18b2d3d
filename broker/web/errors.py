"""Error handlers: every failure is a clean page or a JSON error, never a traceback."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from broker.storage.base import StorageError
from broker.web.pages import error_page

log = logging.getLogger("broker.web")

#: Machine endpoints answer errors in JSON (RFC 6749 §5.2 shape); the rest get pages.
JSON_PATHS = (
    "/token",
    "/revoke",
    "/introspect",
    "/userinfo",
    "/jwks.json",
    "/.well-known/",
    "/healthz",
    "/readyz",
)

HTTP_KEYS = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 431: "too_large"}


def _json(error: str, status: int) -> Response:
    response = jsonify({"error": error})
    response.status_code = status
    return response


def handle_http_error(err: HTTPException) -> Response:
    status = err.code or 500
    if request.path.startswith(JSON_PATHS):
        error = "invalid_request" if status < 500 else "server_error"
        return _json(error, status)
    return error_page(HTTP_KEYS.get(status, "bad_request"), status)


def handle_storage_error(err: StorageError) -> Response:
    log.error("storage unavailable: %s", err)
    if request.path.startswith(JSON_PATHS):
        return _json("temporarily_unavailable", 503)
    return error_page("unavailable", 503)


def handle_unexpected(err: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    if request.path.startswith(JSON_PATHS):
        return _json("server_error", 500)
    return error_page("internal", 500)


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_error)
    app.register_error_handler(StorageError, handle_storage_error)
    app.register_error_handler(Exception, handle_unexpected)
