#!/usr/bin/env python3
"""What a viewer waits for, through the gateway and from the PACS directly, in the same run.

    python bench/viewer_bench.py --pacs-env var/orthanc/env [--concurrency 6] [--json out.json]

A viewer (OHIF) opening a series loads its metadata, then asks for every frame, one request
each, a few at a time (browsers keep 6 connections per origin). This replays that for the
first series of the large CT study (load `large`) against Orthanc's DICOMweb and against the
gateway's DICOMweb site: cold (the gateway has not seen the series) and warm (a second pass),
and reports the time to the first frame and to the last, as ratios gateway / direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from common import env_file, find_study, free_port, status_kb

FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"


async def _series(root: str, study: str) -> tuple[str, list[str]]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{root}/studies/{study}/series") as r:
            series = (await r.json(content_type=None))[0]["0020000E"]["Value"][0]
        async with s.get(f"{root}/studies/{study}/series/{series}/instances") as r:
            body = await r.json(content_type=None)
    return series, [d["00080018"]["Value"][0] for d in body]


async def _load(
    root: str, study: str, series: str, sops: list[str], width: int
) -> dict[str, float]:
    """Metadata, then every frame (width at a time): seconds to the first frame and to all."""
    started = time.perf_counter()
    first: list[float] = []
    queue: asyncio.Queue[str] = asyncio.Queue()
    for sop in sops:
        queue.put_nowait(sop)
    base = f"{root}/studies/{study}/series/{series}"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=width)) as s:
        async with s.get(f"{base}/metadata") as r:
            r.raise_for_status()
            await r.read()

        async def worker() -> None:
            while not queue.empty():
                sop = queue.get_nowait()
                url = f"{base}/instances/{sop}/frames/1"
                async with s.get(url, headers={"Accept": FRAMES}) as r:
                    r.raise_for_status()
                    await r.read()
                if not first:
                    first.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(width)))
    return {
        "first_frame_s": round(first[0], 3),
        "all_frames_s": round(time.perf_counter() - started, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pacs-env", type=Path, default=Path("var/orthanc/env"))
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    direct = env_file(args.pacs_env)["DICOMWEB_ROOT"]
    port = free_port()
    command = [sys.executable, "-m", "ncpeh_dicomweb.cli", "serve", "--pacs-dicomweb", direct]
    gateway = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "WARNING"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        root = f"http://127.0.0.1:{port}/dicom-web"
        time.sleep(2)
        found = asyncio.run(find_study(direct, "LARGE-CT-1"))
        if found is None:
            raise SystemExit("no study of PatientID LARGE-CT-1: start Orthanc with --load large")
        study = found.uid
        series, sops = asyncio.run(_series(direct, study))
        w = args.concurrency
        asyncio.run(_load(direct, study, series, sops, w))  # Orthanc reads its files once
        pacs = asyncio.run(_load(direct, study, series, sops, w))
        rss = status_kb(gateway.pid, "VmRSS")
        cold = asyncio.run(_load(root, study, series, sops, w))
        warm = asyncio.run(_load(root, study, series, sops, w))
        growth = round((status_kb(gateway.pid, "VmHWM") - rss) / 1024, 1)
    finally:
        gateway.terminate()
        gateway.wait(10)
    result: dict[str, Any] = {
        "frames": len(sops),
        "concurrency": w,
        "pacs": pacs,
        "gateway_cold": cold,
        "gateway_warm": warm,
        "gateway_peak_rss_growth_mb": growth,
        "ratio_gateway_over_pacs": {
            name: {k: round(v / pacs[k], 2) for k, v in figures.items()}
            for name, figures in (("cold", cold), ("warm", warm))
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
