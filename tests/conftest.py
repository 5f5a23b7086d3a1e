"""Session-wide real parts: an Orthanc PACS started by our own script, and the gateway."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.servers import read_env

pytest_plugins = ["tests.pg", "tests.rsyslog"]  # a real PostgreSQL, a real rsyslogd (ATNA)
ROOT = Path(__file__).resolve().parent.parent
# The FHIR identifier system of the sample Czech patient's issuer (CZ-NCPEH in DICOM).
CZ_SYSTEM = "urn:oid:1.2.203.24341.1.2"
ORTHANC_SH = ROOT / "scripts" / "orthanc.sh"


@dataclass(frozen=True)
class Pacs:
    dicomweb_root: str
    url: str
    state_dir: Path
    manifest: dict[str, Any]
    dicom_port: int
    aet: str


@dataclass(frozen=True)
class Gateway:
    url: str  # http://127.0.0.1:PORT
    pid: int
    log: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _manifest(state_dir: Path) -> dict[str, Any]:
    path = state_dir / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


@pytest.fixture(scope="session")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    """A real Orthanc + DICOMweb plugin on loopback, loaded with the sample sets.

    Set NCPEH_TEST_ORTHANC_DIR to the state dir of an Orthanc already started with
    `make pacs-up LOAD="core large testdata"` to reuse it (fast edit-test loop).
    """
    reuse = os.environ.get("NCPEH_TEST_ORTHANC_DIR")
    if reuse:
        state = Path(reuse)
        env = read_env(state / "env")
        yield _pacs(env, state)
        return
    state = tmp_path_factory.mktemp("orthanc")
    path = f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}"
    started = subprocess.run(
        [
            "bash",
            str(ORTHANC_SH),
            "start",
            "--dir",
            str(state),
            "--load",
            "core",
            "--load",
            "large",
            "--load",
            "testdata",
        ],
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if started.returncode != 0:
        pytest.fail(f"could not start Orthanc:\n{started.stderr[-3000:]}")
    try:
        yield _pacs(read_env(state / "env"), state)
    finally:
        subprocess.run(
            ["bash", str(ORTHANC_SH), "stop", "--dir", str(state), "--purge"],
            capture_output=True,
            timeout=60,
        )


def _pacs(env: dict[str, str], state: Path) -> Pacs:
    return Pacs(
        dicomweb_root=env["DICOMWEB_ROOT"],
        url=env["ORTHANC_URL"],
        state_dir=state,
        manifest=_manifest(state),
        dicom_port=int(env["ORTHANC_DICOM_PORT"]),
        aet=env["ORTHANC_AET"],
    )


@pytest.fixture(scope="session")
def gateway(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway as users run it: its console script, in its own process."""
    work = tmp_path_factory.mktemp("gateway")
    port = free_port()
    config = work / "gateway.toml"
    config.write_text(
        f"""
default_site = "main"
# dicomweb-client sends "Host: 127.0.0.1" without the port: name the public URL, as a
# deployment behind a proxy would.
public_url = "http://127.0.0.1:{port}"
[server]
host = "127.0.0.1"
port = {port}
[[sites]]
id = "main"
url = "{pacs.dicomweb_root}"
[[sites]]
id = "second"
url = "{pacs.dicomweb_root}"
[state]
sqlite = "{work / "state.sqlite3"}"
[fhir.patient_id_issuers]
"{CZ_SYSTEM}" = "CZ-NCPEH"
"""
    )
    log = work / "gateway.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_gateway(config, log, url)
    try:
        yield Gateway(url=url, pid=proc.pid, log=log)
    finally:
        stop_gateway(proc, log)


# ---------------------------------------------------------------------- DIMSE sites

MOVE_AET = "NCPEH-MOVE"


@dataclass(frozen=True)
class DimseGateway:
    """A gateway with the same Orthanc behind three sites: DICOMweb, C-GET and C-MOVE."""

    url: str
    pid: int
    cache_root: Path

    def root(self, site: str) -> str:
        return f"{self.url}/site/{site}/dicom-web"


def write_dimse_config(
    work: Path,
    port: int,
    web_root: str,
    *,
    dimse_port: int,
    dimse_aet: str,
    prefix: str,
    get_aets: tuple[str, str],
    move_aets: tuple[str, str],
    store_ports: tuple[int, int],
    database_url: str | None = None,
    config_name: str = "gateway",
    auth: str = "",
    audit: str = "",
    iocm_refresh: float | None = None,
) -> Path:
    """A gateway config: site "web" (the Orthanc DICOMweb root, for comparison) and four DIMSE
    sites on one PACS: {prefix}get, {prefix}move, and -nocache twins whose cache is too small to
    keep a study (every retrieve goes to the PACS; no IOCM filter; their C-GET and storage SCP
    are pynetdicom's, the others' the native ones). Its store is
    ``work/state.sqlite3``, or the PostgreSQL database ``database_url``; the file is
    ``work/{config_name}.toml``. ``iocm_refresh``: every site's ``iocm_refresh_seconds``
    (default: the gateway's)."""
    iocm = "" if iocm_refresh is None else f"\niocm_refresh_seconds = {iocm_refresh}"
    sites = [f'[[sites]]\nid = "web"\nurl = "{web_root}"{iocm}']
    variants = [
        ("get", "c-get", get_aets[0], None, False),
        ("move", "c-move", move_aets[0], store_ports[0], False),
        ("get-nocache", "c-get", get_aets[1], None, True),
        ("move-nocache", "c-move", move_aets[1], store_ports[1], True),
    ]
    for name, method, aet, store_port, small in variants:
        site = prefix + name
        lines = [
            "[[sites]]",
            f'id = "{site}"',
            'kind = "dimse"',
            'host = "127.0.0.1"',
            f"port = {dimse_port}",
            f'called_aet = "{dimse_aet}"',
            f'calling_aet = "{aet}"',
            f'retrieve = "{method}"',
            f'cache_dir = "{work / ("cache-" + site)}"',
        ]
        if store_port is not None:
            lines.append(f"store_port = {store_port}")
        if small:
            # Their counters count the clients' retrieves only: no IOCM reading of KO series.
            lines += ["cache_max_bytes = 1048576", "iocm = false"]
        if small:  # pynetdicom's C-GET and storage SCP, beside the native ones of the others
            lines.append("native_dimse = false")
        sites.append("\n".join(lines) + iocm)
    config = work / f"{config_name}.toml"
    # The audit trail in the work dir (the lines of an [audit] section given replace it).
    default_audit = f'jsonl_path = "{work / config_name}-audit.jsonl"'
    config.write_text(
        f'public_url = "http://127.0.0.1:{port}"\ndefault_site = "web"\n'
        f"[server]\nport = {port}\n"
        # Loopback is the trusted proxy here (tests send Forwarded); one origin may use CORS.
        'trusted_proxies = ["127.0.0.1"]\ncors_origins = ["https://viewer.example"]\n'
        + "\n".join(sites)
        + f'\n[state]\nsqlite = "{work / "state.sqlite3"}"\n'
        + (f'database_url = "{database_url}"\n' if database_url else "")
        + f'[fhir.patient_id_issuers]\n"{CZ_SYSTEM}" = "CZ-NCPEH"\n'
        + (f"[auth]\n{auth}\n" if auth else "")  # the lines of an [auth] section, if given
        + f"[audit]\n{audit or default_audit}\n"
    )
    return config


def start_gateway(config: Path, log: Path, url: str) -> subprocess.Popen[bytes]:
    """The gateway's console script in its own process; returns once it answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ncpeh_dicomweb.cli", "serve", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{url}/health/live", timeout=1).status_code == 200:
                return proc
        except requests.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"gateway did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def stop_gateway(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Ctrl-C it, and fail if it ever logged a traceback."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=40)  # streams under way get [server] shutdown_grace (20 s) to finish
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    text = log.read_text()
    assert "Traceback" not in text, f"gateway logged a traceback:\n{text[-3000:]}"


@pytest.fixture(scope="session")
def dimse_gateway(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DimseGateway]:
    work = tmp_path_factory.mktemp("dimse-gateway")
    get_aets, move_aets = ("NCPEH-GET", "NCPEH-GET2"), (MOVE_AET, f"{MOVE_AET}2")
    # IOCM notes read at start and then hourly: tests counting what the PACS is asked see no
    # reading of them in between (test_iocm.py has a gateway of its own reading them always).
    with running_dimse_gateway(pacs, work, "", get_aets, move_aets, iocm_refresh=3600) as gateway:
        yield gateway


@contextlib.contextmanager
def running_dimse_gateway(
    pacs: Pacs,
    work: Path,
    prefix: str,
    get_aets: tuple[str, str],
    move_aets: tuple[str, str],
    *,
    forget_destinations: bool = False,
    database_url: str | None = None,
    auth: str = "",
    audit: str = "",
    iocm_refresh: float | None = None,
) -> Iterator[DimseGateway]:
    """A gateway process with the sites of :func:`write_dimse_config`, its C-MOVE destinations
    registered in Orthanc (through its REST API) first; removed again if asked."""
    port, store_ports = free_port(), (free_port(), free_port())
    for aet, store in zip(move_aets, store_ports, strict=True):
        registered = requests.put(
            f"{pacs.url}/modalities/{aet}",
            json={"AET": aet, "Host": "127.0.0.1", "Port": store},
            timeout=10,
        )
        assert registered.status_code == 200, registered.text
    config = write_dimse_config(
        work,
        port,
        pacs.dicomweb_root,
        dimse_port=pacs.dicom_port,
        dimse_aet=pacs.aet,
        prefix=prefix,
        get_aets=get_aets,
        move_aets=move_aets,
        store_ports=store_ports,
        database_url=database_url,
        auth=auth,
        audit=audit,
        iocm_refresh=iocm_refresh,
    )
    log = work / "gateway.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_gateway(config, log, url)
    try:
        yield DimseGateway(url=url, pid=proc.pid, cache_root=work)
    finally:
        stop_gateway(proc, log)
        if forget_destinations:
            for aet in move_aets:
                requests.delete(f"{pacs.url}/modalities/{aet}", timeout=10)


# ---------------------------------------------------------------------- pydicom's test files


@dataclass(frozen=True)
class Loaded:
    """A pydicom test file as the PACS holds it (its UIDs may have been made unique)."""

    study: str
    series: str
    sop: str
    path: Path  # a copy of the file the PACS stores

    def url(self, gw: DimseGateway | Gateway, site: str | None = None) -> str:
        root = gw.root(site) if isinstance(gw, DimseGateway) else gw.dicomweb
        return f"{root}/studies/{self.study}/series/{self.series}/instances/{self.sop}"


@pytest.fixture(scope="session")
def loaded(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Loaded]:
    by_file = pacs.manifest["testdata"]["by_file"]
    folder = tmp_path_factory.mktemp("stored")

    def get(name: str) -> Loaded:
        uids = by_file[name]
        path = folder / name
        if not path.exists():
            found = requests.post(f"{pacs.url}/tools/lookup", data=uids["sop"], timeout=30)
            (orthanc_id,) = [r["ID"] for r in found.json() if r["Type"] == "Instance"]
            stored = requests.get(f"{pacs.url}/instances/{orthanc_id}/file", timeout=30)
            path.write_bytes(stored.content)
        return Loaded(uids["study"], uids["series"], uids["sop"], path)

    return get
