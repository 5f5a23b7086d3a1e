"""WADO-RS retrieves read off the wire, for every WADO check: a multipart answer read as a
stream by the harness's own reader (:func:`stream_parts`), each part checked as it arrives and
then let go, so a study of any size costs the memory of one part; instance parts read as PS3.10
files (pydicom, pixels skipped); URLs taken from answers checked against the client's origin
(:func:`check_origin`) and fetched without sending the token to another host.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from urllib.parse import urljoin, urlsplit

import aiohttp
import pydicom
from multidict import CIMultiDictProxy
from pydicom.uid import UID

from ..context import Probe
from ..model import Failed
from ..multipart import MediaType, MultipartParser, Part, boundary_of, parse_media_type

__all__ = [
    "DICOM",
    "Part10",
    "Streamed",
    "check_origin",
    "instances_of",
    "read_part10",
    "retrieve_instances",
    "status_of",
    "stream_parts",
]

DICOM = 'multipart/related; type="application/dicom"'
RETIRED_FOR_WEB = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
}
PART_KEEP = 16 * 1024 * 1024  # bytes kept of each part: the data set before the pixels
MAX_PARTS = 100_000  # parts read from one answer before giving up


@dataclass(frozen=True)
class Streamed:
    """A retrieve read as a stream: the status, headers, the parts of a 200 multipart answer
    (the start of each body), or the start of any other answer's body."""

    method: str
    url: str
    status: int
    headers: CIMultiDictProxy[str]
    parts: list[Part]
    text: bytes = b""

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def expect_ok(self) -> Streamed:
        if self.status != 200:
            said = self.text[:300].decode("utf-8", "replace").strip()
            raise Failed(
                f"{self.method} {self.url}: status {self.status}, expected 200"
                + (f" ({said})" if said else "")
            )
        return self

    def expect_type(self, media_type: str) -> Streamed:
        """Failed unless the answer is multipart/related of ``media_type`` parts: its type
        parameter names it (parameters aside: ``wado.multipart.type-parameter`` is strict
        about them) and every part's Content-Type is of that type."""
        given = _param(self.content_type, "type", self.url)
        if given is None:
            raise Failed(
                f"GET {self.url}: Content-Type {self.content_type!r} has no type parameter"
            )
        if _media(given, self.url).essence != media_type:
            raise Failed(f"GET {self.url}: multipart type={given!r}, expected {media_type!r}")
        for number, part in enumerate(self.parts, 1):
            part_type = part.header("Content-Type")
            if part_type is None:
                raise Failed(f"GET {self.url}: part {number} has no Content-Type")
            essence = _media(part_type, self.url).essence
            if essence != media_type:
                raise Failed(f"GET {self.url}: part {number} is {essence}, expected {media_type}")
        return self


def _media(value: str, url: str) -> MediaType:
    try:
        return parse_media_type(value)
    except Failed as exc:
        raise Failed(f"GET {url}: {exc}") from None


def _param(content_type: str, name: str, url: str) -> str | None:
    return _media(content_type, url).param(name)


def _headers(probe: Probe, accept: str, url: str) -> dict[str, str]:
    """Accept, and the run's token, but only toward the base URL's origin: a URL taken from
    an answer may name another host, which must not receive the token."""
    sent = {"Accept": accept}
    if probe.target.token and _origin(url) == _origin(probe.target.base_url):
        sent["Authorization"] = f"Bearer {probe.target.token}"
    return sent


def _stream_timeout(probe: Probe) -> aiohttp.ClientTimeout:
    # Per read, not in total: a large study takes its time; the check's own limit bounds it.
    return aiohttp.ClientTimeout(
        total=None, sock_connect=probe.target.timeout, sock_read=probe.target.timeout
    )


async def stream_parts(
    probe: Probe,
    url: str,
    *,
    accept: str,
    params: dict[str, str] | None = None,
    keep: int = PART_KEEP,
    on_part: Callable[[int, Part], Part] | None = None,
) -> Streamed:
    """GET ``url`` and read a 200 multipart answer part by part (Failed on bad framing, a
    stall or a cut-short body); any other status comes back with the start of its body.

    ``on_part(number, part)`` sees each part as it completes and returns what to keep of it
    (e.g. its headers alone), so a long answer is read in the memory of one part.
    """
    full = probe.url(url)
    try:
        async with probe.session.get(
            full,
            params=params,
            headers=_headers(probe, accept, full),
            timeout=_stream_timeout(probe),
            allow_redirects=False,
        ) as response:
            where = str(response.url)
            if response.status != 200:
                text = await response.content.read(4096)
                return Streamed("GET", where, response.status, response.headers, [], text)
            parts: list[Part] = []
            parser = _parser(response.headers.get("Content-Type", ""), keep, where)
            async for chunk in response.content.iter_chunked(1 << 16):
                for part in _feed(parser, chunk, where):
                    parts.append(on_part(len(parts) + 1, part) if on_part else part)
                if len(parts) > MAX_PARTS:
                    raise Failed(f"GET {where}: more than {MAX_PARTS} parts")
            _feed(parser, None, where)
            return Streamed("GET", where, 200, response.headers, parts)
    except TimeoutError:
        raise Failed(f"GET {full}: no data for {probe.target.timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise Failed(f"GET {full}: {type(exc).__name__}: {exc} (cut short?)") from None


def _parser(content_type: str, keep: int, where: str) -> MultipartParser:
    try:
        return MultipartParser(boundary_of(content_type), keep=keep)
    except Failed as exc:
        raise Failed(f"GET {where}: {exc}") from None


def _feed(parser: MultipartParser, chunk: bytes | None, where: str) -> list[Part]:
    """The parts ``chunk`` completes (None: the end of the body), framing faults named."""
    try:
        if chunk is None:
            parser.close()
            return []
        return parser.feed(chunk)
    except Failed as exc:
        raise Failed(f"GET {where}: {exc}") from None


async def status_of(probe: Probe, url: str, *, accept: str) -> int:
    """The status of GET ``url``, without reading the body (a study's URL is fetched too)."""
    try:
        async with probe.session.get(
            url,
            headers=_headers(probe, accept, url),
            timeout=aiohttp.ClientTimeout(total=probe.target.timeout),
            allow_redirects=False,
        ) as response:
            return response.status
    except TimeoutError:
        raise Failed(f"GET {url}: no answer within {probe.target.timeout:g} s") from None
    except aiohttp.ClientError as exc:
        raise Failed(f"GET {url}: {type(exc).__name__}: {exc}") from None


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def check_origin(probe: Probe, url: str, where: str, *, relative_to: str | None = None) -> str:
    """``url`` made absolute (a relative reference resolves against ``relative_to``, the
    answer it came in); Failed unless it names the scheme://host:port of the base URL the
    client used: a proxy that does not rewrite URLs leaks its backend's address here."""
    absolute = urljoin(relative_to or probe.target.base_url.rstrip("/") + "/", url)
    if not absolute.startswith(("http://", "https://")):
        raise Failed(f"{where}: {url!r} is not an http(s) URL")
    base, got = _origin(probe.target.base_url), _origin(absolute)
    if got != base:
        scheme, host, port = got
        raise Failed(
            f"{where}: {url} names {scheme}://{host}:{port}, not the client's "
            f"{base[0]}://{base[1]}:{base[2]} (a backend address the client cannot reach?)"
        )
    return absolute


def _ts_name(uid: str) -> str:
    try:
        return f"{uid} ({UID(uid).name})"
    except Exception:  # pydicom may not know a new or invented UID
        return uid


# --------------------------------------------------------------------------------------------
# Instances as PS3.10 parts


@dataclass(frozen=True)
class Part10:
    number: int
    ts_param: str | None  # the transfer-syntax parameter of the part's Content-Type
    transfer_syntax: str  # (0002,0010) of its File Meta Information
    study: str
    series: str
    sop: str
    content_location: str | None


def read_part10(part: Part, number: int, url: str) -> Part10:
    """One application/dicom part as a PS3.10 file (Failed naming the part if it is not)."""
    media = _media(part.header("Content-Type") or "", url)
    if media.essence != "application/dicom":
        raise Failed(f"GET {url}: part {number} is {media.essence!r}, not application/dicom")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = pydicom.dcmread(BytesIO(part.body), stop_before_pixels=True)
        except Exception as exc:
            cut = f" (first {len(part.body)} of {part.size} bytes read)" if part.truncated else ""
            raise Failed(
                f"GET {url}: part {number} is not a DICOM PS3.10 file{cut}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
    meta = getattr(data, "file_meta", None)
    ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if not ts:
        raise Failed(f"GET {url}: part {number} has no Transfer Syntax UID (0002,0010)")
    return Part10(
        number=number,
        ts_param=media.param("transfer-syntax"),
        transfer_syntax=ts,
        study=str(data.get("StudyInstanceUID", "")),
        series=str(data.get("SeriesInstanceUID", "")),
        sop=str(data.get("SOPInstanceUID", "")),
        content_location=part.header("Content-Location"),
    )


async def retrieve_instances(
    probe: Probe, path: str, *, accept: str = DICOM
) -> tuple[Streamed, list[Part10]]:
    """GET an instance resource and read it as :func:`instances_of` does, each part read as
    it arrives and its body let go (a study of any size)."""
    read: list[Part10] = []
    where = probe.url(path)

    def take(number: int, part: Part) -> Part:
        read.append(read_part10(part, number, where))
        return Part(part.headers, b"", part.size)

    got = await stream_parts(probe, path, accept=accept, on_part=take)
    return got, _checked(got, read)


def instances_of(got: Streamed) -> list[Part10]:
    """A retrieve's instances: 200, multipart type application/dicom, every part PS3.10, none
    in a transfer syntax the web services forbid (PS3.18 8.7.3)."""
    got.expect_ok()
    return _checked(got, [read_part10(p, n, got.url) for n, p in enumerate(got.parts, 1)])


def _checked(got: Streamed, parts: list[Part10]) -> list[Part10]:
    got.expect_ok().expect_type("application/dicom")
    for p in parts:
        if p.transfer_syntax in RETIRED_FOR_WEB:
            raise Failed(
                f"GET {got.url}: part {p.number} is in {_ts_name(p.transfer_syntax)}, which "
                "PS3.18 8.7.3 forbids for web services"
            )
    return parts
