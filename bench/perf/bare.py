"""The bare endpoint of the ceiling: the broker's server with nothing behind it.

    python bench/perf/bare.py --port P [--app wsgi|flask] [--threads N] [--workers N]

``broker.serving.serve`` (waitress, the graceful drain) with the default
``server.threads`` and ``server.workers`` (pre-forked by ``broker.workers``, as ``serve``
does), in front of either a plain WSGI callable that answers a small JSON
body (``wsgi``: what the server itself costs per request) or a one-route Flask app
(``flask``: plus the framework the broker is built on). The difference between these and
a broker endpoint is what the broker adds per request.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from broker.config import ServerConfig, parse_config
from broker.serving import serve
from broker.workers import serve_workers

BODY = b'{"status":"ok"}'
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]


def flask_app() -> Any:
    from flask import Flask, Response

    app = Flask("bare")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(BODY, mimetype="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", choices=("wsgi", "flask"), default="wsgi")
    parser.add_argument("--threads", type=int, default=ServerConfig().threads)
    parser.add_argument("--workers", type=int, default=ServerConfig().workers)
    args = parser.parse_args()
    server = {"host": "127.0.0.1", "port": args.port, "threads": args.threads}
    if args.workers == 1:
        app = wsgi_app if args.app == "wsgi" else flask_app()
        serve(app, ServerConfig(**server))
        return
    # The supervisor reads only the server section; the rest is a placeholder broker.
    config = parse_config(
        {
            "issuer": f"http://127.0.0.1:{args.port}",
            "server": {**server, "workers": args.workers},
            "upstream": {"qq": {"app_id": "1", "app_key": "bare-endpoint-benchmark"}},
        },
        source="<bare>",
        base_dir=Path.cwd(),
    )

    def worker(sock: Any, _metrics: Any) -> None:
        app = wsgi_app if args.app == "wsgi" else flask_app()
        serve(app, config.server, sock=sock)

    serve_workers(config, worker)


if __name__ == "__main__":
    main()
