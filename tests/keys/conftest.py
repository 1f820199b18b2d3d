"""Key rings as instances see them: on a shared directory or a shared SQLite database,
with an injected clock so that refreshes and schedule boundaries need no sleeping."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from broker.config import KeysConfig, LifetimesConfig
from broker.keys import KeyRing
from broker.storage import SQLStore

T0 = 1_700_000_000
JWKS_MAX_AGE = 20  # → refresh_interval 10
PUBLISH_AHEAD = 100
ROTATION_INTERVAL = 1000
LIFETIMES = LifetimesConfig(id_token=60, access_token=60)
RETENTION = 120 + 300  # logout tokens (120 s) outlive these lifetimes; + clock skew
ALGS = ("RS256", "ES256")


def new_kek() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()


class FakeClock:
    """Both the wall clock and the monotonic timer of a ring."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Cluster:
    """Instances sharing one key store: ``mode`` is ``files`` or ``database``."""

    mode: str
    base: Path
    clock: FakeClock = field(default_factory=FakeClock)
    kek: str = field(default_factory=new_kek)
    stores: list[SQLStore] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"sqlite:///{self.base / 'x.sqlite3'}"

    def keys_config(self, kek: str | None = None, algorithms: tuple[str, ...] = ALGS) -> KeysConfig:
        return KeysConfig(
            dir=self.base / "keys",
            algorithm="RS256",
            algorithms=algorithms,
            storage=self.mode,
            encryption_key=(kek or self.kek) if self.mode == "database" else None,
            jwks_max_age=JWKS_MAX_AGE,
            rotation_interval=ROTATION_INTERVAL,
            publish_ahead=PUBLISH_AHEAD,
        )

    def store(self) -> SQLStore:
        store = SQLStore(self.url, pool_size=2, max_overflow=4)
        store.create_schema()
        self.stores.append(store)
        return store

    def ring(
        self,
        *,
        create: bool = True,
        kek: str | None = None,
        clock: FakeClock | None = None,
        algorithms: tuple[str, ...] = ALGS,
    ) -> KeyRing:
        """A new instance's ring (its own store connection in database mode)."""
        tick = clock or self.clock
        store = self.store() if self.mode == "database" else None
        config = self.keys_config(kek, algorithms)
        return KeyRing.from_config(config, LIFETIMES, store, create=create, clock=tick, timer=tick)

    def stored_kids(self) -> list[tuple[str, str]]:
        """(alg, kid) of every stored key, read behind the rings' backs."""
        if self.mode == "database":
            return sorted((r.alg, r.kid) for r in self.store().list_signing_keys())
        ring = KeyRing.from_config(self.keys_config(), LIFETIMES, create=False)
        return sorted((s.key.alg, s.key.kid) for s in ring.statuses(int(self.clock())))


@pytest.fixture(params=["files", "database"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    made = Cluster(request.param, tmp_path)
    yield made
    for store in made.stores:
        store.close()


Ring = Callable[..., KeyRing]
