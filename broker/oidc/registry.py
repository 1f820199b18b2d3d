"""Client lookup: the config's clients first, then those registered on the command line.

``qq-oidc-broker clients add`` stores a client in the database (``source: cli``), where
every instance sharing it finds the client without a restart. Why it is built this way:

* **The config wins.** A config client is answered from memory and never from the
  database, so an outage of the database cannot take configured clients down, and a
  database row can never shadow or weaken a client the operator wrote in the file.
* **A short cache per instance.** Stored clients are read at most once per
  :data:`CLIENT_CACHE_SECONDS` per client id (unknown ids too, so a stream of made-up
  ids cannot turn into a stream of queries); the cache is bounded. A client added or
  removed on the command line is therefore seen by every instance within that time.
* **Secrets are never cached.** A stored client's secret is checked against the digest
  in the database on every authentication, in constant time: ``clients rotate-secret``
  and ``clients remove`` refuse the old credentials at once, on every instance.
* **Same rules as the config.** A stored client is re-validated by
  :func:`broker.config.parse_client` against the running config each time it is
  loaded; one that no longer passes (say its algorithm was unpublished) is treated as
  unknown and logged, never half-used.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from broker.config import ClientConfig, Config, ConfigError, parse_client
from broker.oidc.models import Client
from broker.storage.base import ClientRecord, Store, digest

log = logging.getLogger("broker.oidc")

#: How long an instance trusts what it read about a stored client (or its absence).
CLIENT_CACHE_SECONDS: Final = 5.0
#: Client ids remembered per instance; the oldest are forgotten first.
MAX_CACHED_CLIENTS: Final = 1024
#: ``ClientRecord.source`` of clients registered with ``qq-oidc-broker clients add``.
STORED_SOURCE: Final = "cli"
#: Stands in for the secret while a stored confidential client is re-validated: only
#: its digest is kept, and the check that a secret is present must still pass.
_SECRET_PLACEHOLDER: Final = "x" * 43


class ClientLookup(Protocol):
    """What the provider asks: the client with this id, or None (a dict answers it too)."""

    def get(self, client_id: str, /) -> Client | None: ...


class StoredClient(Client):
    """A client registered in the database: its secret is checked against the stored digest."""

    def __init__(self, config: ClientConfig, store: Store) -> None:
        super().__init__(config)
        self._store = store
        self.source = STORED_SOURCE

    def check_client_secret(self, client_secret: str) -> bool:
        record = self._store.get_client(self.client_id)
        if record is None or record.source != STORED_SOURCE or record.secret_digest is None:
            return False
        return hmac.compare_digest(digest(client_secret), record.secret_digest)


def client_metadata(client: ClientConfig) -> dict[str, Any]:
    """The stored form of a client: its config keys as JSON, without id and secret.

    Unset options are left out, so a stored client picks up the defaults (and the
    upstream subject) of whichever config reads it, like a config entry would.
    """
    values = dataclasses.asdict(client)
    for key in ("client_id", "client_secret"):
        values.pop(key)
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in values.items()
        if value is not None
    }


def stored_client_config(record: ClientRecord, config: Config) -> ClientConfig:
    """A stored client as a :class:`ClientConfig` (no secret), checked like a config entry.

    Raises :class:`ConfigError` when the stored metadata does not pass the running config.
    """
    data: dict[str, Any] = {**record.metadata, "client_id": record.client_id}
    if record.secret_digest is not None:
        data["client_secret"] = _SECRET_PLACEHOLDER
    parsed = parse_client(data, config, source=f"stored client {record.client_id!r}")
    return dataclasses.replace(parsed, client_secret=None)


class ClientDirectory:
    """:class:`ClientLookup` over the config's clients and the store's ``cli`` clients."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        ttl: float = CLIENT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._store = store
        self._ttl = ttl
        self._clock = clock
        self._configured: Mapping[str, Client] = {c.client_id: Client(c) for c in config.clients}
        self._cache: OrderedDict[str, tuple[Client | None, float]] = OrderedDict()
        self._listed: tuple[tuple[ClientConfig, ...], float] | None = None
        self._lock = threading.Lock()

    def get(self, client_id: str, /) -> Client | None:
        configured = self._configured.get(client_id)
        if configured is not None:
            return configured
        now = self._clock()
        with self._lock:
            cached = self._cache.get(client_id)
            if cached is not None and cached[1] > now:
                return cached[0]
        # Read outside the lock: a slow database must not hold up lookups of other ids.
        record = self._store.get_client(client_id)
        client = self._client(record) if record is not None else None
        with self._lock:
            self._cache[client_id] = (client, now + self._ttl)
            self._cache.move_to_end(client_id)
            while len(self._cache) > MAX_CACHED_CLIENTS:
                self._cache.popitem(last=False)
        return client

    def stored_configs(self) -> tuple[ClientConfig, ...]:
        """Every usable stored client (for discovery); the same tuple while it is fresh."""
        now = self._clock()
        with self._lock:
            if self._listed is not None and self._listed[1] > now:
                return self._listed[0]
        configs = tuple(
            config
            for record in self._store.list_clients()
            if record.client_id not in self._configured
            and (config := self._config_of(record)) is not None
        )
        with self._lock:
            self._listed = (configs, now + self._ttl)
        return configs

    def _client(self, record: ClientRecord) -> Client | None:
        config = self._config_of(record)
        return None if config is None else StoredClient(config, self._store)

    def _config_of(self, record: ClientRecord) -> ClientConfig | None:
        if record.source != STORED_SOURCE:
            # A config client of another instance's config: this instance does not serve it.
            return None
        try:
            return stored_client_config(record, self._config)
        except ConfigError as err:
            log.warning("stored client ignored: %s", err)
            return None
