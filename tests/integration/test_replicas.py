"""Three gateway replicas behind a real nginx (Debian's, started by ``scripts/nginx.sh`` with
``deploy/nginx/``'s config), in front of the real Orthanc, sharing one PostgreSQL state store.

- One study's retrieves always land on one replica (nginx's access log and every replica's
  ``/metrics`` agree), whose DIMSE cache answers them after the first; studies spread.
- Each replica's C-MOVE site has an AE title and store port of its own.
- URLs in answers name nginx, whatever the client forges, because nginx is the replicas'
  trusted proxy; ``X-Request-ID`` goes through; what one replica served, another knows
  (PostgreSQL).
- A replica SIGKILLed under load loses only the streams it was serving: each failed request
  was on it and under way at the kill; every request after the kill succeeds, its studies
  going to the other replicas, and only its studies moving (consistent hashing).
"""

from __future__ import annotations

import functools
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from ncpeh_dicomweb.dicomweb import multipart
from tests.conftest import ROOT, Pacs, free_port, start_gateway, stop_gateway
from tests.integration.test_metrics import AS_STORED, Samples, moved, scrape
from tests.servers import read_env, run_script

pytestmark = pytest.mark.integration

NGINX_SH = ROOT / "scripts" / "nginx.sh"
REPLICAS = 3
STUDY_ROUTE = "/site/{site}/dicom-web/studies/{study}"
INSTANCE_ROUTE = STUDY_ROUTE + "/series/{series}/instances/{instance}"
RETRIEVE_URL = "00081190"
# A line of the access log deploy/nginx/ writes (its `ncpeh_replicas` format).
_LOG_LINE = re.compile(
    r'^\S+ \[[^\]]+\] (?P<id>\S+) "(?P<method>\S+) (?P<path>\S+)" (?P<status>\d+) (?P<bytes>\d+) '
    r"\S+ upstream=(?P<upstream>.*) upstream_status=(?P<upstream_status>.*)$"
)


@dataclass
class Replica:
    index: int
    port: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None  # replaced when started again

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:  # as nginx names it in $upstream_addr
        return f"127.0.0.1:{self.port}"


@dataclass(frozen=True)
class Cluster:
    url: str  # nginx
    access_log: Path
    replicas: list[Replica]

    def root(self, site: str) -> str:
        return f"{self.url}/site/{site}/dicom-web"

    def by_address(self, address: str) -> Replica:
        (replica,) = [r for r in self.replicas if r.address == address]
        return replica


@dataclass(frozen=True)
class Routed:
    """What nginx's access log says of one request."""

    status: int
    upstreams: tuple[str, ...]  # every replica tried, in order; the last one answered

    @property
    def replica(self) -> str:
        return self.upstreams[-1]


def _config(work: Path, pacs: Pacs, index: int, port: int, store_port: int, db: str) -> Path:
    """Replica ``index``: the DICOMweb sites "web" (the default) and "second", and two DIMSE
    sites, "get" (C-GET) and "move" (C-MOVE to a store port and AE title of its own), each with
    a cache of its own, all on the same Orthanc; nginx (loopback) as its trusted proxy; the
    shared state in PostgreSQL."""
    dimse = f'kind = "dimse"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\n'
    dimse += f'called_aet = "{pacs.aet}"\niocm = false'  # counts are the test's alone
    config = work / "gateway.toml"
    config.write_text(
        f"""
default_site = "web"
[server]
port = {port}
trusted_proxies = ["127.0.0.1"]
[[sites]]
id = "web"
url = "{pacs.dicomweb_root}"
iocm = false
[[sites]]
id = "second"
url = "{pacs.dicomweb_root}"
iocm = false
[[sites]]
id = "get"
{dimse}
calling_aet = "NCPEH-R{index}-GET"
cache_dir = "{work / "cache-get"}"
[[sites]]
id = "move"
{dimse}
retrieve = "c-move"
calling_aet = "NCPEH-R{index}-MOVE"
store_port = {store_port}
cache_dir = "{work / "cache-move"}"
[state]
database_url = "{db}"
[audit]
jsonl_path = "{work / "audit.jsonl"}"
"""
    )
    return config


def _move_aet(index: int) -> str:
    return f"NCPEH-R{index}-MOVE"


@pytest.fixture(scope="module")
def cluster(
    pacs: Pacs, tmp_path_factory: pytest.TempPathFactory, module_database_url: str
) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("replicas")
    replicas: list[Replica] = []
    for index in range(1, REPLICAS + 1):
        port, store_port = free_port(), free_port()
        # The PACS sends each replica's C-MOVEs to its own AE title and store port.
        registered = requests.put(
            f"{pacs.url}/modalities/{_move_aet(index)}",
            json={"AET": _move_aet(index), "Host": "127.0.0.1", "Port": store_port},
            timeout=10,
        )
        assert registered.status_code == 200, registered.text
        home = work / f"replica{index}"
        home.mkdir()
        config = _config(home, pacs, index, port, store_port, module_database_url)
        replicas.append(Replica(index, port, config, home / "gateway.log", None))

    def start(replica: Replica) -> None:
        replica.proc = start_gateway(replica.config, replica.log, replica.url)

    lb = work / "nginx"
    try:
        with ThreadPoolExecutor(REPLICAS) as pool:  # a couple of seconds each: at once
            list(pool.map(start, replicas))
        upstreams = [arg for r in replicas for arg in ("--upstream", r.address)]
        started = run_script(NGINX_SH, "start", str(lb), *upstreams, timeout=60)
        assert started.returncode == 0, started.stderr[-3000:]
        env = read_env(lb / "env")
        yield Cluster(env["NCPEH_NGINX_URL"], Path(env["NCPEH_NGINX_ACCESS_LOG"]), replicas)
    finally:
        if (lb / "env").exists():
            run_script(NGINX_SH, "stop", str(lb), "--purge", timeout=60)
        for replica in replicas:
            if replica.proc is not None:
                stop_gateway(replica.proc, replica.log)
            requests.delete(f"{pacs.url}/modalities/{_move_aet(replica.index)}", timeout=10)


# ---------------------------------------------------------------------- helpers


def _routed(cluster: Cluster, ids: set[str], timeout: float = 10.0) -> dict[str, Routed]:
    """The access log's word on these request ids (nginx writes a line as a request ends)."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, Routed] = {}
        for line in cluster.access_log.read_text().splitlines():
            match = _LOG_LINE.match(line)
            if match and match["id"] in ids:
                tried = tuple(a for a in re.split(r", | : ", match["upstream"]) if a != "-")
                found[match["id"]] = Routed(int(match["status"]), tried)
        if len(found) == len(ids) or time.monotonic() > deadline:
            assert set(found) == ids, f"not in nginx's access log: {sorted(ids - set(found))}"
            return found
        time.sleep(0.1)


def _scrape_all(cluster: Cluster) -> dict[int, Samples]:
    return {r.index: scrape(r.url)[1] for r in cluster.replicas}


def _core(pacs: Pacs) -> list[dict[str, Any]]:
    return pacs.manifest["core"]["studies"]  # type: ignore[no-any-return]


def _instances(study: dict[str, Any]) -> int:
    return sum(len(series["instances"]) for series in study["series"])


@dataclass
class Fetched:
    request_id: str
    study: str
    started: float
    ended: float = 0.0
    status: int | None = None
    complete: bool = False  # the whole multipart body, closing boundary and all
    error: str | None = None
    size: int = 0


_ids = iter(range(1 << 30))
_ids_lock = threading.Lock()


def _request_id(prefix: str) -> str:
    with _ids_lock:
        return f"{prefix}-{next(_ids)}"


def _retrieve(
    url: str, study: str, prefix: str, on_bytes: Callable[[int], None] | None = None
) -> Fetched:
    """One study retrieve, read to its end; never raises (what went wrong is in the record)."""
    fetched = Fetched(_request_id(prefix), study, time.monotonic())
    tail = b""
    boundary = ""
    try:
        with requests.get(
            url,
            headers={"Accept": AS_STORED, "X-Request-ID": fetched.request_id},
            stream=True,
            timeout=(5, 60),
        ) as answer:
            fetched.status = answer.status_code
            if answer.status_code == 200:
                boundary = multipart.boundary_from_content_type(answer.headers["Content-Type"])
            for chunk in answer.iter_content(1 << 16):
                fetched.size += len(chunk)
                tail = (tail + chunk)[-256:]
                if on_bytes is not None:
                    on_bytes(fetched.size)
        closing = f"--{boundary}--".encode()
        fetched.complete = bool(boundary) and tail.rstrip(b"\r\n").endswith(closing)
    except requests.RequestException as exc:  # cut short: a broken chunked body, a reset
        fetched.error = type(exc).__name__
    fetched.ended = time.monotonic()
    return fetched


# ---------------------------------------------------------------------- affinity and caches


def test_a_studys_retrieves_land_on_one_replica_and_hit_its_cache(
    cluster: Cluster, pacs: Pacs
) -> None:
    studies = _core(pacs)
    owner_of: dict[str, int] = {}
    requests_per_replica: Counter[int] = Counter()
    answers_from_cache: Counter[int] = Counter()
    study_200 = {"route": STUDY_ROUTE, "method": "GET", "status": "200"}
    instance_200 = {"route": INSTANCE_ROUTE, "method": "GET", "status": "200"}
    for study in studies:
        uid = study["study_uid"]
        series = study["series"][0]
        one = f"{uid}/series/{series['uid']}/instances/{series['instances'][0]}"
        before = _scrape_all(cluster)
        fetched = [
            _retrieve(f"{cluster.root('get')}/studies/{uid}", uid, "affinity") for _ in range(3)
        ]
        fetched.append(_retrieve(f"{cluster.root('get')}/studies/{one}", uid, "affinity"))
        after = _scrape_all(cluster)
        assert all(f.status == 200 and f.complete for f in fetched), fetched
        # nginx sent all four to one replica, first try ...
        routed = _routed(cluster, {f.request_id for f in fetched})
        (owner_address,) = {r.upstreams for r in routed.values()}
        owner = cluster.by_address(owner_address[0]).index
        owner_of[uid] = owner
        # ... and the replicas' own counters say the same: three study answers there, none
        # elsewhere; one C-GET, then twice from the cache alone; the instance then a cache hit.
        for index, samples in after.items():
            mine = index == owner
            change = functools.partial(moved, before[index], samples)
            answered = change("ncpeh_http_requests_total", **study_200)
            assert answered == (3 if mine else 0), (uid, index)
            assert change("ncpeh_http_requests_total", **instance_200) == (1 if mine else 0)
            assert change("ncpeh_dimse_retrieves_total", site="get") == (1 if mine else 0)
            from_cache = change("ncpeh_dimse_cache_answers_total", site="get")
            assert from_cache == (3 if mine else 0), (uid, index)
            hits = change("ncpeh_instance_cache_hits_total", site="get")
            assert hits == (1 if mine else 0), (uid, index, hits)
            requests_per_replica[index] += int(answered) + (1 if mine else 0)
            answers_from_cache[index] += int(from_cache)
    # Studies spread: more than one replica owns some (14 studies, 3 replicas).
    spread = Counter(owner_of.values())
    assert len(spread) >= 2, spread
    print(
        f"\naffinity: {len(studies)} studies x (3 study + 1 instance retrieves); "
        f"studies per replica {dict(spread)}; "
        f"requests per replica {dict(requests_per_replica)}; "
        f"answers from the DIMSE cache per replica {dict(answers_from_cache)}"
    )


def _owners(cluster: Cluster, studies: list[str]) -> dict[str, str]:
    """The replica nginx routes each study to now: its address, from a search of the study's
    series (on the DICOMweb site: the key is the UID alone, whatever the site)."""
    ids = {}
    for uid in studies:
        ids[uid] = _request_id("probe")
        answer = requests.get(
            f"{cluster.url}/dicom-web/studies/{uid}/series",
            headers={"X-Request-ID": ids[uid]},
            timeout=30,
        )
        assert answer.status_code == 200, (uid, answer.text[:300])
    routed = _routed(cluster, set(ids.values()))
    return {uid: routed[ids[uid]].replica for uid in studies}


def test_a_c_move_site_on_each_replica_has_its_own_ae_title_and_store_port(
    cluster: Cluster, pacs: Pacs
) -> None:
    # One study per replica, over C-MOVE: the PACS sends each to the right replica's store port.
    studies = {s["study_uid"]: s for s in _core(pacs)}
    wanted: dict[int, dict[str, Any]] = {}
    for uid, address in _owners(cluster, list(studies)).items():
        wanted.setdefault(cluster.by_address(address).index, studies[uid])
    assert len(wanted) >= 2
    for owner, study in wanted.items():
        replica = cluster.replicas[owner - 1]
        before = scrape(replica.url)[1]
        uid = study["study_uid"]
        fetched = _retrieve(f"{cluster.root('move')}/studies/{uid}", uid, "move")
        assert fetched.status == 200 and fetched.complete, fetched
        after = scrape(replica.url)[1]
        received = moved(before, after, "ncpeh_dimse_instances_received_total", site="move")
        assert received == _instances(study), (owner, received)


# ---------------------------------------------------------------------- URLs and shared state


def test_urls_in_answers_name_nginx_not_a_replica(cluster: Cluster, pacs: Pacs) -> None:
    study = _core(pacs)[0]
    forged = {  # what a client might send to steer the URLs: nginx replaces or drops it all
        "Forwarded": "host=evil.example;proto=https",
        "X-Forwarded-Host": "evil.example",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Prefix": "/evil",
    }
    for root, site_path in (
        (f"{cluster.url}/dicom-web", "/dicom-web"),
        (cluster.root("get"), "/site/get/dicom-web"),
    ):
        for headers in ({}, forged):
            found = requests.get(
                f"{root}/studies",
                params={"PatientID": study["patient_id"]},
                headers=headers,
                timeout=30,
            )
            assert found.status_code == 200 and found.json()
            for match in found.json():
                url = match[RETRIEVE_URL]["Value"][0]
                assert url.startswith(f"{cluster.url}{site_path}/studies/"), url
    # Metadata through nginx: every BulkDataURI is nginx's too.
    metadata = requests.get(
        f"{cluster.root('get')}/studies/{study['study_uid']}/metadata", timeout=60
    )
    assert metadata.status_code == 200
    bulk = re.findall(r'"BulkDataURI":\s*"([^"]+)"', metadata.text)
    assert bulk and all(u.startswith(cluster.root("get") + "/studies/") for u in bulk)
    # Asked directly (no proxy headers), a replica names itself: nginx's headers are what
    # make the difference.
    direct = requests.get(
        f"{cluster.replicas[0].url}/dicom-web/studies",
        params={"PatientID": study["patient_id"]},
        timeout=30,
    )
    assert direct.json()[0][RETRIEVE_URL]["Value"][0].startswith(cluster.replicas[0].url)


def test_request_ids_go_through_nginx(cluster: Cluster, pacs: Pacs) -> None:
    search = f"{cluster.url}/dicom-web/studies"
    params = {"PatientID": _core(pacs)[0]["patient_id"]}
    # The client's own: passed on, kept by the replica (it trusts nginx), logged by both.
    given = requests.get(search, params=params, headers={"X-Request-ID": "ncp-1234"}, timeout=30)
    assert given.headers["X-Request-ID"] == "ncp-1234"
    # None sent: nginx's $request_id, the one its access log has.
    made = requests.get(search, params=params, timeout=30).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    assert set(_routed(cluster, {"ncp-1234", made})) == {"ncp-1234", made}


def test_an_id_one_replica_served_is_known_to_the_others(cluster: Cluster) -> None:
    # On a site other than the default, an ImagingStudy id is a digest the store keeps: a
    # replica that never served it can read it only from the shared PostgreSQL.
    first, *others = cluster.replicas
    bundle = requests.get(
        f"{first.url}/site/second/fhir/ImagingStudy",
        params={"patient.identifier": "|456789123", "modality": "MR"},
        timeout=60,
    )
    assert bundle.status_code == 200, bundle.text[:300]
    resource = bundle.json()["entry"][0]["resource"]
    resource_id = resource["id"]
    uid = next(i["value"] for i in resource["identifier"] if i["system"] == "urn:dicom:uid")
    assert resource_id not in uid  # a digest: nothing to read it back from but the store
    for replica in others:
        read = requests.get(
            f"{replica.url}/site/second/fhir/ImagingStudy/{resource_id}", timeout=60
        )
        assert read.status_code == 200, (replica.index, read.text[:300])
        assert read.json()["id"] == resource_id


# ---------------------------------------------------------------------- a replica lost


@dataclass
class Load:
    """Threads retrieving studies through nginx until told to stop, on the DICOMweb site (the
    PACS's DIMSE side serves its associations a step at a time, in turn: a load of cold C-GETs
    moved to other replicas would measure that, not nginx)."""

    cluster: Cluster
    large: str
    small: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    large_streaming: threading.Event = field(default_factory=threading.Event)
    done: list[Fetched] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def large_loop(self) -> None:
        def note(size: int) -> None:
            if size >= 8 << 20:  # well under way
                self.large_streaming.set()

        url = f"{self.cluster.url}/dicom-web/studies/{self.large}"
        while not self.stop.is_set():
            self._keep(_retrieve(url, self.large, "large", note))

    def small_loop(self, offset: int) -> None:
        n = offset
        while not self.stop.is_set():
            uid = self.small[n % len(self.small)]
            self._keep(_retrieve(f"{self.cluster.url}/dicom-web/studies/{uid}", uid, "small"))
            n += 1

    def _keep(self, fetched: Fetched) -> None:
        with self.lock:
            self.done.append(fetched)


def test_a_replica_killed_mid_load_loses_only_its_in_flight_streams(
    cluster: Cluster, pacs: Pacs
) -> None:
    large = pacs.manifest["large"]["studies"][0]["study_uid"]
    small = [s["study_uid"] for s in _core(pacs)]
    owners_before = _owners(cluster, [large, *small])
    # The victim: the replica the large study goes to, so that a long stream is surely under
    # way on it when it dies.
    victim = cluster.by_address(owners_before[large])
    survivors = [r for r in cluster.replicas if r is not victim]
    before = {r.index: scrape(r.url)[1] for r in survivors}

    load = Load(cluster, large, small)
    threads = [threading.Thread(target=load.large_loop) for _ in range(2)]
    threads += [threading.Thread(target=load.small_loop, args=(k * 3,)) for k in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert load.large_streaming.wait(60), "the large study never started streaming"
        time.sleep(1.0)  # small retrieves going on on every replica
        load.large_streaming.clear()  # set again by the next chunk of a large stream under way
        assert load.large_streaming.wait(60)
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        victim.proc.wait(timeout=10)
        time.sleep(4.0)  # the load goes on after the kill
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    after = {r.index: scrape(r.url)[1] for r in survivors}

    done = load.done
    routed = _routed(cluster, {f.request_id for f in done})
    failed = [f for f in done if not f.complete]
    on_victim = [f for f in done if routed[f.request_id].replica == victim.address]
    in_flight = [f for f in on_victim if f.started < killed < f.ended]
    after_kill = [f for f in done if f.started > killed]
    # Errors, counted: only streams under way on the victim when it died ...
    assert failed, "no stream was cut: the kill came after the load"
    for f in failed:
        assert routed[f.request_id].replica == victim.address, f
        assert f.started < killed < f.ended, f
    assert len(failed) <= len(in_flight) <= len(threads)
    assert any(f.study == large for f in failed)
    # ... every request after the kill succeeded, none answered by the victim (nginx moved on
    # from it, to the next replica on the ring, without the client seeing anything): the
    # large study too, from another replica.
    assert after_kill and all(f.complete for f in after_kill), [
        f for f in after_kill if not f.complete
    ]
    assert all(routed[f.request_id].replica != victim.address for f in after_kill)
    assert all(routed[f.request_id].status == 200 for f in after_kill)
    assert any(f.study == large for f in after_kill)
    # The victim's studies went elsewhere, and only they moved: every other study stays on its
    # replica (consistent hashing), where its cache is.
    owners_after = _owners(cluster, [large, *small])
    moved_studies = [uid for uid, owner in owners_before.items() if owner == victim.address]
    for uid, owner in owners_before.items():
        if owner == victim.address:
            assert owners_after[uid] != victim.address, uid
        else:
            assert owners_after[uid] == owner, uid
    # The survivors kept serving, and cut nothing.
    served_after = Counter(routed[f.request_id].replica for f in after_kill)
    assert sum(served_after[r.address] for r in survivors) == len(after_kill)
    for replica in survivors:
        for outcome in ("cut", "client-gone"):
            change = moved(
                before[replica.index],
                after[replica.index],
                "ncpeh_http_streams_total",
                route="/dicom-web/studies/{study}",
                outcome=outcome,
            )
            assert change == 0, (replica.index, outcome)
    retried = sum(1 for f in after_kill if len(routed[f.request_id].upstreams) > 1)
    per_replica = Counter(cluster.by_address(routed[f.request_id].replica).index for f in done)
    kinds = Counter(("large" if f.study == large else "small", f.error) for f in failed)
    print(
        f"\nkill: {len(done)} retrieves ({sum(f.study == large for f in done)} of the "
        f"{pacs.manifest['large']['bytes'] >> 20} MiB study)"
        f" in {max(f.ended for f in done) - min(f.started for f in done):.1f} s by "
        f"{len(threads)} clients; per replica {dict(per_replica)}; victim {victim.index} "
        f"(owner of {len(moved_studies)} of {len(owners_before)} studies) had "
        f"{len(in_flight)} under way at the kill, {len(failed)} failed "
        f"({dict(kinds)}); "
        f"after it {len(after_kill)} all complete, on replicas "
        f"{ {cluster.by_address(a).index: n for a, n in served_after.items()} } "
        f"({retried} moved on by nginx after trying the victim)"
    )

    # Back in service (the module's teardown stops it as the others).
    victim.proc = start_gateway(victim.config, victim.log, victim.url)
