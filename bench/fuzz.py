"""The broker's HTTP fuzz as a long-running command (CI runs a short version in tests/fuzz).

    python bench/fuzz.py --minutes 10              # random seed, printed first
    python bench/fuzz.py --seed 1234 --minutes 1   # the same requests again
    python bench/fuzz.py --seed 1234 --index 817   # replay one request, show the answer

Starts its own QQ emulator and broker (tests.conftest.start_pair) in this process, with
one extra ``private_key_jwt`` client so client assertions are parsed too, then sends
random requests (tests/fuzz/engine.py) until the time is up. Prints requests/s, status
counts, memory growth and every failure with its seed and index. Exit status 1 on any
failure (5xx outside the known issues, traceback or config value in an answer, no
answer, or RSS growth over --max-rss-mb).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import RP, client_definitions, start_pair  # noqa: E402
from tests.fuzz import engine  # noqa: E402


def private_key_jwt_client() -> dict[str, object]:
    from joserfc.jwk import RSAKey

    public = RSAKey.generate_key(2048).as_dict(private=False)
    return {
        "client_id": "rp-pkjwt",
        "token_endpoint_auth_method": "private_key_jwt",
        "redirect_uris": [f"{RP}/pkjwt/callback"],
        "jwks": {"keys": [public]},
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run [10]")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: random)")
    parser.add_argument("--index", type=int, default=None, help="replay this one request")
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients [4]")
    parser.add_argument("--max-requests", type=int, default=10**9, help="request budget")
    parser.add_argument(
        "--max-rss-mb", type=int, default=200, help="allowed RSS growth in MiB [200]"
    )
    return parser.parse_args(argv)


def replay(material: engine.Material, seed: int, index: int) -> int:
    request = engine.generate(material, seed, index)
    print(request.describe(2000))
    outcome = engine.send(material, request)
    print(f"-> {outcome.status} in {outcome.elapsed:.3f} s {outcome.error}")
    print(outcome.raw[:3000].decode("utf-8", "replace"))
    found = engine.problems(outcome, material.forbidden)
    tag = engine.known_issue(outcome)
    print("known issue: " + tag if tag else ("problems: " + "; ".join(found) if found else "ok"))
    return 1 if found and not tag else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed={seed}", flush=True)
    with tempfile.TemporaryDirectory(prefix="qq-broker-fuzz-") as tmp:
        pair = start_pair(Path(tmp), clients=[*client_definitions(), private_key_jwt_client()])
        try:
            material = engine.gather(pair.broker, pair.emulator)
            if args.index is not None:
                return replay(material, seed, args.index)
            last = [time.monotonic()]

            def progress(report: engine.Report) -> None:
                if time.monotonic() - last[0] >= 10:
                    last[0] = time.monotonic()
                    rate = report.sent / max(report.seconds, 1e-9)
                    print(
                        f"  {report.seconds:6.0f} s  {report.sent} requests ({rate:.0f}/s), "
                        f"{report.failure_count} failure(s), RSS {engine.rss_bytes() >> 20} MiB",
                        flush=True,
                    )

            report = engine.run(
                material,
                seed=seed,
                max_requests=args.max_requests,
                max_seconds=args.minutes * 60,
                workers=args.workers,
                emulator=pair.emulator,
                keep_failures=200,
                progress=progress,
            )
        finally:
            pair.stop()
    print(report.summary())
    print("paths: " + json.dumps(dict(report.paths.most_common(40))))
    print("tags: " + json.dumps(dict(report.tags.most_common(40))))
    too_big = report.rss_growth > args.max_rss_mb << 20
    if too_big:
        print(f"FAIL seed={seed}: RSS grew {report.rss_growth >> 20} MiB (> {args.max_rss_mb})")
    return 1 if report.failure_count or too_big else 0


if __name__ == "__main__":
    sys.exit(main())
