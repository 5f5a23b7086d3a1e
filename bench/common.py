"""What every measurement of ``bench/`` shares: the gateway process, curl transfers, /proc.

The gateway runs as a user runs it (``python -m ncpeh_dicomweb.cli serve --config FILE``, its
own process, or a supervisor and N workers); the bench process is only the client. Study
retrieves are made by curl (one process each, writing to /dev/null), so the client costs the
two shared cores as little as it can; searches by an aiohttp client.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DICOM_JSON = "application/dicom+json"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (``export`` allowed), as scripts/orthanc.sh writes them."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.removeprefix("export ").strip(): v.strip().strip('"') for k, v in pairs}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank: of 100 values, p99 is the second largest."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-len(ordered) * q // 100))  # ceil
    return ordered[int(rank) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def cpu_split(pids: Sequence[int]) -> tuple[float, float]:
    """(utime, stime) of these processes (all their threads), seconds: user and kernel."""
    user = system = 0
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = _stat_fields(pid)
            user += int(fields[11])  # utime: field 14 of /proc/PID/stat
            system += int(fields[12])  # stime: field 15
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of these processes (all their threads), seconds."""
    return sum(cpu_split(pids))


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError, IndexError):
                fields = _stat_fields(int(entry.name))
                if int(fields[1]) == pid and fields[0] != "Z":
                    found.append(int(entry.name))
    return found


def status_kb(pid: int, field_name: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def reset_peak(pids: Sequence[int]) -> None:
    """Reset VmHWM to the current RSS (clear_refs 5, Linux >= 4.0)."""
    for pid in pids:
        Path(f"/proc/{pid}/clear_refs").write_text("5")


# ---------------------------------------------------------------------------- curl


@dataclass(frozen=True)
class Transfer:
    """One HTTP GET made by curl."""

    status: int
    size: int  # bytes of the body
    first_byte: float  # seconds to the first byte of the answer (after the headers)
    seconds: float  # to the end of the body
    exit_code: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.status == 200


CURL_FORMAT = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"


def curl_command(url: str, accept: str) -> list[str]:
    head = ["curl", "-sS", "--max-time", "600", "-o", "/dev/null"]
    return [*head, "-H", f"Accept: {accept}", "-w", CURL_FORMAT, url]


def parse_curl(out: str, exit_code: int) -> Transfer:
    parts = out.split()
    if len(parts) != 4:
        return Transfer(0, 0, float("nan"), float("nan"), exit_code or 1)
    return Transfer(int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3]), exit_code)


def curl_get(url: str, accept: str = AS_STORED) -> Transfer:
    done = subprocess.run(curl_command(url, accept), capture_output=True, text=True, check=False)
    return parse_curl(done.stdout, done.returncode)


def curl_many(urls: Sequence[str], accept: str = AS_STORED) -> tuple[list[Transfer], float]:
    """Every URL fetched at once, one curl each; (transfers, wall seconds to the last)."""
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            curl_command(url, accept), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for url in urls
    ]
    results = []
    for proc in procs:
        out, _err = proc.communicate()
        results.append(parse_curl(out, proc.returncode))
    return results, time.perf_counter() - started


# ---------------------------------------------------------------------------- the gateway


@dataclass
class Gateway:
    """A gateway process started from a TOML config written into ``work``."""

    work: Path
    config: str
    port: int
    workers: int = 1
    profile: Path | None = None  # run it under bench/sampler.py, its report written here
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.work / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def root(self, site: str | None = None) -> str:
        return f"{self.url}/dicom-web" if site is None else f"{self.url}/site/{site}/dicom-web"

    def start(self, timeout: float = 60.0) -> Gateway:
        self.work.mkdir(parents=True, exist_ok=True)
        path = self.work / "gateway.toml"
        path.write_text(self.config)
        command = [sys.executable, "-m", "ncpeh_dicomweb.cli", "serve", "--config", str(path)]
        if self.profile is not None:  # bench/sampler.py: every thread, sampled
            command[1:1] = [str(ROOT / "bench" / "sampler.py"), str(self.profile), "--"]
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the gateway did not start:\n{tail}")
            if len(self._answering()) >= self.workers:
                return self
            time.sleep(0.1)

    def _answering(self) -> set[int]:
        """Pids of the workers answering /health/stats on new connections (a few tries)."""
        pids: set[int] = set()
        for _ in range(4 * self.workers if self.workers > 1 else 1):
            try:
                with urllib.request.urlopen(f"{self.url}/health/stats", timeout=2) as answer:
                    body = answer.read()
            except (OSError, urllib.error.URLError):
                return pids
            pids.add(int(json.loads(body)["pid"]))
        return pids

    def pids(self) -> list[int]:
        """The processes serving: the gateway itself, or its workers (and the supervisor)."""
        assert self.proc is not None
        return [self.proc.pid, *children(self.proc.pid)]

    def serving_pids(self) -> list[int]:
        """The processes that serve requests (one, or the N workers)."""
        assert self.proc is not None
        return children(self.proc.pid) if self.workers > 1 else [self.proc.pid]

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def tracebacks(self) -> bool:
        return "Traceback" in self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running(gateway: Gateway) -> Iterator[Gateway]:
    gateway.start()
    try:
        yield gateway
    finally:
        gateway.stop()


def gateway_config(
    work: Path,
    port: int,
    sites: str,
    *,
    default_site: str,
    workers: int = 1,
    extra: str = "",
) -> str:
    """A gateway config: the ``[[sites]]`` given, state and audit trail in ``work``.

    Every client of the bench comes from 127.0.0.1, so the per-client stream limit (32) is
    raised: 32 retrieves plus a search load from one address are 32 clients here."""
    return (
        f'default_site = "{default_site}"\n'
        f"[server]\nport = {port}\nworkers = {workers}\n"
        "[limits]\nmax_streams_per_client = 1000\n"
        f"{sites}\n"
        f'[state]\nsqlite = "{work / "state.sqlite3"}"\n'
        f'[audit]\njsonl_path = "{work / "audit.jsonl"}"\n'
        f"{extra}"
    )


def dicomweb_site(site_id: str, url: str) -> str:
    return f'[[sites]]\nid = "{site_id}"\nurl = "{url}"\n'


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


# ---------------------------------------------------------------------------- studies


@dataclass(frozen=True)
class StudyRef:
    uid: str
    series: tuple[str, ...]
    instances: int
    size: int = 0  # bytes of the WADO-RS multipart answer from the PACS (measured)

    def url(self, root: str) -> str:
        return f"{root}/studies/{self.uid}"


async def find_study(root: str, patient_id: str, accession: str | None = None) -> StudyRef | None:
    """The study of this patient (and accession) on a DICOMweb root, with its series."""
    query = f"PatientID={patient_id}" + (f"&AccessionNumber={accession}" if accession else "")
    fields = "includefield=00201208"  # NumberOfStudyRelatedInstances
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{root}/studies?{query}&{fields}") as r:
            r.raise_for_status()
            studies: list[dict[str, Any]] = await r.json(content_type=None)
        if not studies:
            return None
        uid = str(studies[0]["0020000D"]["Value"][0])
        count = int(studies[0].get("00201208", {}).get("Value", [0])[0])
        async with s.get(f"{root}/studies/{uid}/series") as r:
            r.raise_for_status()
            series: list[dict[str, Any]] = await r.json(content_type=None)
    numbered = sorted(
        (int(d.get("00200011", {}).get("Value", [0])[0]), str(d["0020000E"]["Value"][0]))
        for d in series
    )
    return StudyRef(uid, tuple(u for _n, u in numbered), count)
