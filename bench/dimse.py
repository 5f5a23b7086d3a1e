"""(4) A DIMSE site of the gateway (a C-GET site and a C-MOVE site on the same Orthanc).

Per trial, in this order, all of the same study:
- a bare pynetdicom C-GET (one association, TCP_NODELAY, instances counted and dropped);
- dcmtk's ``getscu`` writing the instances to a temporary directory (TCP_NODELAY=1);
- a gateway started with empty caches (a fresh one per trial), one search on each site (as a
  viewer does; it opens the association pool), then the study retrieved through the C-GET site,
  then through the C-MOVE site (cold: each site has its own cache), by curl: time to the first
  byte of the answer (the gateway answers once it holds the first part) and to the last;
- the same study again through the C-GET site (warm: from the cache), and from Orthanc's own
  DICOMweb, by curl.
Ratios are of throughput (the same bytes in less time is more): gateway / baseline.
"""

from __future__ import annotations

import asyncio
import functools
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from common import (
    Gateway,
    StudyRef,
    Transfer,
    cpu_split,
    curl_get,
    gateway_config,
    log,
    median,
    running,
)
from pydicom import Dataset
from pynetdicom import AE, build_role, evt

GET_MODEL = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Query/Retrieve - GET
CT = "1.2.840.10008.5.1.4.1.1.2"
GETSCU = "/usr/bin/getscu"  # dcmtk's; pynetdicom puts a Python getscu earlier on PATH
MOVE_AET = "BENCH-MOVE"


def _nodelay(event: Any) -> None:
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def pynetdicom_get(host: str, port: int, aet: str, study: str) -> tuple[float, int, int]:
    """A bare C-GET of the study: (seconds, bytes, instances). The instances are dropped."""
    received = [0, 0]

    def on_store(event: Any) -> int:
        received[0] += len(event.encoded_dataset(include_meta=False))
        received[1] += 1
        return 0x0000

    ae = AE("BENCH-PYNET")
    ae.maximum_pdu_size = 0  # no limit on what we receive
    ae.add_requested_context(GET_MODEL)
    ae.add_requested_context(CT)
    started = time.perf_counter()
    assoc = ae.associate(
        host,
        port,
        ae_title=aet,
        ext_neg=[build_role(CT, scp_role=True)],
        evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay), (evt.EVT_C_STORE, on_store)],
    )
    if not assoc.is_established:
        raise RuntimeError("pynetdicom: association refused")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    for _status, _ in assoc.send_c_get(identifier, GET_MODEL):
        pass
    assoc.release()
    return time.perf_counter() - started, received[0], received[1]


def dcmtk_getscu(host: str, port: int, aet: str, study: str) -> tuple[float, int, int]:
    """dcmtk's getscu of the study into a temporary directory: (seconds, bytes, files)."""
    if not Path(GETSCU).exists():
        raise SystemExit(f"{GETSCU} is needed: apt-get install dcmtk (scripts/install-deps.sh)")
    out = Path(tempfile.mkdtemp(prefix="bench-getscu-"))
    try:
        command = [GETSCU, "-S", "-aet", "BENCH-GETSCU", "-aec", aet, host, str(port)]
        command += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        command += ["-od", str(out)]
        started = time.perf_counter()
        done = subprocess.run(
            command, env={**os.environ, "TCP_NODELAY": "1"}, capture_output=True, check=False
        )
        seconds = time.perf_counter() - started
        files = list(out.iterdir())
        if done.returncode != 0:
            log(f"getscu exit {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}")
        return seconds, sum(f.stat().st_size for f in files), len(files)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def register_move_destination(orthanc_url: str, store_port: int) -> None:
    """Orthanc must know our C-MOVE destination AE (kept in memory: gone at its restart)."""

    async def put() -> None:
        body = {"AET": MOVE_AET, "Host": "127.0.0.1", "Port": store_port}
        async with (
            aiohttp.ClientSession() as s,
            s.put(f"{orthanc_url}/modalities/{MOVE_AET}", json=body) as r,
        ):
            r.raise_for_status()

    asyncio.run(put())


def forget_move_destination(orthanc_url: str) -> None:
    async def delete() -> None:
        async with aiohttp.ClientSession() as s, s.delete(f"{orthanc_url}/modalities/{MOVE_AET}"):
            pass

    asyncio.run(delete())


def dimse_config(work: Path, port: int, host: str, dicom_port: int, aet: str, store: int) -> str:
    # BENCH_DIMSE_PARALLELISM=N: the sites' retrieve_parallelism (else the gateway's default).
    parallelism = os.environ.get("BENCH_DIMSE_PARALLELISM")
    tuning = f"retrieve_parallelism = {int(parallelism)}\n" if parallelism else ""
    sites = []
    for site, method, calling, extra in (
        ("get", "c-get", "BENCH-GET", ""),
        ("move", "c-move", MOVE_AET, f"store_port = {store}\n"),
    ):
        sites.append(
            f'[[sites]]\nid = "{site}"\nkind = "dimse"\nhost = "{host}"\nport = {dicom_port}\n'
            f'called_aet = "{aet}"\ncalling_aet = "{calling}"\nretrieve = "{method}"\n'
            f'cache_dir = "{work / ("cache-" + site)}"\n{extra}{tuning}'
        )
    return gateway_config(work, port, "\n".join(sites), default_site="get")


def _search(root: str, patient_id: str) -> None:
    async def get() -> None:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"{root}/studies?PatientID={patient_id}") as r,
        ):
            r.raise_for_status()
            await r.read()

    asyncio.run(get())


def measure(
    env: dict[str, str],
    new_gateway: Callable[[int], Gateway],
    study: StudyRef,
    patient_id: str,
    *,
    trials: int,
    warm: int,
) -> dict[str, Any]:
    host, port, aet = "127.0.0.1", int(env["ORTHANC_DICOM_PORT"]), env["ORTHANC_AET"]
    direct_url = study.url(env["DICOMWEB_ROOT"])
    runs: dict[str, list[float]] = {
        k: [] for k in ("pynetdicom", "getscu", "get", "move", "warm", "dicomweb")
    }
    first: dict[str, list[float]] = {"get": [], "move": []}
    sizes: dict[str, int] = {}
    errors = 0
    pynetdicom_get(host, port, aet, study.uid)  # Orthanc reads its files once

    cpu: dict[str, list[float]] = {}  # name: [user, system, bytes]

    def count_cpu(name: str, pids: list[int], work: Callable[[], Transfer]) -> Transfer:
        before = cpu_split(pids)
        transfer = work()
        after = cpu_split(pids)
        got = cpu.setdefault(name, [0.0, 0.0, 0.0])
        got[0] += after[0] - before[0]
        got[1] += after[1] - before[1]
        got[2] += transfer.size
        return transfer

    def record(name: str, transfer: Transfer) -> None:
        nonlocal errors
        if not transfer.ok:
            log(f"dimse: {name} failed ({transfer})")
            errors += 1
            return
        runs[name].append(transfer.seconds)
        sizes[name] = transfer.size
        if name in first:
            first[name].append(transfer.first_byte)

    for trial in range(trials):
        before = resource.getrusage(resource.RUSAGE_SELF)
        seconds, size, count = pynetdicom_get(host, port, aet, study.uid)
        after = resource.getrusage(resource.RUSAGE_SELF)
        got = cpu.setdefault("pynetdicom", [0.0, 0.0, 0.0])
        got[0] += after.ru_utime - before.ru_utime
        got[1] += after.ru_stime - before.ru_stime
        got[2] += size
        runs["pynetdicom"].append(seconds)
        sizes["pynetdicom"] = size
        seconds, size, count = dcmtk_getscu(host, port, aet, study.uid)
        if count != study.instances:
            log(f"dimse: getscu wrote {count} files of {study.instances}")
            errors += 1
        runs["getscu"].append(seconds)
        sizes["getscu"] = size
        with running(new_gateway(trial)) as gateway:
            for site in ("get", "move"):
                _search(gateway.root(site), patient_id)
            pids = gateway.pids()
            for site in ("get", "move"):
                get = functools.partial(curl_get, study.url(gateway.root(site)))
                record(site, count_cpu(site, pids, get))
            for _ in range(warm):
                get = functools.partial(curl_get, study.url(gateway.root("get")))
                record("warm", count_cpu("warm", pids, get))
            if gateway.tracebacks():
                log(f"dimse: the gateway logged a traceback ({gateway.log_path})")
                errors += 1
        for _ in range(warm):
            record("dicomweb", curl_get(direct_url))
    med = {k: median(v) for k, v in runs.items()}
    # Throughput ratios on the bytes each moved (the multipart answer carries a little more).
    speed = {k: sizes.get(k, 0) / med[k] / 1e6 for k in runs if runs[k]}
    part10 = sizes.get("getscu", 0)
    return {
        "study_bytes": part10,
        "instances": study.instances,
        "trials": trials,
        "median_s": {k: round(v, 3) for k, v in med.items()},
        "mb_s": {k: round(v, 1) for k, v in speed.items()},
        "first_part_s": {k: round(median(v), 3) for k, v in first.items()},
        "first_part_fraction": {k: round(median(v) / med[k], 4) for k, v in first.items() if v},
        "ratio": {
            "get_vs_pynetdicom": round(speed["get"] / speed["pynetdicom"], 3),
            "get_vs_getscu": round(speed["get"] / speed["getscu"], 3),
            "move_vs_pynetdicom": round(speed["move"] / speed["pynetdicom"], 3),
            "move_vs_getscu": round(speed["move"] / speed["getscu"], 3),
            "warm_vs_dicomweb": round(speed["warm"] / speed["dicomweb"], 3),
        },
        # CPU seconds per GB moved, user + system: the gateway's for its retrieves (cold: the
        # DIMSE side, the cache and the client's stream; warm: the stream from the cache),
        # the bench process's for the bare pynetdicom C-GET.
        "cpu_s_per_gb": {
            k: {"user": round(u / (n / 1e9), 2), "system": round(sy / (n / 1e9), 2)}
            for k, (u, sy, n) in cpu.items()
            if n
        },
        "errors": errors,
    }
