"""Helpers of ``bench/perf.py`` (the performance benchmark of the interop issue).

* :mod:`perf.procs` - the processes under test (QQ emulator, ``serve``, bare servers, the
  peer) and their configs;
* :mod:`perf.sample` - CPU per core and per process, peak memory, from ``/proc``;
* :mod:`perf.wrk` - throughput and latency of single-request endpoints with ``wrk``;
* :mod:`perf.flows` - multi-step browser flows (minting codes, complete logins) driven
  by ``flows.mjs`` in Node;
* :mod:`perf.instrument` - the counters inside a server process (private-key imports,
  client-authentication CPU), read over a signal;
* :mod:`perf.ceiling` - the signing loop and the bare endpoint;
* :mod:`perf.report` - the table and the pass/fail lines.

Nothing here is imported by ``broker`` or the tests.
"""
