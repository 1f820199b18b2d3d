"""A canned graph.qq.com for connector tests: fixed bodies, real HTTP, every request recorded.

Unlike the emulator (broker/emulator) this has no logic at all: each test says which exact
bytes an endpoint answers with, so the connector is tested against QQ's real formats
(qq-connect.md sections 3 and 4) byte for byte, including the ugly ones.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flask import Flask, Response, request


def compact(**fields: object) -> str:
    """JSON the way QQ writes it under fmt=json: compact, keys in the given order."""
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False)


APP_ID = "101364207"  # the app id in the real /me sample, section 3.1
APP_KEY = "5f2d3c9a7b1e4f608d2c4b6a8e0f1a3c"  # 32 lowercase hex, section 6
CODE = "D8B56CC1DB5D416A32D7D383FEDF7C07"  # section 6 sample
ACCESS_TOKEN = "D7BF5C1A0E9B4F26A3C8D1E7B5F0A38F"
REFRESH_TOKEN = "7D47A2C9E1B04F58B6D3C0E8A9F1707F"
NEW_ACCESS_TOKEN = "17FBA89CB1F5D0A09DF7398FC5CC3314"  # section 6 sample
NEW_REFRESH_TOKEN = "A1B2C3D4E5F60718293A4B5C6D7E8F90"
OPENID = "805CFCB3AFEA40CA7CE4B6D8A8668793"  # section 3.1 sample
UNIONID = "UID_3C62A0D5E1F24B6C8D9E0F1A2B3CF497"
REDIRECT_URI = "https://broker.example/qq/callback"

#: Values that must never show up in a URL, an exception or a log line.
SECRETS = (APP_KEY, CODE, ACCESS_TOKEN, REFRESH_TOKEN, NEW_ACCESS_TOKEN, NEW_REFRESH_TOKEN)

# ---- token endpoint (section 3.1) ----
TOKEN_JSON_WITH_OPENID = compact(
    access_token=ACCESS_TOKEN, expires_in="5184000", refresh_token=REFRESH_TOKEN, openid=OPENID
).encode()
TOKEN_JSON_NO_OPENID = compact(
    access_token=ACCESS_TOKEN, expires_in="7776000", refresh_token=REFRESH_TOKEN
).encode()
TOKEN_FORM = f"access_token={ACCESS_TOKEN}&expires_in=7776000&refresh_token={REFRESH_TOKEN}"
REFRESH_JSON = compact(
    access_token=NEW_ACCESS_TOKEN, expires_in="5184000", refresh_token=NEW_REFRESH_TOKEN
).encode()

# ---- /oauth2.0/me (section 3.1, 3.2): exact bytes, Content-Length 83 ----
ME_JSONP = b'callback( {"client_id":"101364207","openid":"805CFCB3AFEA40CA7CE4B6D8A8668793"} );\n'
ME_JSON = b'{"client_id":"101364207","openid":"805CFCB3AFEA40CA7CE4B6D8A8668793"}'
ME_JSON_UNIONID = compact(client_id=APP_ID, openid=OPENID, unionid=UNIONID).encode()
ME_JSONP_UNIONID = b"callback( " + ME_JSON_UNIONID + b" );\n"

# ---- get_user_info (section 4): multi-line, "is_lost":0 without a space, \/ escapes ----
USER_INFO = (
    "{\n"
    '\t"ret": 0,\n'
    '\t"msg": "",\n'
    '\t"is_lost":0,\n'
    '\t"nickname": "Liuli",\n'
    '\t"gender": "男",\n'
    '\t"gender_type": 2,\n'
    '\t"province": "广东",\n'
    '\t"city": "深圳",\n'
    '\t"year": "1990",\n'
    '\t"constellation": "",\n'
    '\t"figureurl": "http:\\/\\/qzapp.qlogo.cn\\/qzapp\\/101364207\\/CF6A7EDA\\/30",\n'
    '\t"figureurl_1": "http:\\/\\/qzapp.qlogo.cn\\/qzapp\\/101364207\\/CF6A7EDA\\/50",\n'
    '\t"figureurl_2": "http:\\/\\/qzapp.qlogo.cn\\/qzapp\\/101364207\\/CF6A7EDA\\/100",\n'
    '\t"figureurl_qq_1": "http://thirdqq.qlogo.cn/g?b=oidb&k=dALc&kti=ZNXUdAAAAAA&s=40&t=1448142454",\n'
    '\t"figureurl_qq_2": "http://thirdqq.qlogo.cn/g?b=oidb&k=dALc&kti=ZNXUdAAAAAA&s=100&t=1448142454",\n'
    '\t"figureurl_qq": "http://thirdqq.qlogo.cn/g?b=oidb&k=dALc&kti=ZNXUdAAAAAA&s=100&t=1448142454",\n'
    '\t"figureurl_type": "0",\n'
    '\t"is_yellow_vip": "0",\n'
    '\t"vip": "0",\n'
    '\t"yellow_vip_level": "0",\n'
    '\t"level": "0",\n'
    '\t"is_yellow_year_vip": "0"\n'
    "}"
).encode()
PICTURE_100 = "http://thirdqq.qlogo.cn/g?b=oidb&k=dALc&kti=ZNXUdAAAAAA&s=100&t=1448142454"
PICTURE_40 = "http://thirdqq.qlogo.cn/g?b=oidb&k=dALc&kti=ZNXUdAAAAAA&s=40&t=1448142454"

TOKEN = "/oauth2.0/token"
ME = "/oauth2.0/me"
USER = "/user/get_user_info"


@dataclass
class Canned:
    """One canned answer. QQ answers HTTP 200 text/html for nearly everything (section 3.3)."""

    body: bytes | str
    status: int = 200
    content_type: str = "text/html"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    chunked: bool = False  # no Content-Length: waitress sends Transfer-Encoding: chunked

    def payload(self) -> bytes:
        return self.body.encode() if isinstance(self.body, str) else self.body


@dataclass
class Seen:
    """A request as the fake received it (raw query string, undecoded)."""

    method: str
    path: str
    query: str
    form: dict[str, list[str]]
    body: bytes
    remote_port: str
    cookie: str = ""


class FakeQQ:
    """The Flask app plus its routes (path -> Canned) and the log of received requests."""

    def __init__(self) -> None:
        self.routes: dict[str, Canned] = {
            TOKEN: Canned(TOKEN_JSON_WITH_OPENID),
            ME: Canned(ME_JSON),
            USER: Canned(USER_INFO, content_type="text/html; charset=utf-8"),
        }
        self.seen: list[Seen] = []
        self.url = ""  # set once served
        self.app = self._make_app()

    def calls(self, path: str) -> list[Seen]:
        return [seen for seen in self.seen if seen.path == path]

    def _make_app(self) -> Flask:
        app = Flask("fakeqq")

        @app.route("/<path:path>", methods=["GET", "POST"])
        def answer(path: str) -> Response:
            self.seen.append(
                Seen(
                    method=request.method,
                    path="/" + path,
                    query=request.environ.get("QUERY_STRING", ""),
                    form=request.form.to_dict(flat=False),
                    body=request.get_data(),
                    remote_port=str(request.environ.get("REMOTE_PORT", "")),
                    cookie=request.headers.get("Cookie", ""),
                )
            )
            canned = self.routes.get("/" + path)
            if canned is None:
                return Response(b"<html>404</html>", status=404, content_type="text/html")
            if canned.delay:
                time.sleep(canned.delay)
            payload = canned.payload()
            body = iter([payload[i : i + 4096] for i in range(0, len(payload), 4096)])
            return Response(
                body if canned.chunked else payload,
                status=canned.status,
                content_type=canned.content_type,
                headers=canned.headers,
            )

        return app


@contextmanager
def dribbling_server(interval: float = 0.1, limit: float = 20.0) -> Iterator[str]:
    """A raw HTTP server that announces a body and then sends one byte per ``interval``.

    Every single socket read succeeds well within any read timeout, so only a total
    deadline stops a client (security checklist UP-15). Yields the base URL.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(limit)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 100000\r\n\r\n"
            )
            deadline = time.monotonic() + limit
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    conn.sendall(b" ")
                    time.sleep(interval)
            except OSError:
                return  # the client gave up: what we want

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        listener.close()
