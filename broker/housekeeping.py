"""Periodic jobs every instance runs in the background: purging expired rows, key rotation.

Each job is written so that running it on every instance at once is safe (the purge
deletes in small batches and skips rows another instance holds; rotation takes a
database lease), so there is no leader to elect and nothing to configure per
instance. A failing job is logged and retried at its next turn; it never stops the
thread or the server.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("broker.housekeeping")


@dataclass(frozen=True)
class Job:
    name: str
    interval: float  # seconds; <= 0 disables the job
    run: Callable[[int], object]  # called with the current Unix time


class Housekeeper:
    """One daemon thread running :class:`Job` s at their intervals (with jitter, so that
    instances started together do not purge in lockstep)."""

    def __init__(self, jobs: list[Job], *, clock: Callable[[], float] = time.time) -> None:
        self._jobs = [job for job in jobs if job.interval > 0]
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._jobs and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def run_once(self) -> None:
        for job in self._jobs:
            self._run(job)

    def _loop(self) -> None:
        due = {job.name: time.monotonic() + random.uniform(0, job.interval) for job in self._jobs}  # noqa: S311 - jitter, not a secret
        while not self._stop.is_set():
            now = time.monotonic()
            for job in self._jobs:
                if now >= due[job.name]:
                    self._run(job)
                    due[job.name] = now + job.interval * random.uniform(0.9, 1.1)  # noqa: S311
            self._stop.wait(min(due.values()) - time.monotonic() if due else 1.0)

    def _run(self, job: Job) -> None:
        try:
            job.run(int(self._clock()))
        except Exception as exc:  # a job must never kill the thread; it retries next turn
            log.warning("housekeeping job %s failed: %s", job.name, type(exc).__name__)
