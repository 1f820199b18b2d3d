"""Logs as an operator's pipeline reads them: JSON lines, request ids, and no secrets.

The in-process tests put broker.logs.JsonFormatter on a root handler (what ``serve`` does
with ``logging.format: json``) and keep only the records of the server's threads: the
test's own HTTP client logs are the browser's, not the broker's. No waiting is needed: the
server writes a request's lines before it sends the response. The ``serve`` tests read a
real process's stderr.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from broker.logs import JsonFormatter
from tests.conftest import Broker, Emulator, start_pair
from tests.flows import authorize_url
from tests.test_metrics import Site, Walk, redeem, start_serve, token_request, walk_login

TIMEOUT = 15
LOGGERS = ("", "broker", "authlib", "urllib3", "requests", "waitress")
#: Shapes of secrets whatever their value: QQ tokens and OpenIDs (32 upper-case hex), JWTs,
#: credentials in a query, Authorization headers.
SECRET_SHAPES = {
    "QQ token or raw OpenID": re.compile(r"(?<![0-9A-F])[0-9A-F]{32}(?![0-9A-F])"),
    "JWT": re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\."),
    "credential in a query": re.compile(
        r"(?:access_token|refresh_token|client_secret|code|id_token)=(?!\*\*\*)[^&\s\"']{16,}"
    ),
    "Authorization header": re.compile(r"Bearer [A-Za-z0-9._~+/-]{8,}|Basic [A-Za-z0-9+/=]{8,}"),
}


class JsonLines(logging.Handler):
    """Formats server-thread records with JsonFormatter, as ``serve`` would write them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self._main = threading.main_thread().ident

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self._main:
            self.lines.append(self.format(record))

    def entries(self) -> list[dict[str, Any]]:
        parsed = []
        for line in self.lines:
            assert "\n" not in line
            entry = json.loads(line)
            assert isinstance(entry, dict)
            parsed.append(entry)
        return parsed

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def captured() -> Iterator[JsonLines]:
    handler = JsonLines()
    saved = {name: logging.getLogger(name).level for name in LOGGERS}
    root = logging.getLogger()
    root.addHandler(handler)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def access_lines(handler: JsonLines, path: str) -> list[dict[str, Any]]:
    return [e for e in handler.entries() if e.get("event") == "request" and e["path"] == path]


def login_lines(handler: JsonLines) -> list[dict[str, Any]]:
    return [e for e in handler.entries() if e.get("event") == "login"]


# --------------------------------------------------------------------------- shape


def test_every_line_is_one_json_object_with_the_common_fields(
    broker: Broker, emulator: Emulator, captured: JsonLines
) -> None:
    walk_login(broker, emulator)
    requests.get(f"{broker.issuer}/healthz", timeout=TIMEOUT)
    entries = captured.entries()
    assert entries
    for entry in entries:
        assert {"ts", "level", "logger", "message"} <= set(entry), entry
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])
    assert {"broker.access", "broker.login"} <= {e["logger"] for e in entries}


def test_the_request_id_is_taken_from_the_header_echoed_and_logged(
    broker: Broker, captured: JsonLines
) -> None:
    request_id = "req-" + secrets.token_hex(8)
    response = requests.get(
        f"{broker.issuer}/qq/callback?code=abc",
        headers={"X-Request-ID": request_id},
        timeout=TIMEOUT,
    )
    assert response.status_code == 400
    assert response.headers["X-Request-ID"] == request_id
    [access] = access_lines(captured, "/qq/callback")
    assert access["request_id"] == request_id
    assert access["method"] == "GET" and access["status"] == 400
    assert access["client_ip"] == "127.0.0.1"
    assert isinstance(access["duration_ms"], int | float) and access["duration_ms"] >= 0
    # Every line written while serving the request carries its id, the login line too.
    [failed] = login_lines(captured)
    assert failed["request_id"] == request_id
    assert failed["outcome"] == "failed" and failed["reason"] == "callback_no_state"


@pytest.mark.parametrize("supplied", ["has space", "x" * 65, "<script>", "a/b", "caf\u00e9", ""])
def test_an_unusable_request_id_is_replaced(
    broker: Broker, captured: JsonLines, supplied: str
) -> None:
    response = requests.get(
        f"{broker.issuer}/healthz", headers={"X-Request-ID": supplied}, timeout=TIMEOUT
    )
    echoed = response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{16}", echoed), echoed
    [access] = access_lines(captured, "/healthz")
    assert access["request_id"] == echoed
    if supplied:
        assert supplied not in captured.text()


def test_the_access_line_has_the_path_without_the_query(
    broker: Broker, emulator: Emulator, captured: JsonLines
) -> None:
    marker = "marker" + secrets.token_hex(8)
    url = authorize_url(
        broker.issuer,
        client_id="rp-basic",
        response_type="code",
        scope="openid",
        redirect_uri=broker.clients["rp-basic"]["redirect_uri"],
        state=marker,
        code_challenge=marker + "x" * 40,
    )
    requests.get(url, allow_redirects=False, timeout=TIMEOUT)
    [access] = access_lines(captured, "/authorize")
    assert access["client_id"] == "rp-basic"
    assert "?" not in access["path"] and "?" not in access["message"]
    assert marker not in captured.text()


def test_the_token_endpoint_line_names_the_authenticated_client_only_if_registered(
    broker: Broker, captured: JsonLines
) -> None:
    requests.post(
        f"{broker.issuer}/token",
        data={"grant_type": "authorization_code", "code": "nope"},
        auth=("rp-basic", "wrong"),
        timeout=TIMEOUT,
    )
    chosen = "unregistered-" + secrets.token_hex(6)
    requests.post(
        f"{broker.issuer}/token",
        data={"grant_type": "authorization_code", "code": "nope"},
        auth=(chosen, "wrong"),
        timeout=TIMEOUT,
    )
    first, second = access_lines(captured, "/token")
    assert first["client_id"] == "rp-basic" and first["status"] == 401
    assert "client_id" not in second
    assert chosen not in captured.text()


# --------------------------------------------------------------------------- secrets


def known_secrets(
    broker: Broker | Site, emulator: Emulator, walks: list[Walk], tokens: list[dict[str, Any]]
) -> dict[str, str]:
    """Every secret value the flows handled: the haystack must contain none of them."""
    found: dict[str, str] = {}
    for client_id, info in broker.clients.items():
        if info["client_secret"]:
            found[f"{client_id} secret"] = info["client_secret"]
            basic = f"{client_id}:{info['client_secret']}".encode()
            found[f"{client_id} basic"] = base64.b64encode(basic).decode()
    for user_id in ("zhangsan", "lisi"):
        user = emulator.user(user_id)
        found[f"{user_id} openid"] = user["openid"]
        found[f"{user_id} unionid"] = user["unionid"]
    for index, walk in enumerate(walks):
        callback = walk.callback_query
        for name in ("code", "state"):
            if callback.get(name):
                found[f"walk {index} QQ {name}"] = callback[name]
        if walk.rp_query.get("code"):
            found[f"walk {index} code"] = walk.rp_query["code"]
        for name, cookie in walk.browser.cookies.items():
            if cookie:
                found[f"walk {index} cookie {name}"] = cookie
    for index, response in enumerate(tokens):
        for name in ("access_token", "refresh_token", "id_token"):
            if response.get(name):
                found[f"token response {index} {name}"] = response[name]
    return found


def leaks(text: str, found: dict[str, str]) -> list[str]:
    problems = [label for label, value in found.items() if value in text]
    for label, pattern in SECRET_SHAPES.items():
        match = pattern.search(text)
        if match:
            start = max(0, match.start() - 80)
            problems.append(f"{label}: ...{text[start : match.end() + 20]}")
    return problems


def test_a_full_login_at_debug_leaks_no_secret(
    broker: Broker, emulator: Emulator, captured: JsonLines
) -> None:
    walks: list[Walk] = []
    tokens: list[dict[str, Any]] = []
    browser = requests.Session()
    offline = walk_login(
        broker, emulator, "rp-refresh", scope="openid profile offline_access", browser=browser
    )
    walks.append(offline)
    tokens.append(redeem(broker, offline))
    grant = {"grant_type": "refresh_token", "refresh_token": tokens[0]["refresh_token"]}
    refreshed = token_request(broker, "rp-refresh", grant)
    assert refreshed.status_code == 200, refreshed.text
    tokens.append(refreshed.json())
    assert token_request(broker, "rp-refresh", grant).status_code == 400  # reuse
    requests.get(
        f"{broker.issuer}/userinfo",
        headers={"Authorization": f"Bearer {tokens[1]['access_token']}"},
        timeout=TIMEOUT,
    )
    union = walk_login(broker, emulator, "rp-unionid", user="lisi")
    walks.append(union)
    tokens.append(redeem(broker, union))
    emulator.control(faults={"get_user_info": "error:100016"})
    walks.append(walk_login(broker, emulator, "rp-basic"))
    emulator.control(faults={})

    found = known_secrets(broker, emulator, walks, tokens)
    found["app key"] = broker.config.upstream.qq.app_key
    assert len(found) > 15
    assert any(e["logger"].startswith("authlib") for e in captured.entries())  # DEBUG is on
    assert leaks(captured.text(), found) == []


def test_openids_are_logged_as_a_stable_keyed_hash(
    broker: Broker, emulator: Emulator, captured: JsonLines
) -> None:
    for client_id, user in (
        ("rp-basic", "zhangsan"),
        ("rp-post", "zhangsan"),
        ("rp-basic", "lisi"),
    ):
        walk_login(broker, emulator, client_id, user=user)
    completed = [e for e in login_lines(captured) if e["outcome"] == "completed"]
    assert [e["client_id"] for e in completed] == ["rp-basic", "rp-post", "rp-basic"]
    subjects = [e["subject"] for e in completed]
    assert all(re.fullmatch(r"[0-9a-f]{32}", s) for s in subjects), subjects
    assert subjects[0] == subjects[1] != subjects[2]  # same user, same value; not reversible
    assert emulator.user("zhangsan")["openid"] not in captured.text()
    assert completed[0]["subject"] in completed[0]["message"]


def test_log_identifiers_logs_raw_openids_and_says_so(tmp_path: Path, captured: JsonLines) -> None:
    records: list[logging.LogRecord] = []

    class Everything(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    startup = Everything(logging.DEBUG)
    logging.getLogger().addHandler(startup)
    try:
        pair = start_pair(tmp_path, logging={"log_identifiers": True})
    finally:
        logging.getLogger().removeHandler(startup)
    try:
        warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        assert any("log_identifiers" in w and "OpenID" in w for w in warnings), warnings
        walk_login(pair.broker, pair.emulator)
        [completed] = [e for e in login_lines(captured) if e["outcome"] == "completed"]
        assert completed["subject"] == pair.emulator.user("zhangsan")["openid"]
    finally:
        pair.stop()


# --------------------------------------------------------------------------- serve


def test_serve_writes_json_lines_at_debug_without_secrets(tmp_path: Path) -> None:
    started = start_serve(tmp_path, level="DEBUG")
    request_id = "serve-" + secrets.token_hex(6)
    try:
        walk = walk_login(started.site, started.emulator)
        tokens = redeem(started.site, walk)
        echoed = requests.get(
            f"{started.site.issuer}/userinfo",
            headers={
                "Authorization": f"Bearer {tokens['access_token']}",
                "X-Request-ID": request_id,
            },
            timeout=TIMEOUT,
        )
        assert echoed.status_code == 200 and echoed.headers["X-Request-ID"] == request_id
        found = known_secrets(started.site, started.emulator, [walk], [tokens])
        found["app key"] = started.app_key
    finally:
        output = started.stop()
    assert started.proc.returncode == 0, output
    entries = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert any(e["level"] == "DEBUG" for e in entries) or any(
        e["logger"] == "broker.access" for e in entries
    )
    [userinfo] = [e for e in entries if e.get("event") == "request" and e["path"] == "/userinfo"]
    assert userinfo["request_id"] == request_id and userinfo["status"] == 200
    assert [e["outcome"] for e in entries if e.get("event") == "login"] == ["completed"]
    assert leaks(output, found) == []
