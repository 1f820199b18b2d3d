"""CPU and memory from ``/proc``: per core, per process, and peak resident memory.

A measured window is bracketed by two snapshots. From them:

* ``cores_busy``: each core's busy share (``/proc/stat``: everything but idle and
  iowait), so an idle core shows however the load is spread;
* ``procs_cpu``: CPU seconds per second of each process of the run (server with its
  workers, emulator, load generator), i.e. how many cores it used; their sum against
  the core count is what "no run leaves a core idle" is judged on, since other work on
  a shared machine also keeps cores busy;
* ``peak_rss_mb``: ``VmHWM``, the high-water mark of each process's resident memory
  (of a server with workers, the largest worker's).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

_TICKS = os.sysconf("SC_CLK_TCK")


def _core_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies per core."""
    result = []
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith("cpu") and line[3].isdigit():
                values = [int(v) for v in line.split()[1:]]
                idle = values[3] + values[4]  # idle + iowait
                result.append((sum(values) - idle, sum(values)))
    return result


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``serve`` with ``server.workers``: the workers)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    pending.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return found


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (all threads)."""
    return sum(_own_cpu(member) for member in tree(pid))


def _own_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` alone (all threads), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return 0.0
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def peak_rss_mb(pid: int) -> float:
    """The largest ``VmHWM`` among ``pid`` and its descendants, in MiB: memory per process."""
    return max(_own_peak_rss_mb(member) for member in tree(pid))


def _own_peak_rss_mb(pid: int) -> float:
    """``VmHWM`` of ``pid`` in MiB (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Usage:
    """What one window used."""

    seconds: float
    cores_busy: list[float]
    procs_cpu: dict[str, float] = field(default_factory=dict)

    @property
    def ours(self) -> float:
        """Cores used by the processes of the run."""
        return sum(self.procs_cpu.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "seconds": round(self.seconds, 3),
            "cores_busy": [round(c, 3) for c in self.cores_busy],
            "procs_cores": {k: round(v, 3) for k, v in self.procs_cpu.items()},
            "ours_cores": round(self.ours, 3),
        }


class Window:
    """``with Window(pids) as w: ...`` then ``w.usage``; pids may be added while open
    (a load generator started inside the window)."""

    def __init__(self, pids: Mapping[str, int]) -> None:
        self.pids = dict(pids)
        self.usage: Usage | None = None
        self._start_cpu: dict[str, float] = {}

    def add(self, name: str, pid: int) -> None:
        self.pids[name] = pid
        self._start_cpu[name] = process_cpu(pid)

    def __enter__(self) -> Window:
        self._start = time.monotonic()
        self._cores = _core_times()
        self._start_cpu = {name: process_cpu(pid) for name, pid in self.pids.items()}
        return self

    def finish(self, last_cpu: Mapping[str, float] | None = None) -> Usage:
        """Close the window now; ``last_cpu`` gives CPU totals of processes that have
        already exited (read before they were reaped)."""
        elapsed = time.monotonic() - self._start
        cores = _core_times()
        busy = [
            (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
            for (b0, t0), (b1, t1) in zip(self._cores, cores, strict=True)
        ]
        procs = {}
        for name, pid in self.pids.items():
            end = (last_cpu or {}).get(name)
            end = process_cpu(pid) if end is None else end
            procs[name] = max(0.0, end - self._start_cpu.get(name, 0.0)) / elapsed
        self.usage = Usage(elapsed, busy, procs)
        return self.usage

    def __exit__(self, *exc: object) -> None:
        if self.usage is None:
            self.finish()


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def connections_to(pid: int, port: int) -> set[int]:
    """Local ports of the IPv4 TCP connections to ``port`` (any state but LISTEN) of
    ``pid`` and its workers."""
    inodes = set().union(*(_socket_inodes(member) for member in tree(pid)))
    found = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            if inode in inodes and state != "0A" and int(remote.split(":")[1], 16) == port:
                found.add(int(local.split(":")[1], 16))
    return found


class ConnectionWatch:
    """Samples, in a thread, which connections ``pid`` holds to ``port``: how many
    distinct ones it opened (pooling shows as few) and the most open at once."""

    def __init__(self, pid: int, port: int, interval: float = 0.05) -> None:
        import threading

        self.pid, self.port, self.interval = pid, port, interval
        self.seen: set[int] = set()
        self.most_at_once = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = connections_to(self.pid, self.port)
            self.seen |= now
            self.most_at_once = max(self.most_at_once, len(now))
            self._stop.wait(self.interval)

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
