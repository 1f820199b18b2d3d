"""``qq-oidc-broker doctor`` against a real broker and a QQ emulator set up wrongly, one way
per test: the operator's view (a subprocess, exit status, both languages, no secrets).

One broker serves for the whole module; each test starts its own emulator (the wrong
settings are the emulator's registration: app id, app key, callbacks, UnionID, clock) and
writes the config doctor reads, pointing at that broker and that emulator.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import secrets
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import yaml

from broker.app import create_app
from broker.config import load_config
from broker.emulator import EmulatorSettings, create_emulator_app
from broker.keys import KeyRing
from tests.servers import ServedApp, free_port, self_signed, serve

REPO = Path(__file__).resolve().parent.parent
APP_ID = "101000001"
CHECK_NAMES = ["config", "issuer", "jwks", "clock", "qq_app", "qq_callback", "qq_unionid"]
CJK = re.compile(r"[\u4e00-\u9fff]")


# --------------------------------------------------------------------------- set-up


def write_config(
    path: Path,
    *,
    issuer: str,
    base_url: str,
    keys_dir: Path,
    unionid_client: bool = True,
) -> Path:
    """A config like an operator's: the app key comes from $QQ_APP_KEY, not the file."""
    clients: list[dict[str, Any]] = [
        {
            "client_id": "rp",
            "client_secret": secrets.token_urlsafe(24),
            "redirect_uris": ["http://127.0.0.1:9/rp/callback"],
        }
    ]
    if unionid_client:
        clients.append(
            {
                "client_id": "rp-unionid",
                "client_secret": secrets.token_urlsafe(24),
                "redirect_uris": ["http://127.0.0.1:9/union/callback"],
                "subject": "unionid",
            }
        )
    data = {
        "issuer": issuer,
        "storage": {"url": "sqlite:///broker.sqlite3"},
        "keys": {"dir": str(keys_dir)},
        "upstream": {"qq": {"app_id": APP_ID, "app_key": "${QQ_APP_KEY}", "base_url": base_url}},
        "rate_limits": {"enabled": False},
        "clients": clients,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Deployment:
    """The running broker doctor checks, and the app key its config expects."""

    issuer: str
    keys_dir: Path
    app_key: str


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("doctor-broker")
    port, key = free_port(), secrets.token_hex(16)
    issuer = f"http://127.0.0.1:{port}"
    path = write_config(
        base / "config.yaml", issuer=issuer, base_url="http://127.0.0.1:9", keys_dir=base / "keys"
    )
    config = load_config(path, environ={**os.environ, "QQ_APP_KEY": key})
    app = create_app(config)
    served = serve(app, port=port)
    yield Deployment(issuer, base / "keys", key)
    served.stop()
    app.extensions["qq_oidc_broker.housekeeper"].stop()


@pytest.fixture
def start_emulator() -> Iterator[Any]:
    """Start emulators with the given registration; all are stopped after the test."""
    started: list[ServedApp] = []

    def start(**settings: Any) -> str:
        served = serve(create_emulator_app(EmulatorSettings(**settings)))
        started.append(served)
        return served.url

    yield start
    for served in started:
        served.stop()


def registration(deployment: Deployment, **overrides: Any) -> dict[str, Any]:
    """The emulator settings of a correctly registered app, with ``overrides``."""
    settings: dict[str, Any] = {
        "app_id": APP_ID,
        "app_key": deployment.app_key,
        "callbacks": [f"{deployment.issuer}/qq/callback"],
        "unionid_enabled": True,
    }
    settings.update(overrides)
    return settings


def doctor(
    config: Path, app_key: str, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"}
    env.update({"QQ_APP_KEY": app_key, "PYTHONIOENCODING": "utf-8"})
    return subprocess.run(
        [sys.executable, "-m", "broker", "doctor", "--config", str(config), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=REPO,
        input=stdin,
        timeout=120,
    )


def statuses(stdout: str) -> dict[str, str]:
    """``{check name: ok|fail|skip}`` from the text output's block headers."""
    found = re.findall(r"^\[( OK |FAIL|SKIP)\] (\w+):", stdout, re.MULTILINE)
    return {name: mark.strip().lower() for mark, name in found}


def block(stdout: str, name: str) -> str:
    """The text block of one check (header to the blank line)."""
    match = re.search(rf"^\[[^\]]+\] {name}:.*?(?=\n\n|\Z)", stdout, re.MULTILINE | re.DOTALL)
    assert match, f"no block for {name} in:\n{stdout}"
    return match.group(0)


def expect(
    result: subprocess.CompletedProcess[str],
    failing: AbstractSet[str],
    skipped: AbstractSet[str] = frozenset(),
) -> None:
    found = statuses(result.stdout)
    assert list(found) == CHECK_NAMES, result.stdout + result.stderr
    wanted = {
        name: "fail" if name in failing else "skip" if name in skipped else "ok"
        for name in CHECK_NAMES
    }
    assert found == wanted, result.stdout
    assert result.returncode == (1 if failing else 0), result.stdout + result.stderr


def assert_secret_free(result: subprocess.CompletedProcess[str], *secret_values: str) -> None:
    for value in secret_values:
        assert value not in result.stdout
        assert value not in result.stderr


def both_languages(text: str) -> bool:
    return bool(CJK.search(text)) and bool(re.search(r"[A-Za-z]{4,} [a-z]{3,}", text))


# --------------------------------------------------------------------------- all good


def test_a_correct_deployment_passes_in_both_languages(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    qq = start_emulator(**registration(deployment))
    config = write_config(
        tmp_path / "c.yaml", issuer=deployment.issuer, base_url=qq, keys_dir=deployment.keys_dir
    )
    result = doctor(config, deployment.app_key)
    # UnionID cannot be asked without a user's token: skipped, which does not fail.
    expect(result, failing=set(), skipped={"qq_unionid"})
    assert "--access-token" in block(result.stdout, "qq_unionid")
    for name in CHECK_NAMES:
        assert both_languages(block(result.stdout, name)), block(result.stdout, name)
    assert "通过 6 项，失败 0 项，跳过 1 项" in result.stdout
    assert "6 passed, 0 failed, 1 skipped" in result.stdout
    assert_secret_free(result, deployment.app_key)


def test_unionid_is_not_needed_without_a_unionid_client(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    qq = start_emulator(**registration(deployment, unionid_enabled=False))
    config = write_config(
        tmp_path / "c.yaml",
        issuer=deployment.issuer,
        base_url=qq,
        keys_dir=deployment.keys_dir,
        unionid_client=False,
    )
    result = doctor(config, deployment.app_key)
    expect(result, failing=set(), skipped={"qq_unionid"})
    assert "no client uses subject: unionid" in block(result.stdout, "qq_unionid")


# --------------------------------------------------------------------------- QQ app


def test_wrong_app_key_fails_only_the_app_check(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    registered_key = secrets.token_hex(16)  # what QQ has; the config has deployment.app_key
    qq = start_emulator(**registration(deployment, app_key=registered_key))
    config = write_config(
        tmp_path / "c.yaml", issuer=deployment.issuer, base_url=qq, keys_dir=deployment.keys_dir
    )
    result = doctor(config, deployment.app_key)
    # The authorize page needs no key: the callback is still checked, and passes.
    expect(result, failing={"qq_app"}, skipped={"qq_unionid"})
    text = block(result.stdout, "qq_app")
    assert "QQ rejected the app key of app id 101000001 (100009)" in text
    assert "QQ 拒绝了 app id 101000001 的 app key（100009）" in text
    assert "upstream.qq.app_key" in text and "QQ_APP_KEY" in text
    assert_secret_free(result, deployment.app_key, registered_key)


def test_unknown_app_id_fails_the_app_check(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    qq = start_emulator(**registration(deployment, app_id="101999999"))
    config = write_config(
        tmp_path / "c.yaml", issuer=deployment.issuer, base_url=qq, keys_dir=deployment.keys_dir
    )
    result = doctor(config, deployment.app_key)
    expect(result, failing={"qq_app"}, skipped={"qq_callback", "qq_unionid"})
    text = block(result.stdout, "qq_app")
    assert "QQ does not know app id 101000001 (100008)" in text
    assert "QQ 不认识 app id 101000001（100008）" in text
    assert "upstream.qq.app_id" in text
    assert_secret_free(result, deployment.app_key)


def test_unregistered_callback_fails_the_callback_check(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    other = "http://127.0.0.1:1/elsewhere/qq/callback"
    qq = start_emulator(**registration(deployment, callbacks=[other]))
    config = write_config(
        tmp_path / "c.yaml", issuer=deployment.issuer, base_url=qq, keys_dir=deployment.keys_dir
    )
    result = doctor(config, deployment.app_key)
    expect(result, failing={"qq_callback"}, skipped={"qq_unionid"})
    text = block(result.stdout, "qq_callback")
    callback = f"{deployment.issuer}/qq/callback"
    assert f"QQ says the callback {callback} is not registered" in text
    assert "100010" in text and "未登记" in text
    assert f"Register the full URL {callback}" in text
    assert_secret_free(result, deployment.app_key)


# --------------------------------------------------------------------------- UnionID


def qq_access_token(qq: str, app_key: str, callback: str) -> str:
    """A real user's QQ access token from the emulator: authorize as zhangsan, exchange."""
    http = requests.Session()
    http.post(f"{qq}/_emulator/control", json={"auto_login": "zhangsan"}, timeout=5)
    authorize = http.get(
        f"{qq}/oauth2.0/authorize",
        params={
            "response_type": "code",
            "client_id": APP_ID,
            "redirect_uri": callback,
            "state": "s",
        },
        allow_redirects=False,
        timeout=5,
    )
    code = parse_qs(urlsplit(authorize.headers["Location"]).query)["code"][0]
    token = http.post(
        f"{qq}/oauth2.0/token",
        data={
            "grant_type": "authorization_code",
            "client_id": APP_ID,
            "client_secret": app_key,
            "code": code,
            "redirect_uri": callback,
            "fmt": "json",
        },
        timeout=5,
    ).json()
    access_token: str = token["access_token"]
    return access_token


@pytest.mark.parametrize("enabled", [False, True])
def test_unionid_permission_is_checked_with_an_access_token(
    tmp_path: Path, deployment: Deployment, start_emulator: Any, enabled: bool
) -> None:
    qq = start_emulator(**registration(deployment, unionid_enabled=enabled))
    config = write_config(
        tmp_path / "c.yaml", issuer=deployment.issuer, base_url=qq, keys_dir=deployment.keys_dir
    )
    token = qq_access_token(qq, deployment.app_key, f"{deployment.issuer}/qq/callback")
    # "-" reads the token from stdin, keeping it out of the process list.
    result = doctor(config, deployment.app_key, "--access-token", "-", stdin=token + "\n")
    expect(result, failing=set() if enabled else {"qq_unionid"})
    text = block(result.stdout, "qq_unionid")
    if enabled:
        assert "UnionID is enabled for the app (needed by rp-unionid)" in text
    else:
        assert "no UnionID permission (companyid not set, 100048)" in text
        assert "rp-unionid" in text and "subject: openid" in text and "开通 UnionID" in text
    assert_secret_free(result, deployment.app_key, token)


def test_an_invalid_access_token_fails_the_unionid_check(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    qq = start_emulator(**registration(deployment))
    config = write_config(
        tmp_path / "c.yaml", issuer=deployment.issuer, base_url=qq, keys_dir=deployment.keys_dir
    )
    bogus = secrets.token_hex(16).upper()
    result = doctor(config, deployment.app_key, "--access-token", bogus)
    expect(result, failing={"qq_unionid"})
    assert "The access token given is invalid or expired" in block(result.stdout, "qq_unionid")
    assert_secret_free(result, deployment.app_key, bogus)


# --------------------------------------------------------------------------- clock


@pytest.mark.parametrize(("skew", "direction"), [(3600, "behind"), (-900, "ahead of")])
def test_clock_skew_against_qq_fails_the_clock_check(
    tmp_path: Path, deployment: Deployment, start_emulator: Any, skew: int, direction: str
) -> None:
    qq = start_emulator(**registration(deployment, clock_skew_seconds=skew))
    config = write_config(
        tmp_path / "c.yaml", issuer=deployment.issuer, base_url=qq, keys_dir=deployment.keys_dir
    )
    result = doctor(config, deployment.app_key)
    expect(result, failing={"clock"}, skipped={"qq_unionid"})
    text = block(result.stdout, "clock")
    measured = re.search(rf"This machine's clock is (\d+) s {direction} QQ's", text)
    assert measured, text
    # The Date header has one-second resolution: allow for the second boundary.
    assert abs(int(measured.group(1)) - abs(skew)) <= 2
    assert "NTP" in text and "本机时钟" in text


# --------------------------------------------------------------------------- issuer and JWKS


def test_unreachable_issuer_fails_and_skips_jwks(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    qq = start_emulator(**registration(deployment, callbacks=[f"{nowhere}/qq/callback"]))
    config = write_config(
        tmp_path / "c.yaml", issuer=nowhere, base_url=qq, keys_dir=deployment.keys_dir
    )
    result = doctor(config, deployment.app_key)
    expect(result, failing={"issuer"}, skipped={"jwks", "qq_unionid"})
    text = block(result.stdout, "issuer")
    assert f"Cannot fetch {nowhere}/.well-known/openid-configuration" in text
    assert "connection refused" in text and "无法获取" in text


def test_jwks_from_a_broker_with_other_keys_fails(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    other_keys = tmp_path / "other-keys"
    ring = KeyRing.load_or_create(other_keys, ["RS256"])
    kid = ring.signing_keys[0].kid
    qq = start_emulator(**registration(deployment))
    config = write_config(
        tmp_path / "c.yaml", issuer=deployment.issuer, base_url=qq, keys_dir=other_keys
    )
    result = doctor(config, deployment.app_key)
    expect(result, failing={"jwks"}, skipped={"qq_unionid"})
    text = block(result.stdout, "jwks")
    assert f"does not publish the key(s) this config signs with (kid: {kid})" in text
    assert "没有发布本配置用来签名的密钥" in text


def test_issuer_with_an_untrusted_certificate_reports_the_tls_problem(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    with tls_server(tmp_path) as url:
        qq = start_emulator(**registration(deployment, callbacks=[f"{url}/qq/callback"]))
        config = write_config(
            tmp_path / "c.yaml", issuer=url, base_url=qq, keys_dir=deployment.keys_dir
        )
        result = doctor(config, deployment.app_key)
    expect(result, failing={"issuer"}, skipped={"jwks", "qq_unionid"})
    text = block(result.stdout, "issuer")
    assert "TLS verification failed" in text and "TLS 证书验证失败" in text
    assert re.search(r"self[- ]signed certificate", text), text


# --------------------------------------------------------------------------- output forms


def test_json_output_and_single_language(
    tmp_path: Path, deployment: Deployment, start_emulator: Any
) -> None:
    qq = start_emulator(**registration(deployment, app_key=secrets.token_hex(16)))
    config = write_config(
        tmp_path / "c.yaml", issuer=deployment.issuer, base_url=qq, keys_dir=deployment.keys_dir
    )
    as_json = doctor(config, deployment.app_key, "--json")
    assert as_json.returncode == 1
    data = json.loads(as_json.stdout)
    assert data["ok"] is False
    assert [check["name"] for check in data["checks"]] == CHECK_NAMES
    app = next(check for check in data["checks"] if check["name"] == "qq_app")
    assert app["status"] == "fail"
    assert set(app["message"]) == {"zh-CN", "en"} and set(app["fix"]) == {"zh-CN", "en"}
    assert "100009" in app["message"]["en"] and "100009" in app["message"]["zh-CN"]

    english = doctor(config, deployment.app_key, "--lang", "en")
    assert english.returncode == 1
    assert not CJK.search(english.stdout), english.stdout
    chinese = doctor(config, deployment.app_key, "--lang", "zh-CN")
    assert "QQ 拒绝了" in chinese.stdout and "QQ rejected" not in chinese.stdout
    for result in (as_json, english, chinese):
        assert_secret_free(result, deployment.app_key)


def test_a_config_that_does_not_load_is_exit_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("issuer: http://127.0.0.1:8000\n", encoding="utf-8")
    result = doctor(config, "0123456789abcdef0123456789abcdef")
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("qq-oidc-broker: ")


# --------------------------------------------------------------------------- TLS helper


class _Discovery(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


@contextmanager
def tls_server(directory: Path) -> Iterator[str]:
    """An https server on 127.0.0.1 with a self-signed certificate nobody trusts."""
    cert, key = self_signed(directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


