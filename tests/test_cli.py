"""The command line as an operator uses it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.servers import free_port

ENV = {
    "QQ_APP_ID": "101000001",
    "QQ_APP_KEY": "0123456789abcdef0123456789abcdef",
    "DEMO_CLIENT_SECRET": "demo-secret-for-tests-only-0123456789",
}
REPO = Path(__file__).resolve().parent.parent


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    inherited = {k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"}
    full_env = {**inherited, **ENV, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=60,
    )


def write_config(directory: Path, text: str) -> Path:
    path = directory / "config.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
issuer: http://127.0.0.1:{port}
server: {{host: 127.0.0.1, port: {port}}}
upstream:
  qq:
    app_id: ${{QQ_APP_ID}}
    app_key: ${{QQ_APP_KEY}}
clients:
  - client_id: demo
    client_secret: ${{DEMO_CLIENT_SECRET}}
    redirect_uris: [http://127.0.0.1:9000/callback]
"""


def test_check_accepts_the_example_config_from_the_repo() -> None:
    result = run("check", "--config", str(REPO / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_reads_broker_config_from_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, GOOD.format(port=8000))
    result = run("check", env={"BROKER_CONFIG": str(path)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            GOOD.format(port=8000).replace(
                "issuer: http://127.0.0.1:8000", "issuer: http://127.0.0.1:8000/"
            ),
            "issuer",
        ),
        (GOOD.format(port=8000) + "bogus_key: 1\n", "bogus_key"),
        (
            GOOD.format(port=8000).replace("[http://127.0.0.1:9000/callback]", "[/callback]"),
            "redirect_uris",
        ),
        (
            GOOD.format(port=8000).replace("${QQ_APP_KEY}", "${UNSET_VARIABLE_FOR_TEST}"),
            "UNSET_VARIABLE_FOR_TEST",
        ),
        ("issuer: [unclosed\n", "line"),
        (GOOD.format(port=8000).replace("issuer: http://127.0.0.1:8000\n", ""), "issuer"),
    ],
    ids=[
        "trailing-slash",
        "unknown-key",
        "relative-redirect",
        "unset-var",
        "malformed-yaml",
        "missing-issuer",
    ],
)
def test_check_reports_one_clear_line_and_exit_2(tmp_path: Path, text: str, expected: str) -> None:
    path = write_config(tmp_path, text)
    result = run("check", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0] and "config.yaml" in lines[0]
    assert "Traceback" not in result.stderr
    assert ENV["QQ_APP_KEY"] not in result.stderr


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = run("check", "--config", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml" in result.stderr


def test_no_command_is_usage_error() -> None:
    assert run().returncode == 2


def test_serve_runs_the_config_and_generates_keys(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, GOOD.format(port=port))
    env = {**os.environ, **ENV}
    command = [sys.executable, "-m", "broker", "serve", "--config", str(path)]
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        meta = wait_for_json(f"http://127.0.0.1:{port}/.well-known/openid-configuration")
        assert meta["issuer"] == f"http://127.0.0.1:{port}"
        keys = requests.get(meta["jwks_uri"], timeout=5).json()["keys"]
        assert keys and keys[0]["alg"] == "RS256"
        private = tmp_path / "keys" / "rs256.pem"
        assert private.exists() and (private.stat().st_mode & 0o777) == 0o600
        assert (tmp_path / "broker.sqlite3").exists()
    finally:
        proc.terminate()
        output = proc.communicate(timeout=20)[0].decode()
    assert ENV["QQ_APP_KEY"] not in output and "Traceback" not in output


def test_serve_refuses_a_corrupt_key_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, GOOD.format(port=free_port()))
    (tmp_path / "keys").mkdir()
    corrupt = tmp_path / "keys" / "rs256.pem"
    corrupt.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    corrupt.chmod(0o600)
    result = run("serve", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "rs256.pem" in result.stderr and "Traceback" not in result.stderr
    assert "not a key" in corrupt.read_text()  # never silently replaced


def wait_for_json(url: str, timeout: float = 30.0) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        try:
            return requests.get(url, timeout=2).json()  # type: ignore[no-any-return]
        except (requests.ConnectionError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_emulator_command_runs_alone(tmp_path: Path) -> None:
    port = free_port()
    callback = "http://127.0.0.1:8000/qq/callback"
    command = [
        sys.executable,
        "-m",
        "broker",
        "emulator",
        "--port",
        str(port),
        "--app-id",
        "101000001",
        "--app-key",
        ENV["QQ_APP_KEY"],
        "--callback",
        callback,
    ]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_json(f"{base}/_emulator/users")
        params = {
            "response_type": "code",
            "client_id": "101000001",
            "redirect_uri": callback,
            "state": "s",
        }
        page = requests.get(f"{base}/oauth2.0/authorize", params=params, timeout=5)
        assert page.status_code == 200 and "张三" in page.content.decode("utf-8")
        bad = requests.get(
            f"{base}/oauth2.0/authorize",
            timeout=5,
            params={**params, "redirect_uri": "http://127.0.0.1:8000/other"},
        )
        assert "(100010)" in bad.text
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_emulator_takes_app_and_callback_from_the_config(tmp_path: Path) -> None:
    port = free_port()
    path = write_config(tmp_path, GOOD.format(port=8123))
    command = [
        sys.executable,
        "-m",
        "broker",
        "emulator",
        "--port",
        str(port),
        "--config",
        str(path),
    ]
    env = {**os.environ, **ENV}
    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert "http://127.0.0.1:8123/qq/callback" in banner
        assert ENV["QQ_APP_KEY"] not in banner
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_emulator_without_app_settings_is_a_usage_error(tmp_path: Path) -> None:
    result = run("emulator", "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode == 2 and "--app-id" in result.stderr


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("qq-oidc-broker")
    assert script.exists()
    result = subprocess.run(
        [str(script), "check", "--config", str(REPO / "config.yaml")],
        capture_output=True,
        text=True,
        env={**os.environ, **ENV},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_check_warns_about_settings_that_need_attention(tmp_path: Path) -> None:
    """A production issuer on a staging twin of QQ passes, with a warning said out loud."""
    text = (
        "issuer: https://login.example.com\n"
        "secret_key: ${BROKER_SECRET_KEY}\n"
        "upstream:\n  qq:\n    app_id: ${QQ_APP_ID}\n    app_key: ${QQ_APP_KEY}\n"
        "    base_url: https://qq-staging.example.com\n    allow_staging_base_url: true\n"
        "clients: []\n"
    )
    env = {"BROKER_SECRET_KEY": "Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"}
    result = run("check", "--config", str(write_config(tmp_path, text)), env=env)
    assert result.returncode == 0, result.stderr
    assert "warning: upstream.qq.base_url: a staging twin" in result.stderr
