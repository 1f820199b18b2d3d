"""Performance benchmark: the broker against its ceiling and against a peer, in one run.

    .venv/bin/python bench/perf.py                       # ~6 minutes; prints the table
    .venv/bin/python bench/perf.py --seconds 5 --json perf.json --alg RS256,ES256

Needs ``wrk`` (Debian: ``apt-get install wrk``) and Node >= 20 with npm (the peer's
packages are installed into ``bench/peer/node_modules`` by ``npm ci`` on first use).

What runs, all on this machine, one after the other, each a separate OS process:

1. **Ceiling.** The raw signature rate of each algorithm on one core (the broker's key
   objects; :mod:`perf.ceiling`), and a bare endpoint behind the broker's own server
   (``broker.serving``, default threads and workers, one per core; :mod:`perf.bare`).
   The ceiling of an algorithm counts one bare request plus one signature per core:
   ``1 / (1/bare + 1/(sign * workers))``, the bare rate being that of all workers.
2. **Broker.** ``qq-oidc-broker serve`` on SQLite (the single-instance default) with
   ``rate_limits.enabled: false`` and the default threads and workers, the QQ emulator upstream
   with auto-login. First complete logins per second on the fresh database (every step,
   token request included); then the token endpoint, redeeming real codes, each minted
   beforehand by a complete login (authorize -> emulator -> /qq/callback) and sent
   once, as a confidential relying party sends it (client_secret_basic, PKCE verifier,
   redirect_uri); then userinfo, JWKS, discovery, and 500 logins at once with 200 ms at
   each QQ endpoint. Counters inside the server (:mod:`perf.instrument`) give
   private-key imports, client-authentication CPU and CPU per request per window.
3. **Peer.** panva's ``oidc-provider`` (``bench/peer``), one Node process, in-memory
   storage, same algorithms, same client authentication and PKCE, codes minted through
   its authorization endpoint and redeemed at its token endpoint with the same load.

Load: ``wrk`` for single-request endpoints, Node for browser flows (:mod:`perf.wrk`,
:mod:`perf.flows`). The same connection count for every server. Figures are printed
as a table with ratios to the ceiling and to the peer, then the targets of the issue
as PASS/FAIL lines; ``--json`` writes everything, including CPU per process and core.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from perf import ceiling, flows, instrument, procs, report, sample, wrk
from perf.procs import CLIENT_FOR_ALG, REDIRECT_URI

from broker.config import ServerConfig

#: Codes for the one-second warm-up (and rate estimate) before each token measurement:
#: more than either server redeems in a second, so the estimate is a real rate.
WARM_CODES = {"broker": 800, "peer": 4000}
#: Minted codes per expected redemption: a margin so the window never runs dry. Node's
#: first second runs before its JIT has warmed up, so the peer's estimate is low.
CODE_MARGIN = {"broker": 1.6, "peer": 2.2}
SLOW_LOGINS = 500
SLOW_LATENCY_MS = 200


class Bench:
    """One run: options, scratch directory, and the results as they come in."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.logs = work / "logs"
        self.logs.mkdir()
        self.algs: list[str] = args.alg
        self.results: dict[str, Any] = {}

    def say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ shared steps

    def endpoint(
        self, url: str, watch: Mapping[str, int], headers: Mapping[str, str] | None = None,
        counters: tuple[int, Path] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """A GET endpoint under wrk for ``--seconds`` (after a 1 s warm-up)."""
        connections = self.args.connections
        wrk.run(url, seconds=1, connections=connections, headers=headers)
        before = instrument.read(*counters) if counters else None
        figure, _ = wrk.run(
            url, seconds=self.args.seconds, connections=connections, headers=headers, watch=watch
        )
        result = figure.as_dict()
        if counters and before is not None:
            seen = instrument.window(before, instrument.read(*counters))
            result["private_key_imports"] = seen["private_key_imports"]
            result["server_paths"] = seen["server_paths"]
        return result

    def token_endpoint(
        self, issuer: str, alg: str, secret: str, watch: Mapping[str, int], *, peer: bool,
        counters: tuple[int, Path] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Redeem pre-minted codes at ``issuer``/token for ``--seconds``.

        A short warm-up run estimates the rate, so that enough codes are minted for the
        window; if the window still runs out of codes, it is measured again with twice
        as many (a figure with codes missing would be meaningless).
        """
        client_id = CLIENT_FOR_ALG[alg]
        auth = "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()
        connections, threads = self.args.connections, min(2, self.args.connections)

        def measure(count: int, seconds: float, measured: bool) -> tuple[wrk.Figure, Any, Any]:
            codes = flows.scratch(self.work, f"codes-{alg}-")
            minted = flows.mint(issuer, client_id, count, codes, peer=peer)
            self.say(f"  minted {count} codes ({minted['rate']:.0f} logins/s)")
            before = instrument.read(*counters) if counters and measured else None
            figure, raw = wrk.run(
                f"{issuer}/token",
                seconds=seconds,
                connections=connections,
                threads=threads,
                script_args=wrk.codes_args(codes, threads, "/token", auth, REDIRECT_URI),
                watch=watch if measured else None,
            )
            after = instrument.read(*counters) if counters and measured else None
            codes.unlink()
            return figure, raw, (before, after)

        warm_codes = WARM_CODES["peer" if peer else "broker"]
        warm, raw, _ = measure(warm_codes, 1, measured=False)
        # Ran out within the second: faster than that, so guess well above it.
        estimate = warm.rate if not raw["exhausted"] else 2.5 * warm_codes
        margin = CODE_MARGIN["peer" if peer else "broker"]
        count = int(estimate * self.args.seconds * margin) + 100
        for _attempt in range(3):
            figure, raw, (before, after) = measure(count, self.args.seconds, measured=True)
            if not raw["exhausted"]:
                break
            self.say(f"  {count} codes ran out; measuring again with twice as many")
            count *= 2
        result = figure.as_dict()
        result["codes_ran_out"] = int(raw["exhausted"])
        if before is not None and after is not None:
            seen = instrument.window(before, after)
            cpu = seen["process_cpu_s"]
            result["private_key_imports"] = seen["private_key_imports"]
            result["server_paths"] = seen["server_paths"]
            secret_cpu = after["secret_check_cpu_s"] - before["secret_check_cpu_s"]
            auth_cpu = after["client_auth_cpu_s"] - before["client_auth_cpu_s"]
            result["server_cpu_ms_per_request"] = 1000 * cpu / max(1, figure.requests)
            result["secret_check_share"] = secret_cpu / cpu if cpu else None
            result["client_auth_share"] = auth_cpu / cpu if cpu else None
        return result

    def access_token(self, issuer: str, alg: str, secret: str, *, peer: bool) -> str:
        """One real access token (a login, then the token request), for userinfo."""
        codes = flows.scratch(self.work, "one-code-")
        flows.mint(issuer, CLIENT_FOR_ALG[alg], 1, codes, peer=peer, concurrency=1)
        code, verifier = codes.read_text().split()[:2]
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT_URI,
            "code_verifier": verifier,
        }
        body = urllib.parse.urlencode(form).encode()
        basic = base64.b64encode(f"{CLIENT_FOR_ALG[alg]}:{secret}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - our own 127.0.0.1 server
            f"{issuer}/token",
            data=body,
            headers={
                "Authorization": f"Basic {basic}",
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            token: str = json.loads(response.read())["access_token"]
        return token

    def probe_speed(self, phase: str) -> None:
        """The machine's speed at the start of a phase: one core's RS256 signatures in a
        second. A shared machine's speed drifts; phases measured at different speeds
        make ratios between them less exact, and the report says by how much."""
        rate = ceiling.signing_rates("RS256", seconds=1.0)["sign"]
        self.results.setdefault("speed", {})[phase] = rate
        self.say(f"machine speed before {phase}: {rate:.0f} RS256 signatures/s on one core")

    # ------------------------------------------------------------------ phases

    def run_ceiling(self) -> None:
        signing = {}
        for alg in ("RS256", "ES256", "EdDSA"):
            signing[alg] = ceiling.signing_rates(alg, seconds=min(3.0, self.args.seconds / 3))
            self.say(f"sign {alg}: {signing[alg]['sign']:.0f}/s on one core")
        bare: dict[str, Any] = {}
        for kind in ("wsgi", "flask"):
            port = procs.free_port()
            argv = [sys.executable, str(procs.PERF / "bare.py"), "--port", str(port)]
            url = f"http://127.0.0.1:{port}"
            with procs.started(f"bare-{kind}", [*argv, "--app", kind], url, "/healthz",
                               self.logs) as server:  # fmt: skip
                bare[kind] = self.endpoint(f"{url}/healthz", {"server": server.pid})
                bare[kind]["peak_rss_mb"] = sample.peak_rss_mb(server.pid)
            self.say(f"bare endpoint ({kind}): {bare[kind]['rate']:.0f}/s")
        # The bare server runs the default workers, one per core: signatures spread the same.
        workers = ServerConfig().workers
        self.results["ceiling"] = {
            "workers": workers,
            "signing": signing,
            "bare_wsgi": bare["wsgi"],
            "bare_flask": bare["flask"],
            "ceiling": {
                alg: report.ceiling_rate(bare["wsgi"]["rate"], rates["sign"] * workers)
                for alg, rates in signing.items()
            },
        }
        self.results.setdefault("peak_rss_mb", {})["bare server"] = bare["wsgi"]["peak_rss_mb"]

    def run_broker(self) -> None:
        ours: dict[str, Any] = {"token": {}}
        self.results["broker"] = ours
        workdir = self.work / "broker"
        workdir.mkdir()
        with procs.broker(workdir, self.logs, self.algs) as setup:
            counters = (setup.broker.pid, setup.counters)
            watch = {"broker": setup.broker.pid, "emulator": setup.emulator.pid}
            # First, on a fresh database: every minted code leaves a login row behind, and
            # /authorize scans that table (see README, Performance).
            self.say("broker complete logins (QQ at 0 ms)")
            ours["logins"] = self.logins(setup, watch, counters)
            self.say(f"  {ours['logins']['rate']:.0f} logins/s")
            for alg in self.algs:
                self.say(f"broker token endpoint {alg}")
                ours["token"][alg] = self.token_endpoint(
                    setup.issuer, alg, setup.client_secret, watch, peer=False, counters=counters
                )
                self.say(f"  {ours['token'][alg]['rate']:.0f}/s")
            token = self.access_token(setup.issuer, self.algs[0], setup.client_secret, peer=False)
            for name, path, headers in (
                ("userinfo", "/userinfo", {"Authorization": f"Bearer {token}"}),
                ("jwks", "/jwks.json", None),
                ("discovery", "/.well-known/openid-configuration", None),
            ):
                self.say(f"broker {name}")
                ours[name] = self.endpoint(setup.issuer + path, watch, headers, counters)
            self.say(f"broker: {SLOW_LOGINS} logins at once, QQ at {SLOW_LATENCY_MS} ms")
            ours["slow_logins"] = self.slow_logins(setup, watch)
            memory = self.results.setdefault("peak_rss_mb", {})
            memory["broker"] = sample.peak_rss_mb(setup.broker.pid)
            memory["emulator"] = sample.peak_rss_mb(setup.emulator.pid)

    def logins(
        self, setup: procs.BrokerSetup, watch: Mapping[str, int], counters: tuple[int, Path]
    ) -> dict[str, Any]:
        config = {
            "mode": "logins",
            "issuer": setup.issuer,
            "client_id": CLIENT_FOR_ALG[self.algs[0]],
            "client_secret": setup.client_secret,
            "concurrency": self.args.browsers,
        }
        flows.run({**config, "seconds": 2})  # warm-up
        before = instrument.read(*counters)
        result = flows.run({**config, "seconds": self.args.seconds}, watch=watch)
        seen = instrument.window(before, instrument.read(*counters))
        usage = result.pop("usage")
        return {
            **{k: result[k] for k in ("rate", "p50_ms", "p99_ms", "count", "errors")},
            "requests": 3 * result["count"],  # authorize, callback, token at the broker
            "first_errors": result["first_errors"],
            "usage": usage.as_dict(),
            "private_key_imports": seen["private_key_imports"],
            "server_paths": seen["server_paths"],
        }

    def slow_logins(self, setup: procs.BrokerSetup, watch: Mapping[str, int]) -> dict[str, Any]:
        procs.set_latency(setup, SLOW_LATENCY_MS)
        procs.clear_emulator_requests(setup)
        port = int(setup.emulator.url.rsplit(":", 1)[1])
        config = {
            "mode": "burst",
            "issuer": setup.issuer,
            "client_id": CLIENT_FOR_ALG[self.algs[0]],
            "client_secret": setup.client_secret,
            "count": SLOW_LOGINS,
            "timeout_s": 300,
        }
        try:
            with sample.ConnectionWatch(setup.broker.pid, port) as connections:
                result = flows.run(config, watch=watch)
        finally:
            procs.set_latency(setup, 0)
        logged = Counter(entry["endpoint"] for entry in procs.emulator_requests(setup))
        upstream = sum(n for endpoint, n in logged.items() if endpoint != "authorize")
        usage = result.pop("usage")
        return {
            **{k: result[k] for k in ("rate", "p50_ms", "p99_ms", "max_ms", "count", "errors")},
            "count_started": SLOW_LOGINS,
            "latency_ms": SLOW_LATENCY_MS,
            "elapsed_s": result["elapsed_s"],
            "first_errors": result["first_errors"],
            "upstream_requests": dict(sorted(logged.items())),
            "upstream_per_login": upstream / max(1, result["count"]),
            "upstream_connections": len(connections.seen),
            "upstream_connections_at_once": connections.most_at_once,
            "usage": usage.as_dict(),
        }

    def run_peer(self) -> None:
        ensure_peer_packages()
        port, secret = procs.free_port(), os.urandom(24).hex()
        config = {"port": port, "secret": secret, "redirect_uri": REDIRECT_URI, "algs": self.algs}
        url = f"http://127.0.0.1:{port}"
        argv = [flows.node(), str(procs.PEER / "provider.mjs"), json.dumps(config)]
        peer: dict[str, Any] = {
            "name": f"oidc-provider {peer_version()}",
            "setup": "one Node process (codes live in its memory), in-memory adapter, "
            "signing on libuv's thread pool",
            "token": {},
        }
        self.results["peer"] = peer
        with procs.started("peer", argv, url, "/.well-known/openid-configuration", self.logs,
                           cwd=procs.PEER) as server:  # fmt: skip
            watch = {"peer": server.pid}
            for alg in self.algs:
                self.say(f"peer token endpoint {alg}")
                peer["token"][alg] = self.token_endpoint(url, alg, secret, watch, peer=True)
                self.say(f"  {peer['token'][alg]['rate']:.0f}/s")
            token = self.access_token(url, self.algs[0], secret, peer=True)
            for name, path, headers in (
                ("userinfo", "/me", {"Authorization": f"Bearer {token}"}),
                ("jwks", "/jwks", None),
                ("discovery", "/.well-known/openid-configuration", None),
            ):
                self.say(f"peer {name}")
                peer[name] = self.endpoint(url + path, watch, headers)
            self.results.setdefault("peak_rss_mb", {})["peer"] = sample.peak_rss_mb(server.pid)


def ensure_peer_packages() -> None:
    if (procs.PEER / "node_modules" / "oidc-provider").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed (Debian: apt-get install nodejs npm)")
    print("installing the peer: npm ci in bench/peer", file=sys.stderr, flush=True)
    subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=procs.PEER, check=True)  # noqa: S603


def peer_version() -> str:
    package = procs.PEER / "node_modules" / "oidc-provider" / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def machine() -> dict[str, Any]:
    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    node = subprocess.run([flows.node(), "--version"], capture_output=True, text=True).stdout  # noqa: S603
    return {
        "cpu": model,
        "cores": os.cpu_count() or 1,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": node.strip(),
        "load_before": os.getloadavg(),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10, help="per measured window [10]")
    parser.add_argument(
        "--alg", default="RS256,ES256", help="token endpoint algorithms, RS256 first [RS256,ES256]"
    )
    parser.add_argument(
        "--connections", type=int, default=8, help="wrk connections, every server [8]"
    )
    parser.add_argument(
        "--browsers", type=int, default=16, help="concurrent browsers for logins/s [16]"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip oidc-provider")
    parser.add_argument("--json", help="also write every figure to this file")
    args = parser.parse_args(argv)
    args.alg = [a.strip() for a in args.alg.split(",") if a.strip()]
    unknown = [a for a in args.alg if a not in CLIENT_FOR_ALG]
    if unknown or not args.alg:
        parser.error(f"--alg: choose from {', '.join(CLIENT_FOR_ALG)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="EdDSA is deprecated")
    if not wrk.available():
        raise SystemExit("wrk is not installed (Debian: apt-get install wrk)")
    flows.node()
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qq-oidc-perf-")))
        bench = Bench(args, work)
        bench.results["machine"] = machine()
        bench.results["settings"] = {
            "seconds": args.seconds,
            "algorithms": args.alg,
            "connections": args.connections,
            "browsers": args.browsers,
            "command": "bench/perf.py " + " ".join(sys.argv[1:] if argv is None else argv),
        }
        began = time.monotonic()
        try:
            bench.probe_speed("ceiling")
            bench.run_ceiling()
            bench.probe_speed("broker")
            bench.run_broker()
            if not args.no_peer:
                bench.probe_speed("peer")
                bench.run_peer()
            bench.probe_speed("end")
        except BaseException:
            print(f"logs kept in {work / 'logs'}", file=sys.stderr)
            stack.pop_all()  # keep the scratch directory for the post-mortem
            raise
        results = bench.results
        results["machine"]["load_after"] = os.getloadavg()
        results["elapsed_s"] = round(time.monotonic() - began, 1)
    found = report.targets(results)
    results["targets"] = [target.as_dict() for target in found]
    m = results["machine"]
    print(
        f"\n{m['cpu']}, {m['cores']} cores; Python {m['python']}, Node {m['node']}; "
        f"{args.seconds:.0f} s per figure, {args.connections} connections; "
        f"load average {m['load_before'][0]:.1f} before, {m['load_after'][0]:.1f} after\n"
    )
    print(report.table(results))
    print()
    for target in found:
        print(target.line())
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
