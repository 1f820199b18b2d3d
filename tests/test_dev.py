"""``qq-oidc-broker dev`` end to end, as a newcomer uses it: open the printed URL, log in.

The dev command runs as a real process; the test acts as the browser: the demo
relying party, the broker, the emulator's login page (a real HTML form), and
back to the demo page showing the verified ID token and userinfo.
"""

from __future__ import annotations

import html
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin

import pytest
import requests

from tests.servers import free_port


class LoginForm(HTMLParser):
    """The emulator login page's form: its action and hidden fields."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}
        self.users: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "form":
            self.action = attributes.get("action", "")
        elif tag == "input" and attributes.get("type") == "hidden":
            self.fields[attributes["name"]] = attributes.get("value", "")
        elif tag == "button" and attributes.get("name") == "user":
            self.users.append(attributes["value"])


@pytest.fixture
def dev_mode(tmp_path: Path) -> Iterator[dict[str, str]]:
    ports = {"port": free_port(), "emulator": free_port(), "demo": free_port()}
    command = [
        sys.executable,
        "-m",
        "broker",
        "dev",
        "--port",
        str(ports["port"]),
        "--emulator-port",
        str(ports["emulator"]),
        "--demo-port",
        str(ports["demo"]),
        "--data-dir",
        str(tmp_path / "dev-data"),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ}
    )
    demo = f"http://127.0.0.1:{ports['demo']}/"
    try:
        banner = read_until(proc, demo)
        wait_until_up(f"http://127.0.0.1:{ports['port']}/healthz")
        yield {"demo": demo, "banner": banner, "issuer": f"http://127.0.0.1:{ports['port']}"}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def read_until(proc: subprocess.Popen[str], needle: str, timeout: float = 60) -> str:
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"dev exited early:\n{seen}")
        seen += line
        if time.monotonic() > deadline:
            raise AssertionError(f"no URL printed:\n{seen}")
    return seen


def wait_until_up(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never came up")
        time.sleep(0.2)


def test_newcomer_logs_in_through_the_demo(dev_mode: dict[str, str]) -> None:
    assert "open http://127.0.0.1:" in dev_mode["banner"]
    browser = requests.Session()
    home = browser.get(dev_mode["demo"], timeout=10)
    assert "Login with QQ" in home.text
    # Demo → broker /authorize → emulator authorize → emulator login page.
    page = browser.get(urljoin(dev_mode["demo"], "/login"), timeout=10)
    assert page.status_code == 200 and "QQ" in page.text
    form = LoginForm()
    form.feed(page.text)
    assert "zhangsan" in form.users and form.action
    # Choosing a user: emulator → broker /qq/callback → demo /callback with a code.
    result = browser.post(
        urljoin(page.url, html.unescape(form.action)),
        data={**form.fields, "user": "zhangsan"},
        timeout=30,
    )
    assert result.status_code == 200, result.text[:500]
    assert "signature verified" in result.text
    assert "张三" in result.text  # nickname from get_user_info, in the verified claims
    assert dev_mode["issuer"] in result.text  # iss of the ID token


def test_dev_with_a_taken_port_says_so_in_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [
            sys.executable,
            "-m",
            "broker",
            "dev",
            "--port",
            str(free_port()),
            "--emulator-port",
            str(free_port()),
            "--demo-port",
            str(port),
            "--data-dir",
            str(tmp_path / "dev-data"),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"--demo-port {port}" in result.stderr
    assert "Traceback" not in result.stderr and "open http" not in result.stdout
