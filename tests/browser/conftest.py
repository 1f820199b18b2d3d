"""The dev stack as a real process, and a real headless chromium driven by Playwright.

``qq-oidc-broker dev`` runs exactly as a newcomer starts it (broker, QQ emulator and
demo relying party on free loopback ports). The browser is Debian's chromium: nothing is
downloaded at run time. Without chromium or Playwright the browser tests skip with the
reason, and under CI=true a skip fails the run (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import free_port

REPO = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser")


def chromium_path() -> str | None:
    """Debian's chromium (``apt-get install chromium``; .ci/run installs it)."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


def screenshot_dir() -> Path:
    """``$ARTIFACTS_DIR/screenshots``, by default ``test-artifacts/screenshots`` in the repo."""
    base = Path(os.environ.get("ARTIFACTS_DIR") or REPO / "test-artifacts")
    directory = base / "screenshots"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@dataclass(frozen=True)
class DevStack:
    """URLs of a running ``qq-oidc-broker dev`` (no trailing slashes)."""

    demo: str
    issuer: str
    emulator: str

    def users(self) -> dict[str, dict[str, Any]]:
        """The emulator's users with their openids: the ``sub`` the demo must show."""
        answer = requests.get(f"{self.emulator}/_emulator/users", timeout=10)
        answer.raise_for_status()
        return {user["id"]: user for user in answer.json()}


@pytest.fixture(scope="package")
def dev_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    """``python -m broker dev`` on free ports, stopped (by its own pid) afterwards."""
    ports = {"port": free_port(), "emulator": free_port(), "demo": free_port()}
    data_dir = tmp_path_factory.mktemp("dev-data")
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
        str(data_dir),
    ]
    log_path = data_dir / "dev.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    stack = DevStack(
        demo=f"http://127.0.0.1:{ports['demo']}",
        issuer=f"http://127.0.0.1:{ports['port']}",
        emulator=f"http://127.0.0.1:{ports['emulator']}",
    )
    try:
        ready = (f"{stack.issuer}/readyz", f"{stack.demo}/", f"{stack.emulator}/_emulator/users")
        for url in ready:
            wait_until_up(url, proc, log_path)
        yield stack
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=20)


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Poll until ``url`` answers 200; a dead process fails at once with its output."""
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"dev exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never came up:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One headless chromium for the package; each test opens its own context (cookies)."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does)")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable,
            headless=True,
            # No sandbox: CI runs as root, where chromium refuses to start with one.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        try:
            yield launched
        finally:
            launched.close()
