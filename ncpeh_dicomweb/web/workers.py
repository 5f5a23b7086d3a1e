"""Several worker processes on one port: ``serve --workers N`` (``[server] workers``).

Each worker is the whole gateway in a process of its own (``ncpeh-dicomweb serve`` run again
with the same arguments, plus ``--worker K``): its own backends, caches and DIMSE associations,
and its own listening socket on the port, bound with ``SO_REUSEPORT``, so that the kernel
spreads new connections over the workers. The process the user started serves nothing; it
supervises:

- it holds the port first (bound with ``SO_REUSEPORT``, never listening: it is given no
  connection), so a port another program has is a start-up error, and the port stays ours
  while a worker restarts;
- it starts N workers, each in a process group of its own, so a terminal's Ctrl-C reaches the
  supervisor only and each worker is told once (a second signal to a worker cuts its drain);
- on SIGTERM or SIGINT it sends each worker SIGTERM and waits: a worker stops as one process
  does (:func:`~.server.serve`: it stops listening, finishes its requests, cuts the multipart
  streams still running, closes the audit trail last); a second signal kills them (SIGKILL);
- it restarts a worker that exits on its own, after :data:`RESTART_DELAY`, and gives up when
  :data:`MAX_DEATHS` have died within :data:`DEATH_WINDOW` seconds: the others are stopped and
  it exits with the last one's status (1 if it had none);
- it gives the workers a fresh ``PROMETHEUS_MULTIPROC_DIR`` (the operator's, emptied, if set),
  and tells prometheus-client when one died, so ``/metrics`` on any worker sums them all.

A worker whose supervisor has gone (killed) stops by itself (checked every second).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from types import FrameType

from aiohttp import web
from prometheus_client.multiprocess import mark_process_dead

from ..config import ConfigError, DimseSite, Settings
from ..metrics import MULTIPROCESS_ENV

__all__ = [
    "DEATH_WINDOW",
    "MAX_DEATHS",
    "RESTART_DELAY",
    "check_workers",
    "supervise",
    "watch_supervisor",
    "worker_settings",
]

log = logging.getLogger("ncpeh_dicomweb.workers")

RESTART_DELAY = 1.0  # seconds before a worker that died is started again
MAX_DEATHS = 5  # workers dying within DEATH_WINDOW seconds: the supervisor gives up
DEATH_WINDOW = 60.0


def check_workers(settings: Settings) -> None:
    """ConfigError if ``settings.workers`` processes cannot serve these settings."""
    if settings.workers <= 1:
        return
    if settings.port == 0:
        raise ConfigError("server.port: several workers need a fixed port, not 0")
    for site in settings.sites:
        if isinstance(site, DimseSite) and site.retrieve == "c-move":
            # Its storage SCP listens on one fixed port, where the PACS sends to one AE title:
            # a second worker could not bind it, nor would moves reach the worker that asked.
            raise ConfigError(
                f"server.workers: site {site.id!r} retrieves with C-MOVE, whose storage SCP "
                f"(store_port {site.store_port}) one process only can run: serve it with one "
                "worker, use C-GET, or run replicas with an AE title and store port each"
            )


def worker_settings(settings: Settings, slot: int) -> Settings:
    """``settings`` for worker ``slot``: what only one process may use is its own.

    An instance cache directory is one process's (backends/cache.py): each worker keeps its
    own under it (``worker-K``), with its share of ``cache_max_bytes``, so the disk bound is
    the configured one. The syslog spool is held by one process (a lock): one per worker too.
    """
    count = settings.workers
    sites = tuple(
        replace(
            site,
            cache_dir=os.path.join(site.cache_dir, f"worker-{slot}"),
            cache_max_bytes=site.cache_max_bytes // count,
        )
        if isinstance(site, DimseSite) and site.cache_dir is not None
        else site
        for site in settings.sites
    )
    audit = settings.audit
    if "syslog" in audit.sinks:
        audit = replace(audit, spool_dir=os.path.join(audit.spool_dir, f"worker-{slot}"))
    return replace(settings, sites=sites, audit=audit)


def watch_supervisor(pid: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that stops the worker (as SIGTERM does) once supervisor ``pid`` is
    gone: a killed supervisor must not leave its workers serving."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(_watch(pid), name="watch-supervisor")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return context


async def _watch(pid: int) -> None:
    while True:
        await asyncio.sleep(1.0)
        if os.getppid() != pid:
            break
    log.warning("the supervisor (pid %d) is gone: stopping", pid)
    os.kill(os.getpid(), signal.SIGTERM)


def supervise(argv: Sequence[str], *, workers: int, host: str, port: int) -> int:
    """Run ``workers`` workers of ``ncpeh-dicomweb {argv}`` on ``host:port`` until SIGTERM or
    SIGINT (see the module docstring); the exit status."""
    try:
        held = _hold_port(host, port)
    except OSError as exc:
        print(f"ncpeh-dicomweb: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    own_dir = os.environ.get(MULTIPROCESS_ENV) is None
    metrics_dir = _metrics_dir()
    supervisor = _Supervisor(argv, workers, {**os.environ, MULTIPROCESS_ENV: metrics_dir})
    previous = {s: signal.signal(s, supervisor.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        log.info("%d workers on %s:%d (supervisor pid %d)", workers, host, port, os.getpid())
        return supervisor.run(metrics_dir)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for sock in held:
            sock.close()
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor:
    def __init__(self, argv: Sequence[str], count: int, env: dict[str, str]) -> None:
        self._command = [sys.executable, "-m", "ncpeh_dicomweb.cli", *argv]
        self._count = count
        self._env = env
        self._children: dict[int, int] = {}  # pid → slot
        self._told: set[int] = set()  # pids sent SIGTERM (once each: see the docstring)
        self._deaths: deque[float] = deque()
        self._stopping = False
        self._status = 0

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:
            log.warning("second signal: killing the workers")
            for pid in list(self._children):
                _kill(pid, signal.SIGKILL)
            return
        log.info("stopping %d workers", len(self._children))
        self._stop()

    def run(self, metrics_dir: str) -> int:
        for slot in range(self._count):
            self._spawn(slot)
        while self._children:
            pid, status = os.waitpid(-1, 0)  # signals are handled meanwhile (PEP 475)
            if pid not in self._children:
                continue
            slot = self._children.pop(pid)
            self._told.discard(pid)
            mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]
            code = os.waitstatus_to_exitcode(status)
            if self._stopping:
                log.info("worker %d (pid %d) stopped (%s)", slot, pid, _described(code))
                continue
            log.warning("worker %d (pid %d) died (%s)", slot, pid, _described(code))
            now = time.monotonic()
            self._deaths.append(now)
            while self._deaths[0] < now - DEATH_WINDOW:
                self._deaths.popleft()
            if len(self._deaths) >= MAX_DEATHS:
                log.error("%d workers died within %gs: giving up", len(self._deaths), DEATH_WINDOW)
                self._status = code if code > 0 else 1
                self._stop()
                continue
            time.sleep(RESTART_DELAY)
            if not self._stopping:
                self._spawn(slot)
        return self._status

    def _spawn(self, slot: int) -> None:
        argv = [*self._command, "--worker", str(slot), "--supervisor", str(os.getpid())]
        # setpgroup=0: a group of its own (see the module docstring).
        pid = os.posix_spawn(sys.executable, argv, self._env, setpgroup=0)
        self._children[pid] = slot
        log.info("worker %d started (pid %d)", slot, pid)
        if self._stopping:  # a signal came while it was being started
            self._terminate(pid)

    def _stop(self) -> None:
        self._stopping = True
        for pid in list(self._children):
            self._terminate(pid)

    def _terminate(self, pid: int) -> None:
        if pid not in self._told:
            self._told.add(pid)
            _kill(pid, signal.SIGTERM)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # exited, not yet reaped: fine
        os.kill(pid, signum)


def _described(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"


def _hold_port(host: str, port: int) -> list[socket.socket]:
    """The port bound (not listening) on every address of ``host``, as each worker binds it."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except OSError:
        for sock in held:
            sock.close()
        raise
    return held


def _metrics_dir() -> str:
    """The operator's PROMETHEUS_MULTIPROC_DIR emptied of an earlier run's files (the values
    would add up), else a new temporary one."""
    given = os.environ.get(MULTIPROCESS_ENV)
    if given is None:
        return tempfile.mkdtemp(prefix="ncpeh-metrics-")
    os.makedirs(given, exist_ok=True)
    for path in glob.glob(os.path.join(given, "*.db")):
        os.remove(path)
    return given
