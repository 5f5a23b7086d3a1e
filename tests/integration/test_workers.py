"""``serve --workers N`` in front of the real Orthanc: connections spread over N processes on
one port, ``/metrics`` on any of them sums them all, a killed worker is replaced, SIGTERM to
the supervisor during a large retrieve ends it cleanly and leaves no process behind, and the
supervisor gives up (non-zero) when its workers keep dying."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

from ncpeh_dicomweb.dicomweb import multipart
from ncpeh_dicomweb.web.metrics import PUBLISH_SECONDS
from tests.conftest import ROOT, Pacs, free_port, start_gateway, stop_gateway
from tests.integration.test_metrics import AS_STORED, Samples, moved, scrape

pytestmark = pytest.mark.integration

WORKERS = 3


@dataclass(frozen=True)
class Workers:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children()


def _config(work: Path, pacs: Pacs, port: int, *, sqlite: str | None = None) -> Path:
    config = work / "gateway.toml"
    config.write_text(
        f"""
default_site = "main"
public_url = "http://127.0.0.1:{port}"
[server]
port = {port}
workers = {WORKERS}
[[sites]]
id = "main"
url = "{pacs.dicomweb_root}"
iocm = false
[state]
sqlite = "{sqlite or work / "state.sqlite3"}"
[audit]
jsonl_path = "{work / "audit.jsonl"}"
"""
    )
    return config


def _start(work: Path, pacs: Pacs) -> Workers:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "gateway.log"
    proc = start_gateway(_config(work, pacs, port), log, url)
    workers = Workers(url, proc, log)
    _until(lambda: len(_serving(workers)) == WORKERS, "every worker listening")
    return workers


def _serving(workers: Workers) -> list[psutil.Process]:
    """The workers listening on the port now."""
    port = int(workers.url.rsplit(":", 1)[1])
    listening = []
    for child in workers.children():
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just died
            if any(c.laddr.port == port and c.status == "LISTEN" for c in child.net_connections()):
                listening.append(child)
    return listening


def _until(ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def workers(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    running = _start(tmp_path_factory.mktemp("workers"), pacs)
    try:
        yield running
    finally:
        stop_gateway(running.proc, running.log)


def _pid_of_answer(url: str) -> int:
    # A connection of its own each time (no session): the kernel picks a worker per connection.
    answer = requests.get(f"{url}/health/stats", timeout=30)
    assert answer.status_code == 200
    return int(answer.json()["pid"])


def _study(pacs: Pacs) -> dict[str, str]:
    return pacs.manifest["core"]["studies"][0]  # type: ignore[no-any-return]


def test_concurrent_requests_are_answered_by_every_worker(workers: Workers, pacs: Pacs) -> None:
    study = _study(pacs)

    def search(_: int) -> int:
        answer = requests.get(
            f"{workers.url}/dicom-web/studies",
            params={"PatientID": study["patient_id"]},
            timeout=60,
        )
        return answer.status_code

    with ThreadPoolExecutor(12) as pool:
        pids = list(pool.map(lambda _: _pid_of_answer(workers.url), range(60)))
        statuses = list(pool.map(search, range(48)))
    assert statuses == [200] * 48
    children = {c.pid for c in workers.children()}
    assert len(children) == WORKERS
    assert set(pids) == children  # all three answered, and only they (not the supervisor)
    assert all(c.status() != psutil.STATUS_ZOMBIE for c in workers.children())


def test_metrics_on_any_worker_sum_all_of_them(workers: Workers, pacs: Pacs) -> None:
    study = _study(pacs)
    time.sleep(2 * PUBLISH_SECONDS)  # what each worker counted so far is published
    _, before = scrape(workers.url)
    count = 30

    def search(_: int) -> int:
        answer = requests.get(  # a connection each: spread over the workers
            f"{workers.url}/dicom-web/studies",
            params={"PatientID": study["patient_id"]},
            timeout=60,
        )
        return answer.status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(search, range(count))) == [200] * count
    search_200 = {"route": "/dicom-web/studies", "method": "GET", "status": "200"}
    # Counted where they happened, read from every worker's file by whichever one is asked.
    for _ in range(6):
        _, after = scrape(workers.url)
        assert moved(before, after, "ncpeh_http_requests_total", **search_200) == count
        assert after[("ncpeh_workers", ())] == WORKERS
    # What the backends count themselves reaches the others within a publishing period.
    published: list[Samples] = []

    def pacs_requests_seen() -> bool:
        published[:] = [scrape(workers.url)[1]]
        return moved(before, published[0], "ncpeh_pacs_http_requests_total", site="main") == count

    _until(pacs_requests_seen, "the workers' PACS request counts", timeout=10)


def test_a_killed_worker_is_replaced(workers: Workers) -> None:
    _, before = scrape(workers.url)
    victim = workers.children()[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    # Meanwhile the others answer.
    assert all(requests.get(f"{workers.url}/health/live", timeout=10).ok for _ in range(20))
    _until(lambda: len(_serving(workers)) == WORKERS, "a new worker listening")
    assert victim.pid not in {c.pid for c in workers.children()}
    _, after = scrape(workers.url)
    assert after[("ncpeh_workers", ())] == WORKERS  # the dead one's gauges are gone
    # ... its counts are not: totals never go back.
    for key, value in before.items():
        if key[0] == "ncpeh_http_requests_total":
            assert after[key] >= value, key
    assert "died (signal SIGKILL)" in workers.log.read_text()


def test_sigterm_during_a_large_retrieve_ends_it_cleanly(pacs: Pacs, tmp_path: Path) -> None:
    running = _start(tmp_path, pacs)
    family = [running.proc.pid] + [
        p.pid for p in psutil.Process(running.proc.pid).children(recursive=True)
    ]
    large = pacs.manifest["large"]["studies"][0]["study_uid"]
    want = pacs.manifest["large"]["bytes"]
    complete = False
    got = 0
    with requests.get(
        f"{running.url}/dicom-web/studies/{large}",
        headers={"Accept": AS_STORED},
        stream=True,
        timeout=60,
    ) as answer:
        assert answer.status_code == 200
        reader = multipart.MultipartReader(
            multipart.boundary_from_content_type(answer.headers["Content-Type"])
        )
        chunks = answer.iter_content(1 << 20)
        for _ in range(4):
            got += len(next(chunks))
        running.proc.send_signal(signal.SIGTERM)
        try:
            for chunk in chunks:
                reader.feed(chunk)
                got += len(chunk)
            reader.finish()  # raises if the body ended short of its closing boundary
            complete = True
        except (requests.exceptions.ChunkedEncodingError, requests.ConnectionError, ValueError):
            pass  # cut: the client can tell it is not whole
    assert running.proc.wait(timeout=60) == 0
    assert complete or got < want  # finished, or cut and known to be cut
    _until(lambda: not any(psutil.pid_exists(pid) and _alive(pid) for pid in family), "exit")
    orphans = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if f"--supervisor {running.proc.pid}" in " ".join(p.info["cmdline"] or ())
    ]
    assert orphans == []
    text = running.log.read_text()
    assert "Traceback" not in text
    assert text.count("stopped (exit status 0)") == WORKERS


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_supervisor_gives_up_when_workers_keep_dying(pacs: Pacs, tmp_path: Path) -> None:
    # A state file no worker can open: each dies at start-up.
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    config = _config(tmp_path, pacs, free_port(), sqlite=str(blocked / "state.sqlite3"))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ncpeh_dicomweb.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert "workers died within 60s: giving up" in done.stderr
    assert time.monotonic() - started < 60


def test_several_workers_refuse_a_c_move_site(tmp_path: Path) -> None:
    config = tmp_path / "move.toml"
    config.write_text(
        '[[sites]]\nid = "move"\nkind = "dimse"\nhost = "127.0.0.1"\nport = 104\n'
        'called_aet = "PACS"\nretrieve = "c-move"\nstore_port = 11199\n'
    )
    command = [sys.executable, "-m", "ncpeh_dicomweb.cli", "check-config", "--config"]
    done = subprocess.run(
        [*command, str(config), "--workers", "2"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "site 'move' retrieves with C-MOVE" in done.stderr
    assert "store_port 11199" in done.stderr
    one = subprocess.run([*command, str(config)], capture_output=True, text=True, timeout=60)
    assert one.returncode == 0 and "1 worker(s)" in one.stdout
