"""OHIF, served by the gateway at /viewer/, in headless Chromium: the study list loads, a
patient-name filter narrows it, and each sample study shows a non-blank image, over the
DICOMweb site and the DIMSE sites (C-GET, C-MOVE).

The browser part is ``tests/viewer/check.mjs`` (Node, playwright-core driving Debian's
``chromium``), skipped only when chromium or node is missing (``make deps-browser`` installs
both). First, the viewer's routes alone, on a miniature dist: base path rewriting, fallback,
traversal, the generated app-config.js.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient

from ncpeh_dicomweb.config import (
    ConfigError,
    DicomWebSite,
    DimseSite,
    Settings,
    settings_from_mapping,
)
from ncpeh_dicomweb.web import viewer
from ncpeh_dicomweb.web.middleware import error_middleware
from tests.conftest import ROOT, Pacs, free_port, start_gateway, stop_gateway

pytestmark = pytest.mark.integration

# ------------------------------------------------- the routes alone, on a miniature dist

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
BUNDLE = "app.bundle.0123456789abcdef.js"
INDEX = (
    '<html><head><script>window.PUBLIC_URL="/"</script><link rel="manifest" href="/manifest.json">'
    f'<script src="/app-config.js"></script><script defer src="/{BUNDLE}"></script>'
    '<a href="//cdn.example.org/x">x</a></head></html>'
)


def _dist(root: Path) -> Path:
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / "app-config.js").write_text("window.config = {};  // replaced by ours")
    js = (
        'var a = 1;\n__webpack_require__.p = "/";\n'
        "for (let i = 0; i < ModalitiesInStudy.Value.length; i++) {}\n"
    )
    (root / BUNDLE).write_text("//" + "x" * 700_000 + "\n" + js)  # copied in several chunks
    (root / "app.bundle.css").write_text("@font-face{src:url(/a34f9d1faa5f3315.woff2)}")
    (root / "assets" / "logo.svg").write_text("<svg/>")
    (root / "manifest.json").write_text('{"icons": [{"src": "/assets/a.png"}]}')
    return root


def _settings(dist: Path | None, public_url: str | None = None) -> Settings:
    sites = (
        DicomWebSite(id="web", url="http://127.0.0.1:1/dicom-web"),
        DimseSite(id="get", host="127.0.0.1", port=1, called_aet="PACS"),
    )
    viewer_dir = None if dist is None else str(dist)
    return Settings(sites=sites, default_site="web", public_url=public_url, viewer_dir=viewer_dir)


async def _client(aiohttp_client: ClientFactory, settings: Settings) -> TestClient[Any, Any]:
    app = web.Application(middlewares=[error_middleware])
    app.add_routes(viewer.routes(settings))
    return await aiohttp_client(app)


async def test_no_viewer_configured_no_routes(aiohttp_client: ClientFactory) -> None:
    assert viewer.routes(_settings(None)) == []
    client = await _client(aiohttp_client, _settings(None))
    assert (await client.get("/viewer/")).status == 404


async def test_viewer_files_name_viewer_as_their_base(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    dist = _dist(tmp_path / "dist")
    client = await _client(aiohttp_client, _settings(dist))

    index = await client.get("/viewer/")
    text = await index.text()
    assert index.headers["Cache-Control"] == "no-cache"
    assert 'window.PUBLIC_URL="/viewer/"' in text
    assert f'src="/viewer/{BUNDLE}"' in text and 'href="/viewer/manifest.json"' in text
    assert 'href="//cdn.example.org/x"' in text  # protocol-relative: not a path of ours

    bundle = await client.get(f"/viewer/{BUNDLE}")
    body = await bundle.read()
    assert bundle.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert bundle.headers["Content-Type"].startswith("text/javascript")
    assert int(bundle.headers["Content-Length"]) == len(body)
    original = (dist / BUNDLE).read_bytes()
    expected = original.replace(b'p = "/";', b'p = "/viewer/";').replace(
        b"i < ModalitiesInStudy.Value.length", b"i < (ModalitiesInStudy.Value || []).length"
    )
    assert body == expected
    again = await client.get(f"/viewer/{BUNDLE}", headers={"If-None-Match": bundle.headers["ETag"]})
    assert again.status == 304
    head = await client.head(f"/viewer/{BUNDLE}")
    assert head.status == 200 and int(head.headers["Content-Length"]) == len(body)

    assert (
        "url(/viewer/a34f9d1faa5f3315.woff2)"
        in await (await client.get("/viewer/app.bundle.css")).text()
    )
    assert (
        '"src": "/viewer/assets/a.png"' in await (await client.get("/viewer/manifest.json")).text()
    )
    svg = await client.get("/viewer/assets/logo.svg")  # nothing to rewrite: sent as is
    assert svg.status == 200 and await svg.text() == "<svg/>"


async def test_viewer_routes_and_fallback(aiohttp_client: ClientFactory, tmp_path: Path) -> None:
    dist = _dist(tmp_path / "dist")
    (tmp_path / "secret.txt").write_text("secret")
    client = await _client(aiohttp_client, _settings(dist))

    moved = await client.get("/viewer?dataSources=get", allow_redirects=False)
    assert moved.status == 301 and moved.headers["Location"] == "/viewer/?dataSources=get"
    # A route of the app (no file extension): index.html, for the viewer's own router.
    for path in ("/viewer/viewer/get", "/viewer/local", "/viewer/assets"):
        answer = await client.get(path)
        assert answer.status == 200 and "PUBLIC_URL" in await answer.text(), path
    assert (await client.get("/viewer/missing.js")).status == 404
    behind = await _client(aiohttp_client, _settings(dist, "https://ncp.example.org/imaging"))
    moved = await behind.get("/viewer", allow_redirects=False)
    assert moved.headers["Location"] == "/imaging/viewer/"
    for path in (
        "/viewer/../secret.txt",
        "/viewer/%2e%2e/secret.txt",
        "/viewer/assets/..%2f..%2fsecret.txt",
        "/viewer/.%2e/secret.txt",
    ):
        answer = await client.get(path)
        assert "secret" not in await answer.text(), path


async def test_app_config_has_one_data_source_per_site(
    aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    dist = _dist(tmp_path / "dist")
    client = await _client(aiohttp_client, _settings(dist))
    answer = await client.get("/viewer/app-config.js")
    text = await answer.text()
    assert text.startswith("window.config = ") and answer.headers["Cache-Control"] == "no-cache"
    config = json.loads(text.removeprefix("window.config = ").rstrip().rstrip(";"))
    assert config["routerBasename"] == "/viewer" and config["defaultDataSourceName"] == "web"
    roots = {s["sourceName"]: s["configuration"]["qidoRoot"] for s in config["dataSources"]}
    assert roots == {"web": "/dicom-web", "get": "/site/get/dicom-web"}
    source = config["dataSources"][0]["configuration"]
    assert source["imageRendering"] == source["thumbnailRendering"] == "wadors"
    assert source["omitQuotationForMultipartRequest"] is True

    # Behind a proxy at a sub-path, the browser sees that path in front of ours.
    behind = viewer.app_config(_settings(dist, "https://ncp.example.org/imaging"))
    assert behind["routerBasename"] == "/imaging/viewer"
    assert behind["dataSources"][1]["configuration"]["wadoRoot"] == "/imaging/site/get/dicom-web"


def test_viewer_dir_is_checked(tmp_path: Path) -> None:
    raw = {"sites": [{"id": "a", "url": "http://127.0.0.1:1/dicom-web"}]}
    with pytest.raises(ConfigError, match=r"viewer\.dir: no index\.html"):
        settings_from_mapping({**raw, "viewer": {"dir": str(tmp_path)}}, {})
    with pytest.raises(ConfigError, match=r"viewer\.path: unknown key"):
        settings_from_mapping({**raw, "viewer": {"path": str(tmp_path)}}, {})
    dist = _dist(tmp_path / "dist")
    settings = settings_from_mapping({**raw, "viewer": {"dir": str(dist)}}, {})
    assert settings.viewer_dir == str(dist.resolve())


# ------------------------------------------------- OHIF in Chromium, through each site

DRIVER = ROOT / "tests" / "viewer"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SITES = ["web", "get", "move"]  # the default site (DICOMweb), then C-GET and C-MOVE
MOVE_AET = "NCPEH-VIEW-MOVE"
STEP_TIMEOUT = 60  # seconds the driver waits for any one step (a list, an image)
DAMAGED = ("MR_truncated.dcm",)  # pixel data shorter than its frames

# pydicom's bundled files wanted, by what each shows, with the transfer syntaxes that make it
# that case: the first file the PACS holds with a wanted syntax is taken (an older load kept
# only one of the files sharing a SOP Instance UID).
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}
RLE = {"1.2.840.10008.1.2.5"}
TESTDATA_CASES: list[tuple[str, list[str], set[str] | None]] = [
    ("US-multiframe", ["examples_ybr_color.dcm"], {JPEG_BASELINE}),
    ("JPEG2000", ["693_J2KI.dcm", "examples_jpeg2k.dcm", "MR_small_jp2klossless.dcm"], J2K),
    ("RLE", ["MR_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_rle_2frame.dcm"], RLE),
    ("RGB", ["SC_rgb_jpeg_dcmd.dcm", "SC_rgb_jpeg.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"], None),
]


@dataclass(frozen=True)
class Sample:
    label: str
    study: str
    sop: str | None = None  # the instance to show, in a study holding several

    @property
    def arg(self) -> str:
        return f"{self.label}={self.study}" + (f":{self.sop}" if self.sop else "")


def _core_samples(pacs: Pacs) -> tuple[list[Sample], str]:
    """A CT study of several series, an MR study, and a study whose images come with a Key
    Object Selection document (a KO series, nothing to draw); a patient's family name to
    filter by."""
    studies = pacs.manifest.get("core", {}).get("studies", [])
    ct = next((s for s in studies if s["modalities"] == ["CT"] and len(s["series"]) > 1), None)
    mr = next((s for s in studies if s["modalities"] == ["MR"]), None)
    ko = next((s for s in studies if "KO" in s["modalities"] and len(s["modalities"]) > 1), None)
    if ct is None or mr is None or ko is None:
        pytest.fail("the PACS has no `core` sample set (scripts/sample_data.py --set core)")
    # The CT's patient, Müller^Jürgen: a non-ASCII name, as a person would type it.
    family = ct["patient_name"].split("^")[0]
    samples = [Sample("CT", ct["study_uid"]), Sample("MR", mr["study_uid"])]
    return [*samples, Sample("with-KO", ko["study_uid"])], family


def _stored_syntax(pacs: Pacs, sop: str) -> str | None:
    found = requests.post(f"{pacs.url}/tools/lookup", data=sop, timeout=10).json()
    ids = [f["ID"] for f in found if f["Type"] == "Instance"]
    if not ids:
        return None
    answer = requests.get(f"{pacs.url}/instances/{ids[0]}/metadata/TransferSyntax", timeout=10)
    return answer.text if answer.ok else None


def _testdata_samples(pacs: Pacs) -> list[Sample]:
    # The manifest names each file's UIDs as loaded (files sharing a SOP Instance UID get one
    # of their own); an older manifest does not: then the file's own UIDs.
    by_file: dict[str, dict[str, str]] = pacs.manifest.get("testdata", {}).get("by_file", {})
    # Never pydicom.data.get_testdata_file(): a file not in the wheel would be downloaded.
    root = Path(pydicom.__file__).parent / "data" / "test_files"
    samples = []
    for label, files, syntaxes in TESTDATA_CASES:
        tried = []
        for name in files:
            if name in by_file:
                study, sop = by_file[name]["study"], by_file[name]["sop"]
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(root / name, stop_before_pixels=True)
                study, sop = str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)
            stored = _stored_syntax(pacs, sop)
            tried.append(f"{name}: stored as {stored}")
            if stored is not None and (syntaxes is None or stored in syntaxes):
                samples.append(Sample(label, study, sop))
                break
        else:
            pytest.fail(f"no {label} image in the PACS ({'; '.join(tried)})")
    return samples


def _ensure_tools() -> tuple[str, Path]:
    """node, and the driver's node_modules (npm ci once); skip without chromium or node."""
    node = shutil.which("node")
    if node is None or not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"needs node and {CHROMIUM} (make deps-browser installs them)")
    if not (DRIVER / "node_modules" / "playwright-core").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("needs npm (make deps-browser installs it)")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=DRIVER, check=True, timeout=300)
    return node, DRIVER / "check.mjs"


def _viewer_dist() -> str:
    fetched = subprocess.run(
        ["bash", str(ROOT / "scripts" / "ohif.sh")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert fetched.returncode == 0, f"scripts/ohif.sh failed:\n{fetched.stderr[-2000:]}"
    return fetched.stdout.strip()


@dataclass(frozen=True)
class ViewerGateway:
    url: str
    log: Path


@pytest.fixture(scope="module")
def viewer_gateway(pacs: Pacs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerGateway]:
    """The gateway with the viewer, and the PACS behind three sites: web, get and move."""
    dist = _viewer_dist()
    work = tmp_path_factory.mktemp("viewer-gateway")
    port, store_port = free_port(), free_port()
    # Orthanc must know our C-MOVE destination.
    registered = requests.put(
        f"{pacs.url}/modalities/{MOVE_AET}",
        json={"AET": MOVE_AET, "Host": "127.0.0.1", "Port": store_port},
        timeout=10,
    )
    assert registered.status_code == 200, registered.text
    dimse = (
        f'kind = "dimse"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\ncalled_aet = "{pacs.aet}"'
    )
    config = work / "gateway.toml"
    config.write_text(
        f"""
public_url = "http://127.0.0.1:{port}"
default_site = "web"
[server]
port = {port}
[viewer]
dir = "{dist}"
[[sites]]
id = "web"
url = "{pacs.dicomweb_root}"
[[sites]]
id = "get"
{dimse}
calling_aet = "NCPEH-VIEW-GET"
cache_dir = "{work / "cache-get"}"
[[sites]]
id = "move"
{dimse}
calling_aet = "{MOVE_AET}"
retrieve = "c-move"
store_port = {store_port}
cache_dir = "{work / "cache-move"}"
"""
    )
    log = work / "gateway.log"
    url = f"http://127.0.0.1:{port}"
    proc = start_gateway(config, log, url)
    try:
        yield ViewerGateway(url, log)
    finally:
        stop_gateway(proc, log)


@pytest.fixture(scope="module")
def samples(pacs: Pacs) -> tuple[list[Sample], str]:
    core, family = _core_samples(pacs)
    return core + _testdata_samples(pacs), family


def _brief(requests_: list[dict[str, Any]], step: str) -> list[str]:
    return [
        f"{r.get('status') or r.get('error')} {r['url']} (Accept: {r.get('accept')})"
        for r in requests_
        if r["step"] == step
    ][:8]


def _failure(result: dict[str, Any], study: dict[str, Any]) -> dict[str, Any]:
    """What went wrong while a study was open: enough to act on without re-running."""
    step = f"study:{study['label']}"
    return {
        "error": study.get("error"),
        "viewports": study.get("viewports"),
        "failed requests": _brief(result["failedRequests"], step),
        "console": [e["text"][:200] for e in result["consoleErrors"] if e["step"] == step][:5],
        "still pending": study.get("pending"),
        "screenshot": study.get("screenshot"),
    }


@pytest.mark.parametrize("site", SITES)
def test_viewer_shows_the_sample_studies(
    site: str,
    pacs: Pacs,
    viewer_gateway: ViewerGateway,
    samples: tuple[list[Sample], str],
    tmp_path: Path,
) -> None:
    node, driver = _ensure_tools()
    studies, family = samples
    command = [node, str(driver), "--url", viewer_gateway.url, "--source", site]
    command += ["--filter", family, "--out", str(tmp_path), "--timeout", str(STEP_TIMEOUT)]
    for sample in studies:
        command += ["--study", sample.arg]
    started = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    elapsed = time.monotonic() - started
    assert run.stdout.strip(), f"the driver printed nothing:\n{run.stderr[-3000:]}"
    result = json.loads(run.stdout)
    (tmp_path / "result.json").write_text(run.stdout)
    assert "error" not in result, f"{result['error']}\n{run.stderr[-3000:]}"

    lines = [f"\n{site}: {elapsed:.0f} s; study list {result['studyList']['seconds']} s"]
    for study in result["studies"]:
        state = "ok" if study["ok"] else f"FAILED ({study.get('error')})"
        lines.append(f"  {study['label']}: {state} in {study['seconds']} s")
    print("\n".join(lines))

    listing = result["studyList"]
    assert listing["ok"], (listing, _brief(result["failedRequests"], "study-list"))
    found = result["filter"]
    assert found and found["ok"], (found, _brief(result["failedRequests"], "filter"))
    assert found["total"] < listing["total"]
    failed = {s["label"]: _failure(result, s) for s in result["studies"] if not s["ok"]}
    assert not failed, json.dumps(failed, indent=2)
    # Every file of the viewer found (one asked for at the root, i.e. not under /viewer/, would
    # fail here too), and no server error anywhere, even one the viewer shrugged off.
    # The damaged files the PACS holds are the exception: the gateway answers their frames
    # 502 (the PACS's data is broken), and the viewer shows the rest of their series.
    by_file = pacs.manifest.get("testdata", {}).get("by_file", {})
    damaged = [by_file[name]["sop"] for name in DAMAGED if name in by_file]
    wrong = [
        r
        for r in result["failedRequests"]
        if not urlsplit(r["url"]).path.startswith(("/dicom-web/", "/site/"))
        or (r.get("status", 0) >= 500 and not any(f"/{sop}/" in r["url"] for sop in damaged))
    ]
    assert not wrong, json.dumps(wrong, indent=2)
