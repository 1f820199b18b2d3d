"""Any instance serves any step (issue point 3), with real processes on one PostgreSQL.

Three ``serve`` processes share nothing but the database (and, in ``files`` key mode,
the keys directory); the balancer in front of them decides, per request, which one
answers, and records it, so each test can prove its steps really crossed instances.
The races release two threads with a barrier, each request routed to a different
instance, so the single-use rules (one code, one refresh token) are enforced by
PostgreSQL and not by a process's memory.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from itertools import pairwise

import requests

from tests.flows import query_of
from tests.scale.cluster import Cluster, Login, TokenSet

CLUSTER_OPTIONS = {"instances": 3}
#: Races per test: each interleaving must follow the rule, and one run may hit only one.
ROUNDS = 6


def race(
    cluster: Cluster, backends: list[int], call: Callable[[], requests.Response]
) -> list[requests.Response]:
    """Run ``call`` once per backend at the same moment, each on a different instance."""
    barrier = threading.Barrier(len(backends))
    responses: list[requests.Response] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def attempt() -> None:
        try:
            barrier.wait(timeout=10)
            response = call()
        except BaseException as err:  # reported below, in the test's thread
            with lock:
                errors.append(err)
            return
        with lock:
            responses.append(response)

    cluster.balancer.next_backends(backends)
    threads = [threading.Thread(target=attempt) for _ in backends]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(responses) == len(backends)
    return responses


def test_a_login_crosses_instances_at_every_step(cluster: Cluster) -> None:
    """authorize, callback, token, userinfo, refresh, logout: never twice in a row on the
    same instance, and each on another instance than the one that created its state."""
    balancer, login = cluster.balancer, Login(cluster)
    openid = cluster.emulator.user(cluster.user)["openid"]
    # Each step on another instance than the step that created the state it consumes:
    # login transaction (authorize -> callback), code (callback -> token), tokens
    # (token -> userinfo, refresh), SSO session (callback -> logout).
    plan = [
        ("/authorize", 0),
        ("/qq/callback", 1),
        ("/token", 2),
        ("/jwks.json", 0),
        ("/userinfo", 0),
        ("/token", 1),
        ("/logout", 2),
    ]

    balancer.pin(0)
    to_qq = login.authorize()
    back = login.at_qq(to_qq)
    balancer.pin(1)
    code = login.callback(back)
    balancer.pin(2)
    tokens = TokenSet.from_response(login.redeem(code))
    balancer.pin(0)  # the JWKS comes from an instance that did not sign
    jwks = cluster.jwks()
    claims = cluster.verify(tokens.id_token, jwks, nonce=login.nonce)
    assert claims["sub"] == openid and claims["iss"] == cluster.issuer
    info = cluster.userinfo(tokens.access_token)
    assert info.status_code == 200 and info.json()["sub"] == openid
    balancer.pin(1)
    refreshed = TokenSet.from_response(cluster.refresh(tokens.refresh_token or ""))
    assert refreshed.refresh_token not in (None, tokens.refresh_token)  # rotated
    new_claims = cluster.verify(refreshed.id_token, jwks)
    for name in ("sub", "sid", "auth_time"):
        assert new_claims[name] == claims[name], name
    balancer.pin(2)
    bye = login.logout(refreshed.id_token, state="bye-scale")
    assert bye.status_code == 302, bye.text[:300]
    assert bye.headers["Location"].startswith(cluster.client.post_logout_redirect_uri)
    assert query_of(bye.headers["Location"])["state"] == "bye-scale"

    served = [(hop.route, hop.backend) for hop in balancer.hops()]
    assert served == plan
    steps = [backend for route, backend in served if route != "/jwks.json"]
    assert all(a != b for a, b in pairwise(steps)), served
    assert set(steps) == {0, 1, 2}

    # The logout on instance 2 ended everything, as seen from the other instances.
    balancer.pin(0)
    assert cluster.userinfo(refreshed.access_token).status_code == 401
    again = cluster.refresh(refreshed.refresh_token or "")
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    balancer.pin(1)
    silent = login.get(login.authorize_url(prompt="none"))
    assert silent.status_code == 302
    assert query_of(silent.headers["Location"]).get("error") == "login_required"


def test_every_instance_publishes_the_same_keys_and_metadata(cluster: Cluster) -> None:
    """A relying party may fetch discovery and JWKS from one instance and verify a token
    signed by another: every instance must say exactly the same thing."""
    jwks = [cluster.instance_get(i, "/jwks.json") for i in range(cluster.count)]
    meta = [cluster.instance_get(i, "/.well-known/openid-configuration") for i in range(3)]
    assert all(r.status_code == 200 for r in jwks + meta)
    assert all(r.json() == jwks[0].json() for r in jwks)
    assert all(r.json() == meta[0].json() for r in meta)
    assert jwks[0].json()["keys"] and meta[0].json()["issuer"] == cluster.issuer
    assert meta[0].json()["jwks_uri"] == f"{cluster.issuer}/jwks.json"
    on_disk = sorted(p.name for p in cluster.workdir.glob("keys*/*") if p.name != ".lock")
    if cluster.key_mode == "database":
        # Each instance has a keys directory of its own: agreement came from PostgreSQL.
        assert on_disk == [], on_disk
    else:
        assert any(name.endswith(".pem") for name in on_disk), on_disk  # the shared directory


def test_two_instances_racing_for_one_code_one_wins_and_the_replay_revokes(
    cluster: Cluster,
) -> None:
    """RFC 6749 §4.1.2: a code is used once, and a second use revokes what it issued.

    The product's rule (broker/oidc/grants.py ``query_authorization_code``, RFC 9700
    §4.2.4): the redemption that loses finds the code used and revokes the tokens issued
    from it, so the winner's tokens must end up rejected everywhere. The race is run
    several times because the interleavings differ from run to run; every one must
    follow the rule.
    """
    outcomes = []
    for _ in range(ROUNDS):
        cluster.balancer.reset()
        login = Login(cluster)
        code = login.to_code()
        responses = race(cluster, [0, 1], partial(login.redeem, code))

        assert {hop.backend for hop in cluster.balancer.hops("/token")} == {0, 1}
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200, 400], [(r.status_code, r.text) for r in responses]
        loser = next(r for r in responses if r.status_code == 400)
        assert loser.json()["error"] == "invalid_grant"
        tokens = TokenSet.from_response(next(r for r in responses if r.status_code == 200))
        cluster.verify(tokens.id_token, cluster.jwks(), nonce=login.nonce)  # a real token...
        cluster.balancer.pin(2)  # ...asked of neither racer: what counts is the database
        outcomes.append(
            {
                "userinfo": cluster.userinfo(tokens.access_token).status_code,
                "refresh": cluster.refresh(tokens.refresh_token or "").status_code,
            }
        )
    assert outcomes == [{"userinfo": 401, "refresh": 400}] * ROUNDS, outcomes


def test_two_instances_racing_for_one_refresh_token_revoke_the_family(
    cluster: Cluster,
) -> None:
    """RFC 9700 §4.14.2: a refresh token used twice means replay; the family is revoked.

    Exactly one racer gets new tokens; the other counts as reuse, so those new tokens
    (and the original access token) must be dead too. Several rounds, as above.
    """
    outcomes = []
    for _ in range(ROUNDS):
        cluster.balancer.reset()
        tokens = Login(cluster).complete()
        assert tokens.refresh_token
        cluster.balancer.reset()
        responses = race(cluster, [1, 2], partial(cluster.refresh, tokens.refresh_token))

        assert {hop.backend for hop in cluster.balancer.hops("/token")} == {1, 2}
        statuses = sorted(response.status_code for response in responses)
        assert statuses == [200, 400], [(r.status_code, r.text) for r in responses]
        loser = next(r for r in responses if r.status_code == 400)
        assert loser.json()["error"] == "invalid_grant"
        winner = TokenSet.from_response(next(r for r in responses if r.status_code == 200))
        assert winner.refresh_token

        cluster.balancer.pin(0)  # neither racer: the revocation is in the database
        outcomes.append(
            {
                "new_refresh": cluster.refresh(winner.refresh_token).status_code,
                "new_access": cluster.userinfo(winner.access_token).status_code,
                "old_access": cluster.userinfo(tokens.access_token).status_code,
            }
        )
    expected = {"new_refresh": 400, "new_access": 401, "old_access": 401}
    assert outcomes == [expected] * ROUNDS, outcomes
