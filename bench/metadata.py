"""(3) WADO-RS study metadata, cold and warm: gateway / direct.

Cold: the first metadata request of a gateway just started (one search made first, so its
connection to the PACS is open); a fresh gateway per trial. Warm: the requests after it, within
the metadata cache's TTL (60 s). Direct: Orthanc asked the same, between the trials. Times are
to the last byte of the body, keep-alive, aiohttp client; figures are speed ratios
(direct time / gateway time: above 1 the gateway is faster).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import aiohttp
from common import DICOM_JSON, Gateway, StudyRef, median, running


async def _timed(session: aiohttp.ClientSession, url: str, repeat: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        async with session.get(url, headers={"Accept": DICOM_JSON}) as r:
            r.raise_for_status()
            size = len(await r.read())
        times.append(time.perf_counter() - started)
    return times, size


async def _trial(root: str, study: StudyRef, patient_id: str, warm: int) -> dict[str, Any]:
    url = f"{study.url(root)}/metadata"
    async with aiohttp.ClientSession() as s:
        await _timed(s, f"{root}/studies?PatientID={patient_id}", 1)
        cold, size = await _timed(s, url, 1)
        hot, _ = await _timed(s, url, warm)
    return {"cold": cold[0], "warm": hot, "bytes": size}


async def _direct(root: str, study: StudyRef, repeat: int) -> tuple[list[float], int]:
    async with aiohttp.ClientSession() as s:
        return await _timed(s, f"{study.url(root)}/metadata", repeat)


async def measure(
    direct_root: str,
    new_gateway: Callable[[int], Gateway],
    study: StudyRef,
    patient_id: str,
    *,
    trials: int,
    warm: int,
    direct_repeat: int,
) -> dict[str, Any]:
    await _direct(direct_root, study, 1)  # Orthanc reads the files once
    direct: list[float] = []
    cold: list[float] = []
    hot: list[float] = []
    size = direct_size = 0
    for trial in range(trials):
        times, direct_size = await _direct(direct_root, study, direct_repeat)
        direct += times
        with running(new_gateway(trial)) as gateway:
            got = await _trial(gateway.root(), study, patient_id, warm)
        cold.append(got["cold"])
        hot += got["warm"]
        size = got["bytes"]
    d = median(direct)
    return {
        "instances": study.instances,
        "direct_bytes": direct_size,
        "gateway_bytes": size,
        "direct_ms": round(d * 1000, 1),
        "cold_ms": round(median(cold) * 1000, 1),
        "warm_ms": round(median(hot) * 1000, 2),
        "cold_speedup": round(d / median(cold), 3),
        "warm_speedup": round(d / median(hot), 2),
        "trials": trials,
        "warm_per_trial": warm,
        "direct_repeat": direct_repeat * trials,
    }
