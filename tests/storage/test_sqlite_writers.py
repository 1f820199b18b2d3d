"""SQLite's writers queue on the store's writer lock, across stores and processes.

The conformance suite shows what every backend stores; this is the SQLite-only part:
``server.workers`` runs several processes on one database file, and their writers must
wait on an ``flock`` (handed over at once) rather than in SQLite's busy handler, which
sleeps up to 100 ms between retries.
"""

from __future__ import annotations

import threading
from pathlib import Path

from broker.storage import SQLStore
from broker.storage.base import UserRecord


def test_a_writer_of_another_store_waits_for_the_lock_and_then_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    holder, writer = SQLStore(url), SQLStore(url)
    holder.create_schema()
    done = threading.Event()

    def write() -> None:
        writer.upsert_user(UserRecord("U-queued", None, {}, 1))
        done.set()

    # Two stores open the lock file separately, as two worker processes do: flock
    # excludes per open file, so this is the cross-process case without a fork.
    with holder._writer:  # the lock alone: no SQLite transaction is open
        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        assert not done.wait(0.5), "a write ran while another store held the writer lock"
    assert done.wait(30), "the queued write never ran after the lock was released"
    assert writer.get_user("U-queued") is not None
    assert (tmp_path / "broker.sqlite3.writer.lock").exists()
    holder.close()
    writer.close()


def test_the_lock_is_reentrant_within_a_thread(tmp_path: Path) -> None:
    store = SQLStore(f"sqlite:///{tmp_path / 'broker.sqlite3'}")
    store.create_schema()

    def nested() -> None:  # nested writes in one thread must not deadlock
        with store._writer, store._writer:
            store.upsert_user(UserRecord("U-nested", None, {}, 1))

    thread = threading.Thread(target=nested, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "a nested write deadlocked on the writer lock"
    assert store.get_user("U-nested") is not None
    store.close()


def test_an_in_memory_database_writes_without_a_lock_file() -> None:
    store = SQLStore("sqlite://")  # no path to put a lock file beside
    store.create_schema()
    store.upsert_user(UserRecord("U-mem", None, {}, 1))
    assert store.get_user("U-mem") is not None
    store.close()
