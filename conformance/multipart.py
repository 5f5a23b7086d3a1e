"""A strict reader of ``multipart/related`` bodies (RFC 2046 5.1.1, RFC 2387), for checking
answers rather than serving them: it says what is wrong with the framing instead of making the
best of it.

Sans-I/O, in the manner of h11: :class:`MultipartParser` takes bytes as they arrive and hands
back finished :class:`Part` objects; it keeps at most ``keep`` bytes of each part's body (the
rest is only counted), so a study of any size is read in bounded memory.
:func:`read_multipart` reads a whole body at once. Every framing fault raises
:class:`~conformance.model.Failed` naming the fault: a missing or invalid boundary, a bare LF
where CRLF is due, a delimiter followed by other bytes, a header line without a colon, a body
with no part, or no close delimiter (a stream cut short).

It is the harness's own reader: the gateway's multipart code is what it checks, so it is not
used here.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from .model import Failed

__all__ = [
    "MediaType",
    "MultipartParser",
    "Part",
    "boundary_of",
    "parse_media_type",
    "read_multipart",
]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PARAM_NAME = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)=")
# RFC 2046 5.1.1: 1 to 70 bchars, the last not a space.
_BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]\Z")
_HEADER_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_WHITESPACE = b" \t"
MAX_HEADER_BYTES = 64 * 1024  # one part's header section; more is not a DICOMweb answer


@dataclass(frozen=True)
class MediaType:
    """A parsed media type (RFC 9110 8.3.1): ``essence`` is "type/subtype" lower-cased,
    ``params`` maps lower-cased names to unquoted values."""

    essence: str
    params: dict[str, str] = field(default_factory=dict)

    def param(self, name: str) -> str | None:
        return self.params.get(name.lower())


def parse_media_type(value: str) -> MediaType:
    """``value`` (a Content-Type) parsed, or Failed saying where it breaks RFC 9110 8.3.1."""
    text = value.strip()
    essence = re.match(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)/([!#$%&'*+\-.^_`|~0-9A-Za-z]+)", text)
    if essence is None:
        raise Failed(f"media type {value!r} is not type/subtype")
    params: dict[str, str] = {}
    pos = essence.end()
    while True:
        pos = _skip_ows(text, pos)
        if pos == len(text):
            break
        if text[pos] != ";":
            raise Failed(f"media type {value!r}: unexpected {text[pos : pos + 10]!r}")
        pos = _skip_ows(text, pos + 1)
        if pos == len(text) or text[pos] == ";":
            continue  # an empty parameter is allowed
        name = _PARAM_NAME.match(text, pos)
        if name is None:
            raise Failed(f"media type {value!r}: bad parameter at {text[pos : pos + 20]!r}")
        key = name.group(1).lower()
        pos = name.end()
        if pos < len(text) and text[pos] == '"':
            param, pos = _quoted_string(text, pos, value)
        else:
            token = _TOKEN.match(text, pos)
            if token is None:
                raise Failed(f"media type {value!r}: parameter {key!r} has no valid value")
            param, pos = token.group(0), token.end()
        if key in params:  # RFC 6838 4.3: a parameter given twice is an error
            raise Failed(f"media type {value!r}: parameter {key!r} given twice")
        params[key] = param
    return MediaType(f"{essence.group(1)}/{essence.group(2)}".lower(), params)


def _skip_ows(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    return pos


def _quoted_string(text: str, pos: int, value: str) -> tuple[str, int]:
    """The quoted-string starting at ``pos`` unquoted, and the position after it."""
    out: list[str] = []
    pos += 1
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return "".join(out), pos + 1
        if char == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        out.append(char)
        pos += 1
    raise Failed(f"media type {value!r}: a quoted string is not closed")


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related`` Content-Type, or Failed saying why there is
    none (not multipart/related, no boundary, a boundary RFC 2046 does not allow)."""
    media = parse_media_type(content_type)
    if media.essence != "multipart/related":
        raise Failed(f"Content-Type is {content_type!r}, not multipart/related")
    boundary = media.param("boundary")
    if boundary is None:
        raise Failed(f"Content-Type {content_type!r} has no boundary parameter")
    if not _BOUNDARY.match(boundary):
        raise Failed(
            f"boundary {boundary!r} is not 1 to 70 RFC 2046 characters ending in a non-space"
        )
    return boundary


@dataclass(frozen=True)
class Part:
    """One body part: its header fields in order, the first ``keep`` bytes of its body, and
    the body's whole length."""

    headers: tuple[tuple[str, str], ...]
    body: bytes
    size: int

    @property
    def truncated(self) -> bool:
        """True when only the start of the body was kept."""
        return self.size > len(self.body)

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    def header_count(self, name: str) -> int:
        wanted = name.lower()
        return sum(1 for k, _ in self.headers if k.lower() == wanted)


class _State(enum.Enum):
    PREAMBLE = "the preamble"
    DELIMITER = "a delimiter line"
    HEADERS = "the header section of a part"
    BODY = "the body of a part"
    EPILOGUE = "the epilogue"


class MultipartParser:
    """Incremental reader of one multipart body (see the module docstring).

    ``feed`` returns the parts completed by the bytes given; ``close`` says the body has
    ended and raises Failed unless the close delimiter was seen.
    """

    def __init__(self, boundary: str, *, keep: int | None = None) -> None:
        if not _BOUNDARY.match(boundary):
            raise Failed(f"boundary {boundary!r} is not allowed by RFC 2046")
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        self._boundary = boundary
        self._keep = keep
        # A virtual CRLF before the body lets the first delimiter be found like the others.
        self._buffer = bytearray(b"\r\n")
        self._state = _State.PREAMBLE
        self._headers: tuple[tuple[str, str], ...] = ()
        self._chunks: list[bytes] = []
        self._kept = 0
        self._size = 0
        self.parts = 0  # parts completed so far
        self.received = 0  # bytes fed so far

    @property
    def done(self) -> bool:
        """True once the close delimiter has been read."""
        return self._state is _State.EPILOGUE

    def feed(self, data: bytes) -> list[Part]:
        """Take the next bytes of the body; the parts they complete."""
        self.received += len(data)
        if self._state is _State.EPILOGUE:
            return []  # the epilogue is ignored (RFC 2046)
        self._buffer += data
        finished: list[Part] = []
        while self._step(finished):
            pass
        return finished

    def close(self) -> None:
        """The body has ended: Failed unless it ended after the close delimiter."""
        if self._state is _State.EPILOGUE:
            return
        if self._state is _State.PREAMBLE:
            raise Failed(f"no delimiter '--{self._boundary}' in the body ({self.received} bytes)")
        raise Failed(
            f"the body ends in {self._state.value} (after {self.parts} complete parts, "
            f"{self.received} bytes) without the close delimiter '--{self._boundary}--': "
            "cut short?"
        )

    # One step of the state machine; False when it needs more bytes.
    def _step(self, finished: list[Part]) -> bool:
        if self._state is _State.PREAMBLE:
            return self._preamble()
        if self._state is _State.DELIMITER:
            return self._after_delimiter()
        if self._state is _State.HEADERS:
            return self._header_section()
        if self._state is _State.BODY:
            return self._body(finished)
        return False

    def _preamble(self) -> bool:
        found = self._buffer.find(self._delimiter)
        if found < 0:
            self._no_bare_lf_delimiter()
            keep = len(self._delimiter) - 1  # a delimiter may straddle two feeds
            if len(self._buffer) > keep:
                del self._buffer[: len(self._buffer) - keep]
            return False
        del self._buffer[: found + len(self._delimiter)]
        self._state = _State.DELIMITER
        return True

    def _no_bare_lf_delimiter(self) -> None:
        """Failed when the delimiter is there but after a bare LF (a common framing fault that
        would otherwise read as a body with no end)."""
        found = self._buffer.find(self._delimiter[1:])
        while found >= 0:
            if found == 0 or self._buffer[found - 1] != 0x0D:
                where = (
                    f"before part {self.parts + 1}"
                    if self.parts == 0
                    else (f"after part {self.parts + 1}")
                )
                raise Failed(
                    f"the delimiter '--{self._boundary}' {where} follows a bare LF, not CRLF"
                )
            found = self._buffer.find(self._delimiter[1:], found + 1)

    def _after_delimiter(self) -> bool:
        """After "--boundary": "--" closes; else optional padding, then CRLF."""
        buf = self._buffer
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            if self.parts == 0:
                raise Failed("the close delimiter comes before any body part (RFC 2046: 1 or more)")
            self._state = _State.EPILOGUE
            self._buffer.clear()
            return False
        pos = 0
        while pos < len(buf) and buf[pos] in _WHITESPACE:
            pos += 1
        if len(buf) - pos < 2:
            return False
        if buf[pos : pos + 2] != b"\r\n":
            what = "a bare LF" if buf[pos : pos + 1] == b"\n" else repr(bytes(buf[pos : pos + 12]))
            raise Failed(
                f"delimiter '--{self._boundary}' before part {self.parts + 1} is followed by "
                f"{what}, not CRLF"
            )
        del buf[: pos + 2]
        self._state = _State.HEADERS
        return True

    def _header_section(self) -> bool:
        buf = self._buffer
        if buf[:2] == b"\r\n":  # a part with no header fields
            end, skip = 0, 2
        else:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if b"\n" in bytes(buf).replace(b"\r\n", b""):
                    raise Failed(f"part {self.parts + 1}: a bare LF in its header section")
                if len(buf) > MAX_HEADER_BYTES:
                    raise Failed(
                        f"part {self.parts + 1}: no end of its header section in "
                        f"{MAX_HEADER_BYTES} bytes"
                    )
                return False
            skip = 4
        self._headers = _parse_headers(bytes(buf[:end]), self.parts + 1)
        del buf[: end + skip]
        self._chunks, self._kept, self._size = [], 0, 0
        self._state = _State.BODY
        return True

    def _body(self, finished: list[Part]) -> bool:
        buf = self._buffer
        found = buf.find(self._delimiter)
        if found < 0:
            self._no_bare_lf_delimiter()
            safe = len(buf) - (len(self._delimiter) - 1)
            if safe > 0:
                self._take(bytes(buf[:safe]))
                del buf[:safe]
            return False
        self._take(bytes(buf[:found]))
        del buf[: found + len(self._delimiter)]
        self.parts += 1
        finished.append(Part(self._headers, b"".join(self._chunks), self._size))
        self._chunks = []
        self._state = _State.DELIMITER
        return True

    def _take(self, data: bytes) -> None:
        self._size += len(data)
        room = len(data) if self._keep is None else max(0, self._keep - self._kept)
        if room:
            piece = data[:room]
            self._chunks.append(piece)
            self._kept += len(piece)


def _parse_headers(block: bytes, number: int) -> tuple[tuple[str, str], ...]:
    """A part's header lines (RFC 2045/5322 fields, folded lines unfolded), strictly CRLF."""
    if not block:
        return ()
    if b"\n" in block.replace(b"\r\n", b""):
        raise Failed(f"part {number}: a bare LF in its header section (CRLF required)")
    fields: list[tuple[str, str]] = []
    for raw in block.split(b"\r\n"):
        if raw[:1] in (b" ", b"\t") and fields:  # a folded continuation line
            known, before = fields[-1]
            fields[-1] = (known, f"{before} {raw.strip().decode('latin-1')}")
            continue
        name, colon, value = raw.partition(b":")
        if not colon or not _HEADER_NAME.match(name):
            raise Failed(f"part {number}: header line {raw[:60]!r} is not 'Name: value'")
        fields.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
    return tuple(fields)


def read_multipart(body: bytes, content_type: str, *, keep: int | None = None) -> list[Part]:
    """Every part of a whole ``multipart/related`` body, or Failed naming the framing fault."""
    parser = MultipartParser(boundary_of(content_type), keep=keep)
    parts = parser.feed(body)
    parser.close()
    return parts
