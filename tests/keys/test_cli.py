"""``qq-oidc-broker keys list|rotate|retire`` as an operator runs them: exit status 0 / 2,
``--json``, one-line errors on stderr (never a traceback, never key material)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from broker.cli import main
from tests.keys.conftest import new_kek

REPO = Path(__file__).resolve().parents[2]
PUBLISH_AHEAD = 120

CONFIG = """\
issuer: http://127.0.0.1:8000
storage: {{url: "sqlite:///broker.sqlite3"}}
keys:
  dir: keys
  algorithms: [RS256, ES256]
  storage: {mode}
{kek}  jwks_max_age: 60
  rotation: {{interval: 0, publish_ahead: PUBLISH_AHEAD}}
upstream:
  qq: {{app_id: "101000001", app_key: "0123456789abcdef"}}
""".replace("PUBLISH_AHEAD", str(PUBLISH_AHEAD))


@pytest.fixture(params=["files", "database"])
def config(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    kek = "  encryption_key: ${TEST_KEK}\n" if request.param == "database" else ""
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.format(mode=request.param, kek=kek), encoding="utf-8")
    monkeypatch.setenv("TEST_KEK", new_kek())
    if request.param == "database":
        assert main(["db", "upgrade", "--config", str(path)]) == 0
    return path


def keys(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, Any, str]:
    """Run ``keys ARGS --json``: (exit status, parsed stdout or None, stderr)."""
    capsys.readouterr()
    action, *rest = args
    # kids are base64url and may start with "-": options first, then "--", then the kid.
    options = [a for a in rest if a.startswith("--")]
    positional = [a for a in rest if not a.startswith("--")]
    argv = ["keys", action, *options, "--config", str(config), "--json"]
    if positional:
        argv += ["--", *positional]
    status = main(argv)
    out, err = capsys.readouterr()
    return status, json.loads(out) if status == 0 else None, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("qq-oidc-broker: ") and "Traceback" not in err
    return lines[0]


def test_list_rotate_retire(capsys: pytest.CaptureFixture[str], config: Path) -> None:
    status, listed, _ = keys(capsys, config, "list")
    assert status == 0 and listed["keys"] == []  # list creates nothing

    now = int(time.time())
    status, first, _ = keys(capsys, config, "rotate")
    assert status == 0 and [k["alg"] for k in first["keys"]] == ["RS256", "ES256"]
    assert all(k["created"] and k["activates_at"] == k["created_at"] for k in first["keys"])

    status, second, _ = keys(capsys, config, "rotate")
    assert all(k["created"] for k in second["keys"])
    for key in second["keys"]:
        assert now + PUBLISH_AHEAD <= key["activates_at"] <= int(time.time()) + PUBLISH_AHEAD

    status, third, _ = keys(capsys, config, "rotate")
    assert [k["created"] for k in third["keys"]] == [False, False]  # already scheduled
    assert [k["kid"] for k in third["keys"]] == [k["kid"] for k in second["keys"]]

    status, listed, _ = keys(capsys, config, "list")
    states = [(k["alg"], k["state"], k["published"]) for k in listed["keys"]]
    assert states == [("RS256", "active", True), ("RS256", "next", True),
                      ("ES256", "active", True), ("ES256", "next", True)]  # fmt: skip
    active_rs = listed["keys"][0]["kid"]
    pending_es = listed["keys"][3]["kid"]

    status, retired, _ = keys(capsys, config, "retire", pending_es)
    assert status == 0 and retired["alg"] == "ES256" and not retired["already_withdrawn"]
    status, again, _ = keys(capsys, config, "retire", pending_es)
    assert status == 0 and again["already_withdrawn"]

    status, early, _ = keys(capsys, config, "retire", active_rs)
    assert status == 0 and early["signing_kid"] == second["keys"][0]["kid"]  # signs early
    status, listed, _ = keys(capsys, config, "list")
    assert {k["kid"]: k["state"] for k in listed["keys"]}[active_rs] == "withdrawn"


def test_retiring_the_signing_key_is_refused_without_force(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    keys(capsys, config, "rotate")
    _, listed, _ = keys(capsys, config, "list")
    signing = listed["keys"][0]["kid"]
    status, _, err = keys(capsys, config, "retire", signing)
    assert status == 2 and "keys rotate" in one_error_line(err) and "--force" in err
    status, forced, _ = keys(capsys, config, "retire", signing, "--force")
    assert status == 0 and forced["replacement_kid"] not in (None, signing)


def test_unknown_kid_is_exit_2_on_one_line(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    keys(capsys, config, "rotate")
    status, _, err = keys(capsys, config, "retire", "no-such-kid")
    assert status == 2
    assert "no key with kid 'no-such-kid'" in one_error_line(err)


def test_text_output_says_when_the_next_key_signs(
    capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    main(["keys", "rotate", "--config", str(config)])
    capsys.readouterr()
    assert main(["keys", "rotate", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "is published now and signs from" in out and f"(in {PUBLISH_AHEAD} s)" in out
    assert main(["keys", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert out.count("active") == 2 and out.count("next") == 2


def test_database_keys_need_the_schema(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.yaml"
    kek = "  encryption_key: ${TEST_KEK}\n"
    path.write_text(CONFIG.format(mode="database", kek=kek), encoding="utf-8")
    monkeypatch.setenv("TEST_KEK", new_kek())
    status, _, err = keys(capsys, path, "rotate")
    assert status == 2 and "run `qq-oidc-broker db upgrade`" in one_error_line(err)


def run(config: Path, *args: str, kek: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "broker", *args, "--config", str(config)],
        capture_output=True, text=True, env={**env, "TEST_KEK": kek}, cwd=REPO, timeout=60,
        check=False,
    )  # fmt: skip


@pytest.mark.parametrize("command", [["keys", "list"], ["serve"]])
def test_a_wrong_kek_is_exit_2_with_one_line(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "config.yaml"
    kek_line = "  encryption_key: ${TEST_KEK}\n"
    path.write_text(CONFIG.format(mode="database", kek=kek_line), encoding="utf-8")
    right, wrong = new_kek(), new_kek()
    assert run(path, "db", "upgrade", kek=right).returncode == 0
    made = run(path, "keys", "rotate", kek=right)
    assert made.returncode == 0, made.stderr

    result = run(path, *command, kek=wrong)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("qq-oidc-broker: keys.encryption_key does not decrypt the stored keys")
    for secret in (right, wrong, "PRIVATE KEY"):
        assert secret not in result.stderr and secret not in result.stdout
    errors = [line for line in result.stderr.splitlines() if "qq-oidc-broker:" in line]
    assert errors == [last]
