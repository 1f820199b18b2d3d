"""Nothing lost (issue point 6): instances die or stop, PostgreSQL goes away and comes back.

The balancer here retries a refused connection on the next instance, as a
health-checked load balancer would; that is all the help the broker gets. A login
lives in PostgreSQL between its steps, so any surviving instance must be able to
finish it. Time bounds are wide on purpose: these tests check what happens, not how
fast (startup and CI noise); a request that hangs is what they catch.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import requests

from tests.scale.cluster import Cluster, Login, TokenSet, wait_until

CLUSTER_OPTIONS = {"instances": 3, "retry_on_refused": True, "shutdown_timeout": 30}
#: How long QQ's token endpoint takes while a callback is in flight: below the broker's
#: 5 s upstream read timeout, so the callback ends normally when it is allowed to finish.
SLOW_TOKEN_MS = 3000
#: Upper bound for any single request while PostgreSQL is unreachable (connect_timeout
#: is 5 s; the margin is for a loaded machine, the bound is about not hanging).
OUTAGE_BOUND = 30.0
MARGIN = 20.0


def refused(port: int) -> bool:
    """Whether a connection to 127.0.0.1:``port`` is refused right now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def test_sigkill_mid_login_every_login_finishes_on_the_survivors(cluster: Cluster) -> None:
    balancer, victim = cluster.balancer, cluster.brokers[0]
    openid = cluster.emulator.user(cluster.user)["openid"]
    logins = [Login(cluster) for _ in range(4)]
    with balancer.pinned(0):
        callbacks = [login.at_qq(login.authorize()) for login in logins]  # users are at QQ

    victim.kill()
    assert victim.wait(timeout=MARGIN) == -signal.SIGKILL

    mark = balancer.mark()
    jwks = cluster.jwks()
    for login, callback in zip(logins, callbacks, strict=True):
        code = login.callback(callback)
        tokens = TokenSet.from_response(login.redeem(code))
        claims = cluster.verify(tokens.id_token, jwks, nonce=login.nonce)
        assert claims["sub"] == openid
        assert cluster.userinfo(tokens.access_token).json()["sub"] == openid

    after = balancer.since(mark)
    assert all(hop.backend in (1, 2) and hop.status < 500 for hop in after), after
    routes = {hop.route for hop in after}
    assert {"/qq/callback", "/token", "/userinfo"} <= routes
    # Round-robin did send requests to the dead instance; the balancer moved them on.
    assert any(0 in hop.refused for hop in after), after


def test_sigterm_drains_the_callback_in_flight(cluster: Cluster) -> None:
    balancer, emulator, victim = cluster.balancer, cluster.emulator, cluster.brokers[0]
    login = Login(cluster)
    callback = login.at_qq(login.authorize())
    emulator.clear_requests()
    emulator.control(latency_ms={"token": SLOW_TOKEN_MS})
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["response"] = login.get(callback)
        except requests.RequestException as err:
            outcome["error"] = err

    balancer.pin(0)
    in_flight = threading.Thread(target=run, daemon=True)
    in_flight.start()
    # In flight once instance 0 has called QQ's token endpoint (logged before the delay).
    wait_until(
        lambda: any(r["endpoint"] == "token" for r in emulator.requests()),
        MARGIN,
        "the callback to reach QQ's token endpoint",
    )
    balancer.pin(None)
    victim.terminate()

    wait_until(lambda: refused(victim.port), MARGIN, "instance 0 to stop accepting")
    assert victim.alive and in_flight.is_alive(), "drain ended before the request did"
    mark = balancer.mark()
    for _ in range(6):  # new requests: round-robin, and the stopping instance refuses
        response = requests.get(f"{cluster.issuer}/.well-known/openid-configuration", timeout=10)
        assert response.status_code == 200
    fresh = balancer.since(mark)
    assert all(hop.backend in (1, 2) for hop in fresh), fresh

    in_flight.join(timeout=SLOW_TOKEN_MS / 1000 + MARGIN)
    assert not in_flight.is_alive()
    assert "error" not in outcome, outcome.get("error")
    code = login.code_from(outcome["response"])  # 302 to the RP with state, iss and a code
    assert balancer.hops("/qq/callback")[-1].backend == 0
    emulator.control(latency_ms=0)
    with balancer.pinned(1):
        tokens = TokenSet.from_response(login.redeem(code))
    cluster.verify(tokens.id_token, cluster.jwks(), nonce=login.nonce)

    assert victim.wait(timeout=cluster.shutdown_timeout + MARGIN) == 0
    assert "Traceback" not in victim.log_text()


def is_ready(cluster: Cluster, index: int) -> bool:
    return cluster.instance_get(index, "/readyz").status_code == 200


def timed(call: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
    """The response and how many seconds it took."""
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_postgresql_outage_is_a_clean_503_and_heals_without_restart(cluster: Cluster) -> None:
    balancer = cluster.balancer
    pids = [broker.pid for broker in cluster.brokers]
    before = Login(cluster)
    code = before.to_code()  # the RP has a code when the database goes away

    cluster.pg.cut()
    try:
        for index in range(cluster.count):
            balancer.pin(index)
            token, took = timed(partial(before.redeem, code))
            assert took < OUTAGE_BOUND, f"/token took {took:.1f} s"
            assert token.status_code == 503, token.text[:300]
            assert token.headers["Content-Type"].startswith("application/json")
            assert token.json() == {"error": "temporarily_unavailable"}

            login = Login(cluster)
            page, took = timed(partial(login.get, login.authorize_url()))
            assert took < OUTAGE_BOUND, f"/authorize took {took:.1f} s"
            assert page.status_code == 503, page.text[:300]
            assert page.headers["Content-Type"].startswith("text/html")
            assert "Location" not in page.headers
            assert "Traceback" not in page.text and "psycopg" not in page.text

            ready, took = timed(partial(cluster.instance_get, index, "/readyz"))
            assert took < OUTAGE_BOUND, f"/readyz took {took:.1f} s"
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            assert cluster.instance_get(index, "/healthz").status_code == 200
        assert cluster.pg.rejected > 0  # the brokers really tried to reconnect
    finally:
        cluster.pg.restore()
    balancer.pin(None)

    # Back by themselves: every instance ready again, no process restarted.
    for index in range(cluster.count):
        wait_until(
            partial(is_ready, cluster, index),
            OUTAGE_BOUND,
            f"instance {index} to be ready again",
            interval=0.2,
        )
    assert [broker.pid for broker in cluster.brokers] == pids
    assert all(broker.alive for broker in cluster.brokers)

    # Nothing lost: the code issued before the outage was not burnt by the failed tries.
    tokens = TokenSet.from_response(before.redeem(code))
    cluster.verify(tokens.id_token, cluster.jwks(), nonce=before.nonce)
    # And a whole new login works on every instance (a few retries allowed, bounded).
    for index in range(cluster.count):
        balancer.pin(index)
        tokens = complete_with_retries(cluster)
        assert cluster.userinfo(tokens.access_token).status_code == 200
    for broker in cluster.brokers:
        assert "Traceback" not in broker.log_text()


def complete_with_retries(cluster: Cluster, attempts: int = 5) -> TokenSet:
    """A full login; a failed attempt (say a connection the pool had not yet replaced) is
    retried a few times, with a pause, before the test gives up."""
    failures: list[str] = []
    for _ in range(attempts):
        try:
            return Login(cluster).complete()
        except AssertionError as err:
            failures.append(str(err)[:200])
            time.sleep(1)
    raise AssertionError(f"no login after {attempts} attempts: {failures}")
