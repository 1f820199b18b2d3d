"""Multi-step browser flows (``flows.mjs``): minting codes ahead, complete logins, bursts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from perf.procs import PERF, REDIRECT_URI
from perf.sample import Window
from perf.wrk import reap

SCRIPT = PERF / "flows.mjs"


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise SystemExit("node is not installed (Debian: apt-get install nodejs npm)")
    return found


def run(config: Mapping[str, Any], watch: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Run one flow; the result carries ``usage`` (the window's CPU) and ``node_cores``."""
    argv = [node(), str(SCRIPT), json.dumps({"redirect_uri": REDIRECT_URI, **config})]
    with Window(watch or {}) as window, tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        cpu, returncode = reap(process)
        usage = window.finish()
        out.seek(0)
        text = out.read().decode(errors="replace")
    lines = [line for line in text.splitlines() if line.startswith("{")]
    if returncode != 0 or not lines:
        raise RuntimeError(f"flows.mjs {config.get('mode')} failed ({returncode}):\n{text[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    usage.procs_cpu["node"] = cpu / usage.seconds if usage.seconds else 0.0
    result["usage"] = usage
    return result


def mint(
    issuer: str, client_id: str, count: int, out: Path, *, peer: bool = False,
    concurrency: int = 16,
) -> dict[str, Any]:  # fmt: skip
    """``count`` fresh codes for ``client_id`` in ``out`` (one login each)."""
    mode = "mint-peer" if peer else "mint-broker"
    config = {"mode": mode, "issuer": issuer, "client_id": client_id, "count": count}
    result = run({**config, "concurrency": concurrency, "out": str(out)})
    lines = out.read_text().splitlines()
    if len(lines) < count * 0.99:
        raise RuntimeError(f"minted {len(lines)} of {count} codes: {result.get('first_errors')}")
    return result


def scratch(directory: Path, name: str) -> Path:
    """A fresh file name under ``directory`` (codes are single use: never reuse a file)."""
    descriptor, path = tempfile.mkstemp(dir=directory, prefix=name, suffix=".txt")
    os.close(descriptor)
    return Path(path)
