"""The JavaScript ``dicomweb-client`` (npm, the browser library of the dcmjs authors) in plain
Node retrieves frames, bulk data, rendered and thumbnail through the gateway, on the DICOMweb
site and on the DIMSE sites (C-GET, C-MOVE).

The Node part is ``tests/node/driver.mjs`` (``dicomweb-client`` with ``xhr2`` as its
XMLHttpRequest, versions pinned in ``tests/node/package-lock.json``): one Node process per site
makes every call and prints what the library handed back (lengths, sha256, media types, the
images themselves). Each value is checked here against pydicom's own reading of the file the
PACS stores. Skipped only when node or npm is missing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.pixels.utils import pixel_array

from ncpeh_dicomweb.imaging.render import parse_render_params, render
from tests.conftest import ROOT, DimseGateway, Loaded

pytestmark = pytest.mark.integration

NODE_DIR = ROOT / "tests" / "node"
SITES = ["web", "get", "move"]
FILES = {
    "ybr": "examples_ybr_color.dcm",  # 30 JPEG baseline frames, YBR_FULL_422
    "rtdose": "rtdose.dcm",  # 15 native frames
    "ecg": "waveform_ecg.dcm",  # WaveformData inside WaveformSequence items
    "image": "CT_small.dcm",
}
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_MAGIC = "ffd8ff"
PNG_MAGIC = "89504e470d0a1a0a"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def node_driver() -> tuple[str, Path]:
    """node, and the driver's pinned node_modules (npm ci when missing or stale)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("needs node and npm (Debian: apt-get install nodejs npm)")
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    for name, version in pinned.items():
        manifest = NODE_DIR / "node_modules" / name / "package.json"
        if not manifest.exists() or json.loads(manifest.read_text())["version"] != version:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300
            )
            break
    return node, NODE_DIR / "driver.mjs"


@pytest.fixture(scope="module", params=SITES)
def run(
    request: pytest.FixtureRequest,
    node_driver: tuple[str, Path],
    dimse_gateway: DimseGateway,
    loaded: Callable[[str], Loaded],
) -> dict[str, Any]:
    """One Node process per site: every call of the driver, its JSON answer."""
    site: str = request.param
    node, driver = node_driver
    job = {
        "root": dimse_gateway.root(site),
        "instances": {
            key: {"study": item.study, "series": item.series, "sop": item.sop}
            for key, item in ((key, loaded(name)) for key, name in FILES.items())
        },
    }
    done = subprocess.run(
        [node, str(driver)],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        timeout=180,
        cwd=NODE_DIR,
    )
    assert done.returncode == 0, f"driver failed ({done.returncode}):\n{done.stderr[-3000:]}"
    answer: dict[str, Any] = json.loads(done.stdout)
    answer["site"] = site
    return answer


def _ok(run: dict[str, Any], key: str) -> dict[str, Any]:
    result: dict[str, Any] = run["results"][key]
    assert result["ok"], (run["site"], key, result)
    return result


def _stored_frames(path: Path) -> list[bytes]:
    ds = pydicom.dcmread(path)
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))))


def _native_frame(path: Path, number: int) -> bytes:
    frame = pixel_array(path, index=number - 1)
    return bytes(frame.astype(frame.dtype.newbyteorder("<")).tobytes())


def test_every_exchange_succeeds_and_stays_on_the_gateway(run: dict[str, Any]) -> None:
    """Every request the library made (metadata, frames, each BulkDataURI...) was answered 200
    and went to the gateway's root: no PACS address leaked into what the client follows."""
    root = run["root"] + "/"
    assert run["exchanges"]
    for exchange in run["exchanges"]:
        assert exchange["url"].startswith(root), exchange
        assert exchange["status"] == 200, exchange


def test_compressed_frames_as_stored(run: dict[str, Any], loaded: Callable[[str], Loaded]) -> None:
    """All 30 JPEG frames, asked in reverse order as image/jpeg: the stored fragments, in order."""
    stored = _stored_frames(loaded(FILES["ybr"]).path)
    result = _ok(run, "ybr_jpeg")
    assert [p["sha256"] for p in result["parts"]] == [_sha(stored[n - 1]) for n in range(30, 0, -1)]
    assert [p["length"] for p in result["parts"]] == [len(stored[n - 1]) for n in range(30, 0, -1)]
    for part in result["parts"]:
        assert part["magic"].startswith(JPEG_MAGIC)
        assert (part["contentType"], part["transferSyntaxUID"]) == ("image/jpeg", JPEG_BASELINE)


def test_compressed_frames_any_transfer_syntax(
    run: dict[str, Any], loaded: Callable[[str], Loaded]
) -> None:
    """Cornerstone's Accept (octet-stream; transfer-syntax=*): the frames as stored."""
    stored = _stored_frames(loaded(FILES["ybr"]).path)
    result = _ok(run, "ybr_any")
    assert [p["sha256"] for p in result["parts"]] == [_sha(stored[1]), _sha(stored[0])]
    for part in result["parts"]:
        assert (part["contentType"], part["transferSyntaxUID"]) == ("image/jpeg", JPEG_BASELINE)


def test_compressed_frame_decoded_by_default(
    run: dict[str, Any], loaded: Callable[[str], Loaded]
) -> None:
    """The library's default Accept (application/octet-stream): the frame decoded, as RGB."""
    (part,) = _ok(run, "ybr_decoded")["parts"]
    expected = _native_frame(loaded(FILES["ybr"]).path, 1)
    assert (part["length"], part["sha256"]) == (len(expected), _sha(expected))
    assert (part["contentType"], part["transferSyntaxUID"]) == (
        "application/octet-stream",
        EXPLICIT_LE,
    )


@pytest.mark.parametrize(("key", "numbers"), [("rtdose", [15, 2, 7]), ("rtdose_all", None)])
def test_native_frames(
    run: dict[str, Any], loaded: Callable[[str], Loaded], key: str, numbers: list[int] | None
) -> None:
    path = loaded(FILES["rtdose"]).path
    result = _ok(run, key)
    assert result["frameNumbers"] == (numbers or list(range(1, 16)))
    expected = [_native_frame(path, n) for n in result["frameNumbers"]]
    assert [p["sha256"] for p in result["parts"]] == [_sha(e) for e in expected]
    assert [p["length"] for p in result["parts"]] == [len(e) for e in expected]
    for part in result["parts"]:
        assert part["contentType"] == "application/octet-stream"


def _element_at(ds: pydicom.Dataset, path: list[Any]) -> pydicom.DataElement:
    """The element a BulkDataURI stands for: path is [tag, item, tag, item, ..., tag]."""
    current: Any = ds
    for step in path[:-1]:
        current = current[int(step, 16)] if isinstance(step, str) else current.value[step]
    element: pydicom.DataElement = current[int(path[-1], 16)]
    return element


def test_bulk_data_inside_a_sequence(run: dict[str, Any], loaded: Callable[[str], Loaded]) -> None:
    """retrieveInstanceMetadata, then retrieveBulkData on each BulkDataURI it names: the bytes of
    that very element, the waveform samples inside WaveformSequence among them."""
    ds = pydicom.dcmread(loaded(FILES["ecg"]).path)
    values = _ok(run, "bulk")["values"]
    waveforms = [v for v in values if v["path"][0] == "54000100" and v["path"][-1] == "54001010"]
    assert len(waveforms) == len(ds.WaveformSequence), values
    for value in values:
        assert value["uri"].startswith(run["root"] + "/"), value
        assert value["result"]["ok"], value
        (part,) = value["result"]["parts"]
        expected = _element_at(ds, value["path"]).value
        assert isinstance(expected, bytes), value["path"]
        assert (part["length"], part["sha256"]) == (len(expected), _sha(expected)), value["path"]


def _image(result: dict[str, Any], magic: str, content_type: str) -> Image.Image:
    (part,) = result["parts"]
    assert part["magic"].startswith(magic), part["magic"]
    assert part["contentType"] == content_type
    data = base64.b64decode(part["base64"])
    assert (len(data), _sha(data)) == (part["length"], part["sha256"])
    return Image.open(io.BytesIO(data))


@pytest.mark.parametrize(
    ("key", "name", "frame"),
    [
        ("rendered_png", "image", 1),
        ("rendered_color_png", "ybr", 1),
        ("rendered_frame_png", "ybr", 3),
    ],
)
def test_rendered_png_equals_a_rendering_of_the_stored_file(
    run: dict[str, Any], loaded: Callable[[str], Loaded], key: str, name: str, frame: int
) -> None:
    image = _image(_ok(run, key), PNG_MAGIC, "image/png")
    params = parse_render_params([], "image/png", thumbnail=False)
    expected = Image.open(io.BytesIO(render(loaded(FILES[name]).path, frame, params)))
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_rendered_jpeg(run: dict[str, Any], loaded: Callable[[str], Loaded]) -> None:
    image = _image(_ok(run, "rendered_jpeg"), JPEG_MAGIC, "image/jpeg")
    ds = pydicom.dcmread(loaded(FILES["image"]).path, stop_before_pixels=True)
    assert image.format == "JPEG" and image.size == (ds.Columns, ds.Rows)


@pytest.mark.parametrize("key", ["thumbnail", "thumbnail_frame"])
def test_thumbnail(run: dict[str, Any], key: str) -> None:
    """retrieveInstanceThumbnail / retrieveInstanceFramesThumbnail with viewport=64,64."""
    image = _image(_ok(run, key), JPEG_MAGIC, "image/jpeg")
    assert image.format == "JPEG" and max(image.size) == 64
