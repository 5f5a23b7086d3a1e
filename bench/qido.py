"""(2) QIDO-RS latency p50 / p99 of a study, a series and an instance search, gateway / direct,
with 1 client and with 32 concurrent clients; errors counted; request rate at 32 clients.

The client is aiohttp with keep-alive (one connection per concurrent client), in the bench
process. Rounds alternate direct and gateway so that both see the same machine. A request is an
error if it fails, is not 200, or its body is not as long as the first answer of that search
(for that target) was.
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
    for _round in range(rounds):
        for clients in (1, concurrent):
            for target, root in roots.items():
                for search, path in paths.items():
                    cpu = _client_cpu()
                    served = cpu_seconds(gateway_pids or [])
                    got = await run_clients(
                        root + path,
                        clients,
                        requests=single_requests // rounds if clients == 1 else None,
                        seconds=(single_seconds if clients == 1 else concurrent_seconds) / rounds,
                        want=wants[target, search],
                        at_least=1 if clients == 1 else 2,
                    )
                    key = (target, clients)
                    client_cpu[key] = client_cpu.get(key, 0.0) + _client_cpu() - cpu
                    tally = tallies.setdefault((search, clients, target), Tally())
                    if target == "gateway" and gateway_pids:
                        tally.server_cpu += cpu_seconds(gateway_pids) - served
                    tally.latencies += got.latencies
                    tally.errors += got.errors
                    tally.seconds += got.seconds
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
