"""(6) Many clients: 32 study retrieves at once (curl each) plus a search load (a few aiohttp
keep-alive clients cycling over the study, series and instance searches until the last
retrieve ends), against Orthanc directly and against the gateway with 1 and with N workers.

Aggregate throughput is every retrieved byte over the wall time to the last retrieve; an error
is a retrieve that failed or came short (its size against one retrieve alone before the load),
or a search that failed. The gateway's CPU (all its processes) and peak RSS (the largest of one
process) over the run are kept too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from common import (
    AS_STORED,
    DICOM_JSON,
    Gateway,
    StudyRef,
    cpu_seconds,
    curl_command,
    curl_get,
    log,
    median,
    parse_curl,
    percentile,
    reset_peak,
    status_kb,
)


async def _retrieve(url: str) -> tuple[int, int, bool]:
    proc = await asyncio.create_subprocess_exec(
        *curl_command(url, AS_STORED),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await proc.communicate()
    t = parse_curl(out.decode(), proc.returncode or 0)
    return t.status, t.size, t.ok


async def _searcher(
    session: aiohttp.ClientSession,
    urls: Sequence[str],
    stop: asyncio.Event,
    latencies: list[float],
    errors: list[int],
) -> None:
    k = 0
    while not stop.is_set():
        url = urls[k % len(urls)]
        k += 1
        started = time.perf_counter()
        try:
            async with session.get(url, headers={"Accept": DICOM_JSON}) as r:
                await r.read()
                ok = r.status == 200
        except (TimeoutError, aiohttp.ClientError):
            ok = False
        if ok:
            latencies.append(time.perf_counter() - started)
        else:
            errors[0] += 1


async def _run(
    root: str, study: StudyRef, paths: Sequence[str], clients: int, searchers: int, want: int
) -> dict[str, Any]:
    stop = asyncio.Event()
    latencies: list[float] = []
    search_errors = [0]
    timeout = aiohttp.ClientTimeout(total=120)
    connector = aiohttp.TCPConnector(limit=searchers)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        load = [
            asyncio.create_task(
                _searcher(session, [root + p for p in paths], stop, latencies, search_errors)
            )
            for _ in range(searchers)
        ]
        started = time.perf_counter()
        done = await asyncio.gather(*(_retrieve(study.url(root)) for _ in range(clients)))
        wall = time.perf_counter() - started
        stop.set()
        await asyncio.gather(*load)
    short = sum(1 for _s, size, ok in done if ok and abs(size - want) > want // 100)
    failed = sum(1 for _s, _size, ok in done if not ok)
    if failed or short:
        log(f"load: {failed} retrieves failed, {short} came short: {done}")
    total = sum(size for _s, size, ok in done if ok)
    return {
        "seconds": round(wall, 2),
        "bytes": total,
        "mb_s": round(total / wall / 1e6, 1),
        "retrieve_errors": failed + short,
        "searches": len(latencies) + search_errors[0],
        "search_errors": search_errors[0],
        "search_rate_per_s": round(len(latencies) / wall, 1),
        "search_p50_ms": round(median(latencies) * 1000, 1),
        "search_p99_ms": round(percentile(latencies, 99) * 1000, 1),
    }


def measure(
    root: str,
    study: StudyRef,
    paths: Sequence[str],
    *,
    clients: int,
    searchers: int,
    gateway: Gateway | None = None,
) -> dict[str, Any]:
    """One run against ``root`` (a gateway's, if ``gateway`` is given: its CPU and RSS too)."""
    reference = curl_get(study.url(root))  # warm, and the size a whole retrieve has
    if not reference.ok:
        raise RuntimeError(f"retrieve from {root} failed: {reference}")
    pids = gateway.pids() if gateway else []
    serving = gateway.serving_pids() if gateway else []
    if serving:
        reset_peak(serving)
    cpu = cpu_seconds(pids)
    result = asyncio.run(_run(root, study, paths, clients, searchers, reference.size))
    result["errors"] = result["retrieve_errors"] + result["search_errors"]
    if gateway is not None:
        used = cpu_seconds(pids) - cpu
        result["gateway_cpu_s"] = round(used, 2)
        result["gateway_cpu_s_per_gb"] = round(used / (result["bytes"] / 1e9), 3)
        result["peak_rss_mb"] = round(max(status_kb(p, "VmHWM") for p in serving) / 1024, 1)
        result["processes"] = len(serving)
    return result
