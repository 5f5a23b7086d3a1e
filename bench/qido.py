"""(2) QIDO-RS latency p50 / p99 of a study, a series and an instance search, gateway / direct,
with 1 client and with 32 concurrent clients; errors counted; request rate at 32 clients.

The client is aiohttp with keep-alive (one connection per concurrent client), in the bench
process. With one client, direct and the gateway take turns request by request (the order of
each pair alternating), so that both are timed on the machine as it is in the same instants;
with 32, rounds alternate blocks of direct and gateway. A request is an error if it fails, is
not 200, or its body is not as long as the first answer of that search (for that target) was.
"""

from __future__ import annotations

import asyncio
import resource
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from common import DICOM_JSON, StudyRef, cpu_seconds, median, percentile


def searches(study: StudyRef, patient_id: str) -> dict[str, str]:
    """The three searches, as paths under a DICOMweb root (Orthanc wants `*`, `^` unencoded)."""
    return {
        "study": f"/studies?PatientID={patient_id}",
        "series": f"/studies/{study.uid}/series",
        "instance": f"/studies/{study.uid}/series/{study.series[0]}/instances",
    }


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    seconds: float = 0.0  # wall time of the runs
    server_cpu: float = 0.0  # CPU seconds of the server (the gateway's; 0: not measured)
    client_cpu: float = 0.0  # CPU seconds of this process making the requests

    def summary(self) -> dict[str, Any]:
        done = len(self.latencies)
        served = done + self.errors
        return {
            "server_cpu_ms_per_request": (
                round(self.server_cpu / served * 1000, 2) if self.server_cpu and served else None
            ),
            "requests": done + self.errors,
            "errors": self.errors,
            "p50_ms": round(median(self.latencies) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 2),
            "rate_per_s": round(done / self.seconds, 1) if self.seconds else None,
        }


async def _one(session: aiohttp.ClientSession, url: str, want: int | None) -> tuple[float, bool]:
    started = time.perf_counter()
    try:
        async with session.get(url, headers={"Accept": DICOM_JSON}) as r:
            body = await r.read()
            ok = r.status == 200 and (want is None or len(body) == want)
    except (TimeoutError, aiohttp.ClientError):
        ok = False
    return time.perf_counter() - started, ok


async def _reference(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url, headers={"Accept": DICOM_JSON}) as r:
        r.raise_for_status()
        return len(await r.read())


async def run_clients(
    url: str,
    clients: int,
    *,
    requests: int | None,
    seconds: float | None,
    want: int | None,
    at_least: int = 1,
) -> Tally:
    """``clients`` concurrent keep-alive clients, each making requests until ``requests`` are
    made in all, or ``seconds`` are over (a request under way then is finished and counted)
    and it made ``at_least`` (so that a slow search still gives a rate: the last requests of
    the clients, ending at different times, weigh less)."""
    tally = Tally()
    left = [requests if requests is not None else 1 << 60]
    timeout = aiohttp.ClientTimeout(total=60)
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(_one(session, url, want) for _ in range(clients)))  # connect
        deadline = time.perf_counter() + (seconds if seconds is not None else 1e9)

        async def client() -> None:
            made = 0
            while left[0] > 0 and (time.perf_counter() < deadline or made < at_least):
                left[0] -= 1
                made += 1
                elapsed, ok = await _one(session, url, want)
                if ok:
                    tally.latencies.append(elapsed)
                else:
                    tally.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        tally.seconds = time.perf_counter() - started
    return tally


async def run_paired(
    urls: dict[str, str],
    *,
    requests: int,
    seconds: float,
    wants: dict[str, int | None],
) -> dict[str, Tally]:
    """One keep-alive client per target (direct, gateway), taking turns request by request,
    the order of each pair alternating: both are timed on the machine as it is in the same
    instants, so a shared machine's drift between two blocks of requests cannot pass for a
    difference between the targets. Until ``requests`` pairs are made or ``seconds`` are over
    (at least one pair)."""
    targets = list(urls)
    tallies = {t: Tally() for t in targets}
    timeout = aiohttp.ClientTimeout(total=60)
    sessions = {
        t: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout)
        for t in targets
    }
    try:
        for t in targets:
            await _one(sessions[t], urls[t], wants[t])  # connect
        started = time.perf_counter()
        deadline = started + seconds
        pairs = 0
        while pairs < requests and (pairs == 0 or time.perf_counter() < deadline):
            order = targets if pairs % 2 == 0 else targets[::-1]
            for t in order:
                cpu = _client_cpu()
                elapsed, ok = await _one(sessions[t], urls[t], wants[t])
                tallies[t].client_cpu += _client_cpu() - cpu
                if ok:
                    tallies[t].latencies.append(elapsed)
                else:
                    tallies[t].errors += 1
            pairs += 1
        spent = time.perf_counter() - started
        for tally in tallies.values():
            tally.seconds = spent / len(targets)  # each had about its share of the time
    finally:
        for session in sessions.values():
            await session.close()
    return tallies


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def measure(
    roots: dict[str, str],
    paths: dict[str, str],
    *,
    rounds: int,
    single_requests: int,
    single_seconds: float,
    concurrent: int,
    concurrent_seconds: float,
    gateway_pids: list[int] | None = None,
) -> dict[str, Any]:
    """``roots``: {"direct": ..., "gateway": ...}. Per search, per concurrency, per target;
    with ``gateway_pids``, the gateway's CPU per search too."""
    wants = {(t, s): await _reference(roots[t] + p) for t in roots for s, p in paths.items()}
    tallies: dict[tuple[str, int, str], Tally] = {}
    client_cpu: dict[tuple[str, int], float] = {}

    def add(search: str, clients: int, target: str, got: Tally, served: float) -> None:
        tally = tallies.setdefault((search, clients, target), Tally())
        if target == "gateway" and gateway_pids:
            tally.server_cpu += cpu_seconds(gateway_pids) - served
        tally.latencies += got.latencies
        tally.errors += got.errors
        tally.seconds += got.seconds
        key = (target, clients)
        client_cpu[key] = client_cpu.get(key, 0.0) + got.client_cpu

    for _round in range(rounds):
        # One client: the targets take turns request by request. The gateway idles while
        # direct is asked, so its CPU over the pairs is its searches'.
        for search, path in paths.items():
            served = cpu_seconds(gateway_pids or [])
            paired = await run_paired(
                {t: root + path for t, root in roots.items()},
                requests=single_requests // rounds,
                seconds=single_seconds / rounds,
                wants={t: wants[t, search] for t in roots},
            )
            for target, got in paired.items():
                add(search, 1, target, got, served)
        for target, root in roots.items():
            for search, path in paths.items():
                cpu = _client_cpu()
                served = cpu_seconds(gateway_pids or [])
                got = await run_clients(
                    root + path,
                    concurrent,
                    requests=None,
                    seconds=concurrent_seconds / rounds,
                    want=wants[target, search],
                    at_least=2,
                )
                got.client_cpu = _client_cpu() - cpu
                add(search, concurrent, target, got, served)
    out: dict[str, Any] = {}
    for (search, clients, target), tally in tallies.items():
        out.setdefault(search, {}).setdefault(f"c{clients}", {})[target] = tally.summary()
    for search in out:
        for level in out[search].values():
            d, g = level["direct"], level["gateway"]
            level["ratio_p50"] = round(g["p50_ms"] / d["p50_ms"], 3)
            level["ratio_p99"] = round(g["p99_ms"] / d["p99_ms"], 3)
            if d["rate_per_s"] and g["rate_per_s"]:
                level["ratio_rate"] = round(g["rate_per_s"] / d["rate_per_s"], 3)
    out["client_cpu_s"] = {f"{t}-c{c}": round(v, 2) for (t, c), v in client_cpu.items()}
    out["urls"] = paths
    return out
