"""WADO-RS pixel resources (PS3.18 10.4.1.1.3-10.4.1.1.6): frames, bulk data, rendered and
thumbnail images. Frames and bulk data are read with the harness's multipart reader; rendered
images must decode with Pillow.

The test image is the fixture's instance; for a frame list of more than one frame, a
multi-frame image is looked for once by QIDO (NumberOfFrames, Table 10.6.3-5).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from io import BytesIO
from typing import Any
from urllib.parse import urljoin

from PIL import Image

from ..context import Fixture, Probe
from ..model import Failed, Level, Skipped, check
from ..multipart import parse_media_type
from ._wado_common import (
    DICOM_JSON,
    OCTETS,
    bulkdata_uri,
    compressed_instance,
    instance_path,
    metadata_url,
)
from ._wado_stream import Streamed, check_origin, stream_parts

__all__: list[str] = []

MAX_FRAMES_ASKED = 3  # frames asked in one list: enough to see one part per frame
# Magic numbers of the compressed pixel media types (PS3.18 8.7.3.3): JPEG and JPEG-LS start
# with SOI; JPEG 2000 with a codestream SOC+SIZ or the JP2 signature box.
MAGIC = {
    "image/jpeg": (b"\xff\xd8",),
    "image/jls": (b"\xff\xd8",),
    "image/jp2": (b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  "),
}


@dataclass(frozen=True)
class PixelSource:
    """An image instance to ask pixels of: its path, frame count and one frame's size."""

    path: str
    frames: int
    frame_bytes: int | None  # Rows x Columns x Samples x BitsAllocated/8; None if unknown


def _frame_bytes(metadata: dict[str, Any]) -> int | None:
    def first(tag: str) -> Any:
        values = (metadata.get(tag) or {}).get("Value") if isinstance(metadata, dict) else None
        return values[0] if isinstance(values, list) and values else None

    rows, columns, bits = first("00280010"), first("00280011"), first("00280100")
    samples = first("00280002") or 1
    if not all(isinstance(v, int) for v in (rows, columns, bits, samples)) or bits % 8:
        return None
    return int(rows * columns * samples * bits // 8)


def _fixture_image(fx: Fixture) -> PixelSource:
    return PixelSource(instance_path(fx), fx.frames, _frame_bytes(fx.instance_metadata))


async def multiframe_image(probe: Probe) -> PixelSource | None:
    """A multi-frame image with the fewest frames (2 or more) QIDO lists; None if none."""
    return await probe.memo("multiframe-image", lambda: _find_multiframe(probe))


async def _find_multiframe(probe: Probe) -> PixelSource | None:
    answer = await probe.get(
        "/instances", accept=DICOM_JSON, params={"includefield": "00280008", "limit": "1000"}
    )
    items = answer.json() if answer.status == 200 and not answer.truncated else []
    found: list[tuple[int, str]] = []
    for item in items if isinstance(items, list) else []:
        try:
            frames = int(item["00280008"]["Value"][0])
            path = "/studies/{}/series/{}/instances/{}".format(
                *(item[t]["Value"][0] for t in ("0020000D", "0020000E", "00080018"))
            )
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if frames >= 2:
            found.append((frames, path))
    if not found:
        return None
    frames, path = min(found)
    metadata = (await probe.get(f"{path}/metadata", accept=DICOM_JSON)).expect(200).json()
    first = metadata[0] if isinstance(metadata, list) and metadata else {}
    return PixelSource(path, frames, _frame_bytes(first))


def _frame_parts(got: Streamed, asked: list[int], media_type: str) -> None:
    got.expect_ok().expect_type(media_type)
    if len(got.parts) != len(asked):
        raise Failed(f"GET {got.url}: {len(got.parts)} parts for {len(asked)} frames asked")


@check(
    "wado.frames.uncompressed",
    section="PS3.18 10.4.1.1.6, 10.4.3.3.6, 8.7.3.3",
    level=Level.MUST,
    title='frames as multipart/related; type="application/octet-stream": a part per frame, '
    "each Rows x Columns x Samples x Bits/8 bytes",
)
async def frames_uncompressed(probe: Probe) -> None:
    images = [_fixture_image(await probe.fixture())]
    multi = await multiframe_image(probe)
    if multi is not None:
        images.append(multi)
    for image in images:
        asked = list(range(min(image.frames, MAX_FRAMES_ASKED), 0, -1))  # in reverse order
        url = f"{image.path}/frames/{','.join(map(str, asked))}"
        got = await stream_parts(probe, url, accept=OCTETS)
        _frame_parts(got, asked, "application/octet-stream")
        for n, part in enumerate(got.parts, 1):
            if image.frame_bytes is not None and part.size != image.frame_bytes:
                raise Failed(
                    f"GET {got.url}: part {n} has {part.size} bytes, a frame is "
                    f"{image.frame_bytes} (Rows x Columns x Samples x BitsAllocated/8)"
                )


@check(
    "wado.frames.compressed-media-types",
    section="PS3.18 10.4.1.1.6, 8.7.3.3, 8.7.8",
    level=Level.MAY,
    title="frame 1 as image/jpeg, image/jls, image/jp2: those parts, or 406",
)
async def frames_compressed(probe: Probe) -> None:
    paths = [instance_path(await probe.fixture())]
    stored = await compressed_instance(probe)
    if stored is not None:
        paths.append(stored.path)  # as stored, no encoder needed
    offered = []
    for media_type, magic in MAGIC.items():
        for path in paths:
            accept = f'multipart/related; type="{media_type}"'
            got = await stream_parts(probe, f"{path}/frames/1", accept=accept)
            if got.status == 406:
                continue
            if got.status != 200:
                raise Failed(
                    f"GET {got.url} (Accept: {accept}): status {got.status}, expected 200 or 406"
                )
            _frame_parts(got, [1], media_type)
            if not got.parts[0].body.startswith(magic):
                raise Failed(f"GET {got.url}: the {media_type} part does not start as one")
            offered.append(media_type)
            break
    if not offered:
        raise Failed("frames are offered as none of image/jpeg, image/jls, image/jp2 (all 406)")


async def _expect_statuses(probe: Probe, url: str, accept: str, *wanted: int) -> None:
    answer = await probe.request("GET", url, accept=accept, max_body=64 * 1024)
    if answer.status not in wanted:
        expected = " or ".join(map(str, wanted))
        raise Failed(f"GET {answer.url}: status {answer.status}, expected {expected}")


@check(
    "wado.frames.invalid-list",
    section="PS3.18 10.4.1.1.6, Table 10.4.3-1",
    level=Level.MUST,
    title="a frame beyond NumberOfFrames, frame 0, or 'abc': 400 or 404",
)
async def frames_invalid(probe: Probe) -> None:
    image = _fixture_image(await probe.fixture())
    for frames in (str(image.frames + 1), "0", "abc"):
        await _expect_statuses(probe, f"{image.path}/frames/{frames}", OCTETS, 400, 404)


@check(
    "wado.frames.duplicate-list",
    section="PS3.18 10.4.1.1.6",
    level=Level.SHOULD,
    title="a frame list with a duplicate (1,1): 400",
)
async def frames_duplicate(probe: Probe) -> None:
    image = _fixture_image(await probe.fixture())
    await _expect_statuses(probe, f"{image.path}/frames/1,1", OCTETS, 400)


# --------------------------------------------------------------------------------------------
# Bulk data


@check(
    "wado.bulkdata.retrieve",
    section="PS3.18 10.4.1.1.5, 10.4.3.3.5, F.2.6",
    level=Level.MUST,
    title="every BulkDataURI of the instance metadata retrieves; Pixel Data has its full length",
)
async def bulkdata_retrieve(probe: Probe) -> None:
    fx = await probe.fixture()
    uris = {
        tag: element["BulkDataURI"]
        for tag, element in fx.instance_metadata.items()
        if isinstance(element, dict) and isinstance(element.get("BulkDataURI"), str)
    }
    if not uris:
        raise Skipped("the instance metadata has no BulkDataURI (all values inline)")
    for tag, uri in sorted(uris.items())[:8]:
        uri = check_origin(
            probe, uri, f"instance metadata {tag} BulkDataURI", relative_to=metadata_url(probe, fx)
        )
        got = await stream_parts(probe, uri, accept=OCTETS)
        if got.status == 406:  # pixel data stored compressed: take it as stored
            got = await stream_parts(probe, uri, accept=f"{OCTETS}; transfer-syntax=*")
        got.expect_ok()
        if not got.parts:
            raise Failed(f"GET {got.url} (BulkDataURI of {tag}): no part")
        expected = _pixel_bytes(fx)
        uncompressed = _essence(got.parts[0].header("Content-Type")) == "application/octet-stream"
        size = sum(p.size for p in got.parts)
        if tag == "7FE00010" and uncompressed and expected and size != expected:
            raise Failed(
                f"GET {got.url} (Pixel Data): {size} bytes, expected {expected} "
                "(frames x Rows x Columns x Samples x BitsAllocated/8)"
            )


@check(
    "wado.bulkdata.content-location",
    section="PS3.18 10.4.3.3.5",
    level=Level.MUST,
    title="each bulk data part has a Content-Location: the BulkDataURI of the metadata",
)
async def bulkdata_content_location(probe: Probe) -> None:
    fx = await probe.fixture()
    uri = bulkdata_uri(fx.instance_metadata, "7FE00010")
    if uri is None:
        raise Skipped("the instance metadata gives Pixel Data no BulkDataURI")
    where = "instance metadata 7FE00010 BulkDataURI"
    uri = check_origin(probe, uri, where, relative_to=metadata_url(probe, fx))
    got = await stream_parts(probe, uri, accept=OCTETS)
    if got.status == 406:
        got = await stream_parts(probe, uri, accept=f"{OCTETS}; transfer-syntax=*")
    got.expect_ok()
    for n, part in enumerate(got.parts, 1):
        location = part.header("Content-Location")
        if location is None:
            raise Failed(f"GET {got.url}: part {n} has no Content-Location (expected {uri})")
        # One part: the element itself; compressed frames as parts: {BulkDataURI}/frames/{n}.
        resolved = urljoin(got.url, location)
        if resolved != uri and not (len(got.parts) > 1 and resolved.startswith(f"{uri}/frames/")):
            raise Failed(
                f"GET {got.url}: part {n} has Content-Location {location}, not the "
                f"BulkDataURI {uri}"
            )


def _essence(content_type: str | None) -> str:
    try:
        return parse_media_type(content_type or "").essence
    except Failed:
        return ""


def _pixel_bytes(fx: Fixture) -> int | None:
    frame = _frame_bytes(fx.instance_metadata)
    return frame * fx.frames if frame is not None else None


# --------------------------------------------------------------------------------------------
# Rendered and thumbnail (PS3.18 8.7.4)


async def _rendered(probe: Probe, url: str, media_type: str, pil_format: str) -> None:
    answer = (await probe.get(url, accept=media_type)).expect(200)
    if answer.truncated:
        raise Failed(f"GET {answer.url}: a rendered image longer than --max-body")
    if answer.content_type != media_type:
        raise Failed(f"GET {answer.url}: Content-Type {answer.content_type!r}, not {media_type}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(BytesIO(answer.body)) as picture:
                picture.load()
                got, size = picture.format, picture.size
        except Exception as exc:
            raise Failed(
                f"GET {answer.url}: not a decodable {media_type}: {type(exc).__name__}: {exc}"
            ) from None
    if got != pil_format or not all(size):
        raise Failed(f"GET {answer.url}: decodes as {got} {size}, expected a {pil_format} image")


@check(
    "wado.rendered.instance",
    section="PS3.18 10.4.1.1.3, 8.7.4 (Table 8.7.4-1: image/jpeg default)",
    level=Level.MUST,
    title="rendered instance as image/jpeg: a decodable JPEG",
)
async def rendered_instance(probe: Probe) -> None:
    fx = await probe.fixture()
    await _rendered(probe, f"{instance_path(fx)}/rendered", "image/jpeg", "JPEG")


@check(
    "wado.rendered.media-types",
    section="PS3.18 8.7.4 (Table 8.7.4-1: image/png and image/gif required)",
    level=Level.MUST,
    title="rendered instance as image/png and image/gif: decodable images",
)
async def rendered_media_types(probe: Probe) -> None:
    fx = await probe.fixture()
    for media_type, pil_format in (("image/png", "PNG"), ("image/gif", "GIF")):
        await _rendered(probe, f"{instance_path(fx)}/rendered", media_type, pil_format)


@check(
    "wado.rendered.frame",
    section="PS3.18 10.4.1.1.3 (Rendered Frames), 8.7.4",
    level=Level.MUST,
    title="rendered frame 1 as image/jpeg: a decodable JPEG",
)
async def rendered_frame(probe: Probe) -> None:
    fx = await probe.fixture()
    await _rendered(probe, f"{instance_path(fx)}/frames/1/rendered", "image/jpeg", "JPEG")


@check(
    "wado.thumbnail.instance",
    section="PS3.18 10.4.1.1.4 (Thumbnail resources: optional)",
    level=Level.MAY,
    title="instance thumbnail as image/jpeg: a decodable JPEG",
)
async def thumbnail_instance(probe: Probe) -> None:
    fx = await probe.fixture()
    await _rendered(probe, f"{instance_path(fx)}/thumbnail", "image/jpeg", "JPEG")
