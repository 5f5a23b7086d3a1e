#!/usr/bin/env python3
"""A DIMSE site of the gateway against pynetdicom talking to the same PACS directly, one run.

    python bench/dimse_bench.py --pacs-env var/orthanc/env [--repeat 3]

Direct: a pynetdicom C-GET (TCP_NODELAY on) of the largest study that throws the instances away,
and a C-FIND. Gateway: the same study through a `kind = "dimse"` site, cold (empty cache: the
C-GET happens while the client reads) and warm (from the cache), and QIDO for the same C-FIND.
Prints one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from gateway_bench import AS_STORED, _env, _find_large, _free_port, _timed
from pydicom import Dataset
from pynetdicom import AE, build_role, evt

GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"
FIND_MODEL = "1.2.840.10008.5.1.4.1.2.2.1"
CT = "1.2.840.10008.5.1.4.1.1.2"


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def direct_get(host: str, port: int, aet: str, study: str) -> tuple[float, int]:
    received = [0]

    def on_store(event: Any) -> int:
        received[0] += len(event.encoded_dataset(include_meta=False))
        return 0

    ae = AE("BENCH")
    ae.add_requested_context(GET_MODEL)
    ae.add_requested_context(CT)
    assoc = ae.associate(
        host,
        port,
        ae_title=aet,
        ext_neg=[build_role(CT, scp_role=True)],
        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_C_STORE, on_store)],
    )
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    started = time.perf_counter()
    for _status, _ in assoc.send_c_get(identifier, GET_MODEL):
        pass
    seconds = time.perf_counter() - started
    assoc.release()
    return seconds, received[0]


def direct_find(host: str, port: int, aet: str, repeat: int) -> float:
    ae = AE("BENCH")
    ae.add_requested_context(FIND_MODEL)
    assoc = ae.associate(host, port, ae_title=aet, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)])
    times = []
    for _ in range(repeat):
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.PatientID = "LARGE-CT-1"
        identifier.StudyInstanceUID = ""
        started = time.perf_counter()
        list(assoc.send_c_find(identifier, FIND_MODEL))
        times.append(time.perf_counter() - started)
    assoc.release()
    return statistics.median(times)


async def _get_seconds(url: str) -> float:
    timeout = aiohttp.ClientTimeout(total=None, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        return (await _timed(s, url, AS_STORED, 1))[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pacs-env", type=Path, default=Path("var/orthanc/env"))
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    env = _env(args.pacs_env)
    host, port, aet = "127.0.0.1", int(env["ORTHANC_DICOM_PORT"]), env["ORTHANC_AET"]
    study = asyncio.run(_find_large(env["DICOMWEB_ROOT"]))
    direct_s, size = direct_get(host, port, aet, study)
    find_s = direct_find(host, port, aet, args.repeat)

    gateway_port = _free_port()
    with tempfile.TemporaryDirectory() as cache:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ncpeh_dicomweb.cli",
                "serve",
                "--pacs-dimse",
                f"{aet}@{host}:{port}",
                "--port",
                str(gateway_port),
                "--cache-dir",
                cache,
                "--log-level",
                "WARNING",
            ],
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", gateway_port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            root = f"http://127.0.0.1:{gateway_port}/dicom-web"
            cold = asyncio.run(_get_seconds(f"{root}/studies/{study}"))
            warm = min(asyncio.run(_get_seconds(f"{root}/studies/{study}")) for _ in range(3))

            async def qido() -> list[float]:
                async with aiohttp.ClientSession() as s:
                    url = f"{root}/studies?PatientID=LARGE-CT-1"
                    await _timed(s, url, "application/dicom+json", 2)
                    return await _timed(s, url, "application/dicom+json", args.repeat)

            qido_s = statistics.median(asyncio.run(qido()))
        finally:
            proc.terminate()
            proc.wait(10)
    mb = size / (1 << 20)
    print(
        json.dumps(
            {
                "study_mb": round(mb, 1),
                "direct": {
                    "c_get_mb_s": round(mb / direct_s),
                    "c_find_ms": round(find_s * 1000, 2),
                },
                "gateway": {
                    "cold_mb_s": round(mb / cold),
                    "warm_mb_s": round(mb / warm),
                    "qido_ms": round(qido_s * 1000, 2),
                },
                "ratio_gateway_over_direct": {
                    "cold_retrieve_throughput": round(direct_s / cold, 2),
                    "warm_retrieve_throughput": round(direct_s / warm, 2),
                    "search_latency": round(qido_s / find_s, 2),
                },
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
