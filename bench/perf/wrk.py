"""Single-request endpoints under ``wrk``: throughput, latency, and what the window used.

Why wrk: it is C on an event loop and spends a few microseconds per request, so on a
2-core machine it takes little from the server it measures; Python threads with
``requests`` top out well below the rates measured here. Its Lua hook (``wrk.lua``)
gives every token request a code of its own, so the token endpoint is measured on
real, single-use code redemptions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perf.procs import PERF
from perf.sample import Usage, Window

LUA = PERF / "wrk.lua"


@dataclass
class Figure:
    """One measured endpoint."""

    rate: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    usage: Usage | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def p99_over_p50(self) -> float:
        return self.p99_ms / self.p50_ms if self.p50_ms else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "rate": round(self.rate, 1),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "requests": self.requests,
            "errors": self.errors,
            "usage": self.usage.as_dict() if self.usage else None,
            **self.extra,
        }


def available() -> bool:
    return shutil.which("wrk") is not None


def run(
    url: str,
    *,
    seconds: float,
    connections: int,
    threads: int = 2,
    headers: Mapping[str, str] | None = None,
    script_args: Sequence[str] = ("static",),
    watch: Mapping[str, int] | None = None,
) -> tuple[Figure, dict[str, Any]]:
    """Run wrk against ``url``; ``watch`` names the server processes whose CPU to record.

    Returns the figure and wrk's raw counters (``exhausted`` among them).
    """
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:.0f}s"]
    argv += ["--timeout", "30s", "--latency", "-s", str(LUA)]
    for name, value in (headers or {}).items():
        argv += ["-H", f"{name}: {value}"]
    argv += [url, "--", *script_args]
    with Window(watch or {}) as window, tempfile.TemporaryFile() as out:
        process = subprocess.Popen(  # noqa: S603 - wrk with our own arguments
            argv, stdout=out, stderr=subprocess.STDOUT
        )
        wrk_cpu, returncode = reap(process)
        usage = window.finish()
        out.seek(0)
        text = out.read().decode(errors="replace")
    if returncode != 0:
        raise RuntimeError(f"wrk failed ({returncode}): {text[-1000:]}")
    raw = _perfjson(text)
    usage.procs_cpu["wrk"] = wrk_cpu / usage.seconds if usage.seconds else 0.0
    errors = sum(
        int(raw[k])
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    duration = raw["duration_us"] / 1e6
    figure = Figure(
        rate=raw["requests"] / duration if duration else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        requests=int(raw["requests"]),
        errors=errors,
        usage=usage,
    )
    return figure, raw


def _perfjson(stdout: str) -> dict[str, Any]:
    for line in stdout.splitlines():
        if line.startswith("PERFJSON "):
            result: dict[str, Any] = json.loads(line[len("PERFJSON ") :])
            return result
    raise RuntimeError(f"wrk printed no PERFJSON line:\n{stdout[-2000:]}")


def reap(process: subprocess.Popen[Any]) -> tuple[float, int]:
    """Wait for ``process`` with ``wait4``: its CPU seconds (user + system, all threads)
    and its exit status, read from the kernel's accounting at exit."""
    _, status, rusage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return rusage.ru_utime + rusage.ru_stime, process.returncode


def codes_args(codes: Path, threads: int, path: str, auth: str, redirect_uri: str) -> list[str]:
    return ["codes", str(codes), str(threads), path, auth, redirect_uri]
