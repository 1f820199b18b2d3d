"""The table and the targets (issue: interop, performance points 6-10), from one run.

Every target is a ratio between figures of the same run, so it survives a noisy
machine better than any absolute number would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Issue point 10.
TOKEN_VS_PEER_RS256 = 1.0
TOKEN_VS_CEILING = 0.85
TOKEN_VS_PEER_ES256 = 1.3
USERINFO_VS_BARE = 0.60
SECRET_CHECK_SHARE = 0.05
P99_OVER_P50 = 3.0
#: A core counts as idle when the run's own processes leave more than this much of the
#: machine unused (in cores).
IDLE_CORE = 0.25


@dataclass
class Target:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def _rate(figure: Mapping[str, Any] | None) -> float:
    return float(figure["rate"]) if figure else 0.0


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def ceiling_rate(bare: float, sign: float) -> float:
    """One bare request plus one signature per request: ``bare`` the bare endpoint's rate,
    ``sign`` the signature rate of the cores it ran on."""
    return 1.0 / (1.0 / bare + 1.0 / sign) if bare and sign else 0.0


def _worst(values: Mapping[str, float]) -> tuple[str, float]:
    """The run with the highest value, and that value."""
    name = max(values, key=lambda k: values[k])
    return name, values[name]


def targets(results: Mapping[str, Any]) -> list[Target]:
    ours, peer, ceil = results["broker"], results.get("peer") or {}, results["ceiling"]
    found: list[Target] = []
    bare = _rate(ceil["bare_wsgi"])
    for alg, factor in (("RS256", TOKEN_VS_PEER_RS256), ("ES256", TOKEN_VS_PEER_ES256)):
        mine, theirs = ours["token"].get(alg), (peer.get("token") or {}).get(alg)
        if mine is None or theirs is None:
            continue
        ratio = _ratio(_rate(mine), _rate(theirs))
        found.append(
            Target(
                f"token endpoint {alg} >= {factor:.1f}x the peer's",
                ratio >= factor,
                f"{ratio:.2f}x ({_rate(mine):.0f}/s vs {_rate(theirs):.0f}/s)",
            )
        )
    mine = ours["token"].get("RS256")
    if mine is not None:
        limit = ceil["ceiling"]["RS256"]
        ratio = _ratio(_rate(mine), limit)
        found.append(
            Target(
                f"token endpoint RS256 >= {TOKEN_VS_CEILING:.0%} of the ceiling "
                "(one bare request + one signature per core)",
                ratio >= TOKEN_VS_CEILING,
                f"{ratio:.0%} ({_rate(mine):.0f}/s of {limit:.0f}/s)",
            )
        )
    userinfo = ours.get("userinfo")
    if userinfo:
        ratio = _ratio(_rate(userinfo), bare)
        found.append(
            Target(
                f"userinfo >= {USERINFO_VS_BARE:.0%} of the bare endpoint",
                ratio >= USERINFO_VS_BARE,
                f"{ratio:.0%} ({_rate(userinfo):.0f}/s of {bare:.0f}/s)",
            )
        )
    imports = {name: run.get("private_key_imports", 0) for name, run in _broker_runs(ours)}
    requests = sum(run.get("requests", 0) for _, run in _broker_runs(ours))
    total = sum(imports.values())
    found.append(
        Target(
            "zero private-key imports per request",
            total == 0,
            f"{total} imports in {requests} requests"
            + (
                ""
                if total == 0
                else " (" + ", ".join(f"{k}: {v}" for k, v in imports.items() if v) + ")"
            ),
        )
    )
    shares = {
        alg: run["secret_check_share"]
        for alg, run in ours["token"].items()
        if run.get("secret_check_share") is not None
    }
    if shares:
        worst = max(shares.values())
        auth = max(run.get("client_auth_share", 0.0) for run in ours["token"].values())
        found.append(
            Target(
                f"client-secret checks <= {SECRET_CHECK_SHARE:.0%} of token endpoint CPU",
                worst <= SECRET_CHECK_SHARE,
                f"{worst:.2%} (the whole client authentication: {auth:.2%})",
            )
        )
    cores = results["machine"]["cores"]
    idle = {
        name: cores - run["usage"]["ours_cores"]
        for name, run in _broker_runs(ours)
        if run.get("usage") and name != "logins 500 at 200 ms"
    }
    if idle:
        name, unused = _worst(idle)
        found.append(
            Target(
                "no run leaves a core idle (default serve settings)",
                unused <= IDLE_CORE,
                f"most unused: {unused:.2f} of {cores} cores in '{name}' "
                f"(its processes used {cores - unused:.2f})",
            )
        )
    tails = {
        name: run["p99_ms"] / run["p50_ms"]
        for name, run in _broker_runs(ours)
        if run.get("p50_ms") and name != "logins 500 at 200 ms"
    }
    if tails:
        name, tail = _worst(tails)
        found.append(
            Target(
                f"p99 <= {P99_OVER_P50:.0f}x p50 (every steady-state broker run)",
                tail <= P99_OVER_P50,
                f"worst {tail:.1f}x in '{name}'",
            )
        )
    slow = ours.get("slow_logins")
    if slow:
        found.append(
            Target(
                f"{slow['count_started']} concurrent logins with {slow['latency_ms']} ms at each "
                "QQ endpoint, 0 errors",
                slow["errors"] == 0 and slow["count"] == slow["count_started"],
                f"{slow['count']} completed, {slow['errors']} errors, p50 {slow['p50_ms']:.0f} ms, "
                f"p99 {slow['p99_ms']:.0f} ms",
            )
        )
    return found


def _broker_runs(ours: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    runs: list[tuple[str, Mapping[str, Any]]] = [
        (f"token {alg}", run) for alg, run in ours["token"].items()
    ]
    for name in ("userinfo", "jwks", "discovery", "logins"):
        if ours.get(name):
            runs.append((name, ours[name]))
    if ours.get("slow_logins"):
        runs.append(("logins 500 at 200 ms", ours["slow_logins"]))
    return runs


# --------------------------------------------------------------------------- the table


def _fmt(value: float | None, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


HEADER = (
    f"{'':<30}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99/50':>7}{'x ceil':>8}"
    f"{'peer/s':>9}{'÷ peer':>8}{'cores':>7}"
)


def _row(name: str, run: Mapping[str, Any] | None, ceiling: float | None,
         peer: Mapping[str, Any] | None = None) -> str:  # fmt: skip
    if not run:
        return f"{name:<30}{'(not run)':>9}"
    rate = _rate(run)
    p50, p99 = run.get("p50_ms"), run.get("p99_ms")
    tail = p99 / p50 if p50 and p99 else None
    usage = run.get("usage") or {}
    return (
        f"{name:<30}{rate:>9.0f}{_fmt(p50, '.1f', 9)}{_fmt(p99, '.1f', 9)}{_fmt(tail, '.1f', 7)}"
        f"{_fmt(rate / ceiling if ceiling else None, '.2f', 8)}"
        f"{_fmt(_rate(peer) if peer else None, '.0f', 9)}"
        f"{_fmt(rate / _rate(peer) if peer and _rate(peer) else None, '.2f', 8)}"
        f"{_fmt(usage.get('ours_cores'), '.2f', 7)}"
    )


def table(results: Mapping[str, Any]) -> str:
    ceil, ours, peer = results["ceiling"], results["broker"], results.get("peer") or {}
    bare = _rate(ceil["bare_wsgi"])
    workers = ceil.get("workers", 1)
    lines = [f"ceiling (signatures on one core; bare endpoint on {workers} worker(s))", HEADER]
    for alg, rates in ceil["signing"].items():
        lines.append(f"{'  sign ' + alg:<30}{rates['sign']:>9.0f}"
                     f"{'':>42}(whole JWS: {rates['jws']:.0f}/s)")  # fmt: skip
    lines.append(_row("  bare endpoint (WSGI)", ceil["bare_wsgi"], None))
    lines.append(_row("  bare endpoint (Flask)", ceil.get("bare_flask"), None))
    for alg, rate in ceil["ceiling"].items():
        lines.append(f"{'  ceiling ' + alg + ' (bare+sign)':<30}{rate:>9.0f}")
    lines += ["", "broker (SQLite, default serve settings)", HEADER]
    peer_tokens = peer.get("token") or {}
    for alg, run in ours["token"].items():
        lines.append(_row(f"  token {alg} (code redemption)", run,
                          ceil["ceiling"].get(alg), peer_tokens.get(alg)))  # fmt: skip
    for side, tokens in (("broker", ours["token"]), ("peer", peer_tokens)):
        for alg, run in tokens.items():
            if run.get("codes_ran_out"):
                lines.append(f"    ({side} token {alg}: codes ran out, the figure is invalid)")
    lines.append(_row("  userinfo", ours.get("userinfo"), bare, peer.get("userinfo")))
    lines.append(_row("  JWKS", ours.get("jwks"), bare, peer.get("jwks")))
    lines.append(_row("  discovery", ours.get("discovery"), bare, peer.get("discovery")))
    rs256 = ceil["ceiling"].get("RS256")
    lines.append(_row("  complete logins (QQ 0 ms)", ours.get("logins"), rs256))
    slow = ours.get("slow_logins")
    if slow:
        lines.append(_row(f"  {slow['count_started']} logins at once (QQ 200 ms)", slow, None))
        lines.append(
            f"    upstream round trips per login: {slow['upstream_per_login']:.2f} "
            f"({', '.join(f'{k} {v}' for k, v in slow['upstream_requests'].items())}); "
            f"broker->QQ connections opened: {slow['upstream_connections']} "
            f"(at most {slow['upstream_connections_at_once']} at once)"
        )
    cpu = []
    for name, run in _broker_runs(ours):
        paths = run.get("server_paths") or {}
        shown = [f"{p} {v['thread_cpu_ms']:.2f}" for p, v in paths.items() if v["requests"] >= 10]
        if shown:
            cpu.append(f"    {name + ':':<22}" + ", ".join(shown))
    if cpu:
        lines += ["  broker CPU per request, in the request's thread (ms):", *cpu]
    if peer_tokens:
        lines += ["", f"peer: {peer.get('name', 'oidc-provider')} ({peer.get('setup', '')})",
                  HEADER]  # fmt: skip
        for alg, run in peer_tokens.items():
            lines.append(_row(f"  token {alg} (code redemption)", run, ceil["ceiling"].get(alg)))
        for name in ("userinfo", "jwks", "discovery"):
            lines.append(_row(f"  {name}", peer.get(name), bare))
    speed = results.get("speed") or {}
    if speed:
        low, high = min(speed.values()), max(speed.values())
        lines += ["", "machine speed (RS256 signatures/s on one core) before each phase: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in speed.items())
                  + f"; spread {high / low - 1:.0%}" if low else ""]  # fmt: skip
    memory = results.get("peak_rss_mb") or {}
    if memory:
        lines += ["", "peak memory (VmHWM, MiB): "
                  + ", ".join(f"{k} {v:.0f}" for k, v in memory.items())]  # fmt: skip
    return "\n".join(lines)
