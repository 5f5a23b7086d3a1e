#!/usr/bin/env python3
"""The gateway against the PACS reached directly, in the same run: ratios, not absolutes.

    python bench/gateway_bench.py --pacs-env var/orthanc/env [--repeat 20] [--json out.json]

Starts the gateway (its console script, in its own process) in front of the Orthanc described
by the env file written by scripts/orthanc.sh (load `large` for the WADO figures), then measures
for both: QIDO latency (keep-alive), study metadata time, and streaming WADO-RS throughput of
the largest study, with the gateway's peak RSS growth. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _env(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.removeprefix("export ").strip(): v.strip().strip('"') for k, v in pairs}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


async def _timed(session: aiohttp.ClientSession, url: str, accept: str, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        async with session.get(url, headers={"Accept": accept}) as r:
            r.raise_for_status()
            async for _chunk in r.content.iter_chunked(1 << 20):
                pass
        times.append(time.perf_counter() - t0)
    return times


async def _measure(root: str, study: str, repeat: int) -> dict[str, float]:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        await _timed(s, f"{root}/studies", "application/dicom+json", 3)  # warm up
        qido = await _timed(
            s, f"{root}/studies?PatientID=LARGE-CT-1", "application/dicom+json", repeat
        )
        meta = await _timed(s, f"{root}/studies/{study}/metadata", "application/dicom+json", 3)
        wado = await _timed(s, f"{root}/studies/{study}", AS_STORED, 3)
    return {
        "qido_median_ms": round(statistics.median(qido) * 1000, 2),
        "metadata_median_ms": round(statistics.median(meta) * 1000, 1),
        "wado_best_s": round(min(wado), 3),
    }


async def _study_size(root: str, study: str) -> int:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{root}/studies/{study}", headers={"Accept": AS_STORED}) as r,
    ):
        return sum([len(c) async for c in r.content.iter_chunked(1 << 20)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pacs-env", type=Path, default=Path("var/orthanc/env"))
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = _env(args.pacs_env)
    direct = env["DICOMWEB_ROOT"]
    port = _free_port()
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ncpeh_dicomweb.cli",
            "serve",
            "--pacs-dicomweb",
            direct,
            "--port",
            str(port),
            "--log-level",
            "WARNING",
        ],
    )
    try:
        root = f"http://127.0.0.1:{port}/dicom-web"
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        found = asyncio.run(_find_large(direct))
        size = asyncio.run(_study_size(direct, found))
        asyncio.run(_measure(direct, found, 2))  # warm both: Orthanc caches what it read once
        asyncio.run(_measure(root, found, 2))
        pacs = asyncio.run(_measure(direct, found, args.repeat))
        rss_before = _rss_kb(gateway.pid, "VmRSS")
        Path(f"/proc/{gateway.pid}/clear_refs").write_text("5")
        gw = asyncio.run(_measure(root, found, args.repeat))
        growth = (_rss_kb(gateway.pid, "VmHWM") - rss_before) / 1024
    finally:
        gateway.terminate()
        gateway.wait(10)
    mb = size / (1 << 20)
    result: dict[str, Any] = {
        "study_mb": round(mb, 1),
        "pacs": {**pacs, "wado_mb_s": round(mb / pacs["wado_best_s"])},
        "gateway": {
            **gw,
            "wado_mb_s": round(mb / gw["wado_best_s"]),
            "peak_rss_growth_mb": round(growth, 1),
        },
        "ratio_gateway_over_pacs": {
            "qido_latency": round(gw["qido_median_ms"] / pacs["qido_median_ms"], 2),
            "metadata_time": round(gw["metadata_median_ms"] / pacs["metadata_median_ms"], 2),
            "wado_throughput": round(pacs["wado_best_s"] / gw["wado_best_s"], 2),
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result))
    return 0


async def _find_large(root: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(f"{root}/studies?PatientID=LARGE-CT-1") as r:
        body = await r.json(content_type=None)
    if not body:
        raise SystemExit("no study of PatientID LARGE-CT-1: start Orthanc with --load large")
    return str(body[0]["0020000D"]["Value"][0])


if __name__ == "__main__":
    sys.exit(main())
