"""multipart/related bodies: a writer and an incremental, sans-I/O reader.

Grammar: RFC 2046 section 5.1.1 (boundaries, delimiters, transport padding), RFC 2387
(multipart/related and its ``type`` parameter) and DICOM PS3.18 section 8.6.1.2 (multipart
payloads in DICOMweb). A body looks like::

    preamble (ignored)
    --B<padding>CRLF            first delimiter; also allowed at the very start of the body
    header lines CRLF CRLF
    part data
    CRLF--B<padding>CRLF        each further delimiter starts with the CRLF that ends the data
    ...
    CRLF--B--                   close delimiter
    epilogue (ignored)

The writer functions only build bytes; the caller writes them. :class:`MultipartReader`
follows h11's style: the caller pushes bytes in with :meth:`~MultipartReader.feed`, gets a
list of events back, and calls :meth:`~MultipartReader.finish` at EOF so that a truncated
stream is reported instead of being mistaken for a complete one.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, auto
from functools import lru_cache
from types import MappingProxyType
from typing import Final

__all__ = [
    "End",
    "Event",
    "MultipartError",
    "MultipartReader",
    "PartData",
    "PartEnd",
    "PartStart",
    "boundary_from_content_type",
    "closing_delimiter",
    "content_type",
    "new_boundary",
    "parse_content_type",
    "part_header",
]


class MultipartError(ValueError):
    """A malformed multipart body, boundary or Content-Type (RFC 2046 section 5.1.1)."""


# RFC 2046 5.1.1: boundary := 0*69<bchars> bcharsnospace, bchars include space and '()+_,-./:=?
_BOUNDARY: Final = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 9110 5.6.2 token
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PADDING: Final = re.compile(rb"[ \t]*")
# The blank line that ends a header section, given that the section does not start with it.
_HEADER_END: Final = re.compile(rb"\n\r?\n")


def _check_boundary(boundary: str) -> str:
    if _BOUNDARY.fullmatch(boundary) is None:
        raise MultipartError(
            "invalid multipart boundary: 1 to 70 characters from RFC 2046 bchars, "
            "not ending with a space"
        )
    return boundary


def _param_value(value: str) -> str:
    """``value`` as an RFC 9110 5.6.6 parameter value: a token, else a quoted-string."""
    if _TOKEN.fullmatch(value):
        return value
    if any(c in value for c in "\r\n\0"):
        raise ValueError("parameter value contains a control character")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


# --------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------


def new_boundary() -> str:
    """A fresh random boundary (RFC 2046 section 5.1.1) of 32 hex digits.

    128 random bits make a collision with part content practically impossible, so the
    writer never has to scan the data it sends.
    """
    return secrets.token_hex(16)


def content_type(type_: str, boundary: str, **params: str) -> str:
    """The Content-Type of a multipart/related body (RFC 2387 section 3, PS3.18 8.7.3.5.1).

    ``type`` is always quoted (several DICOMweb clients only parse the quoted form); the
    extra ``params`` follow it, with ``_`` in their names written as ``-`` (so
    ``transfer_syntax=`` gives ``transfer-syntax=``); ``boundary`` comes last::

        >>> content_type("application/dicom", "B", transfer_syntax="*")
        'multipart/related; type="application/dicom"; transfer-syntax=*; boundary=B'
    """
    _check_boundary(boundary)
    if '"' in type_ or "\\" in type_ or any(c in type_ for c in "\r\n\0"):
        raise ValueError("invalid type parameter")
    out = [f'multipart/related; type="{type_}"']
    for name, value in params.items():
        pname = name.replace("_", "-").lower()
        if pname in ("type", "boundary") or not _TOKEN.fullmatch(pname):
            raise ValueError(f"invalid multipart/related parameter name: {name!r}")
        out.append(f"{pname}={_param_value(value)}")
    out.append(f"boundary={_param_value(boundary)}")
    return "; ".join(out)


def part_header(boundary: str, headers: Mapping[str, str], *, first: bool) -> bytes:
    """Delimiter plus header section opening one body part (RFC 2046 section 5.1.1).

    ``b"\\r\\n--B\\r\\nName: value\\r\\n\\r\\n"``; without the leading CRLF for the first part,
    since there is no preceding part data for it to terminate. The part data follows
    directly. Header names and values must be ASCII without CR, LF or NUL.
    """
    _check_boundary(boundary)
    lines = [f"--{boundary}"]
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name: {name!r}")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name} contains a line break or NUL")
        lines.append(f"{name}: {value}")
    text = "\r\n".join(lines) + "\r\n\r\n"
    if not first:
        text = "\r\n" + text
    return text.encode("ascii")


def closing_delimiter(boundary: str, *, empty: bool) -> bytes:
    """The close delimiter ending a multipart body (RFC 2046 section 5.1.1).

    ``b"\\r\\n--B--\\r\\n"`` after at least one part; ``b"--B--\\r\\n"`` when ``empty`` (no
    part was written). RFC 2046 wants at least one part, but a zero-part body is what some
    servers send for an empty result, so :class:`MultipartReader` accepts it too.
    """
    _check_boundary(boundary)
    text = f"--{boundary}--\r\n"
    return text.encode("ascii") if empty else ("\r\n" + text).encode("ascii")


def _split_params(value: str) -> list[str]:
    """Split on ``;`` outside quoted strings (RFC 9110 5.6.4, 5.6.6)."""
    if '"' not in value:
        return value.split(";")
    out: list[str] = []
    cur: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == ";" and not quoted:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """``media/type`` (lower-cased) and its parameters (names lower-cased, values unquoted)
    of a Content-Type (RFC 9110 8.3.1)."""
    pieces = _split_params(value)
    params: dict[str, str] = {}
    for param in pieces[1:]:
        name, eq, raw = param.partition("=")
        if eq:
            params.setdefault(name.strip().lower(), _unquote(raw.strip()))
    return pieces[0].strip().lower(), params


def boundary_from_content_type(value: str) -> str:
    """The ``boundary`` parameter of a multipart Content-Type (RFC 2046 section 5.1.1).

    The value may be a token or a quoted-string. Raises :class:`MultipartError` when the
    parameter is missing, empty, longer than 70 characters or uses characters outside
    RFC 2046 ``bchars``.
    """
    for param in _split_params(value)[1:]:
        name, eq, raw = param.partition("=")
        if eq and name.strip().lower() == "boundary":
            return _check_boundary(_unquote(raw.strip()))
    raise MultipartError("multipart Content-Type without a boundary parameter")


# --------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartStart:
    """A body part begins. ``headers`` has lower-cased names; repeated fields are joined
    with ``", "`` (RFC 9110 5.3)."""

    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PartData:
    """A non-empty piece of the current part's body: a view of the bytes fed, not a copy
    (the reader never changes what it was fed; neither may the consumer)."""

    data: memoryview


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete (its terminating delimiter was seen)."""


@dataclass(frozen=True, slots=True)
class End:
    """The close delimiter was seen; anything after it (epilogue) is ignored."""


Event = PartStart | PartData | PartEnd | End


class _State(Enum):
    PREAMBLE = auto()
    AFTER_DELIMITER = auto()
    HEADERS = auto()
    BODY = auto()
    DONE = auto()
    FAILED = auto()


_EMPTY_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})


class MultipartReader:
    """Incremental multipart body parser (RFC 2046 section 5.1.1, PS3.18 8.6.1.2).

    Feed it any chunking of the body; it returns :class:`PartStart`, :class:`PartData`,
    :class:`PartEnd` and finally :class:`End` events. Part data is released as soon as it
    cannot be the beginning of a delimiter, so memory stays bounded by one chunk plus the
    delimiter length whatever the size of a part. At EOF call :meth:`finish`, which raises
    :class:`MultipartError` if the close delimiter never came (a truncated upstream).

    Lenient where real servers are sloppy: transport padding after a delimiter, bare LF
    line endings in the header section, folded header lines. Strict where silence would
    corrupt data: a boundary followed by anything but padding + line end or ``--`` is an
    error, as is a header section over ``max_header_bytes``.

    A part with a ``Content-Length`` (PACS send one per instance) is read by counting: its
    body is passed on without searching it for the delimiter, which must then follow it
    exactly: a length that does not match the body is an error, never a part cut or merged.
    """

    __slots__ = (
        "_delimiter",
        "_error",
        "_header_scanned",
        "_max_header_bytes",
        "_pending",
        "_remaining",
        "_state",
    )

    def __init__(self, boundary: str, *, max_header_bytes: int = 16384) -> None:
        _check_boundary(boundary)
        if max_header_bytes < 1:
            raise ValueError("max_header_bytes must be positive")
        self._delimiter = b"\r\n--" + boundary.encode("ascii")
        self._max_header_bytes = max_header_bytes
        self._state = _State.PREAMBLE
        # Unconsumed input. Starting with a virtual CRLF lets the first delimiter be found
        # whether it is at the very start of the body or after a preamble line.
        self._pending = b"\r\n"
        # In HEADERS: how many bytes of _pending were already searched for the blank line.
        self._header_scanned = 0
        # In BODY: bytes of the part's declared Content-Length still to come; -1 if unknown.
        self._remaining = -1
        self._error: MultipartError | None = None

    @property
    def done(self) -> bool:
        """True once the close delimiter has been seen."""
        return self._state is _State.DONE

    @property
    def body_remaining(self) -> int:
        """Bytes of the current part's declared Content-Length still to come, once every
        byte fed is consumed; -1 when not in such a body."""
        if self._state is not _State.BODY or self._pending:
            return -1
        return self._remaining

    def skip_body(self, size: int) -> None:
        """``size`` bytes of the current part's body were taken past the reader (at most
        :attr:`body_remaining`): what is fed next follows them."""
        if not 0 <= size <= self.body_remaining:
            raise ValueError("skip_body: more than the part's body has left")
        self._remaining -= size

    @property
    def buffered(self) -> int:
        """Bytes held back between calls (bounded by the delimiter length in part data)."""
        return len(self._pending)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Consume the next chunk of the body and return the events it completes.

        Data after the close delimiter is ignored. Raises :class:`MultipartError` on a
        malformed body; the reader is then unusable and every later call raises again.
        """
        if self._error is not None:
            raise self._error
        if self._state is _State.DONE:
            return []
        if isinstance(data, memoryview):
            data = bytes(data)
        buf = self._pending + data if self._pending else data
        self._pending = b""
        try:
            return self._process(buf)
        except MultipartError as exc:
            self._fail(exc)
            raise

    def finish(self) -> None:
        """Signal EOF. Raises :class:`MultipartError` unless the close delimiter was seen
        (RFC 2046 section 5.1.1: the body ends with the close delimiter)."""
        if self._error is not None:
            raise self._error
        if self._state is _State.DONE:
            return
        where = {
            _State.PREAMBLE: "before the first boundary",
            _State.AFTER_DELIMITER: "in a boundary line",
            _State.HEADERS: "in a part's header section",
            _State.BODY: "in a part's body",
        }.get(self._state, "")
        exc = MultipartError(f"truncated multipart body: stream ended {where}".rstrip())
        self._fail(exc)
        raise exc

    def _fail(self, exc: MultipartError) -> None:
        self._error = exc
        self._state = _State.FAILED
        self._pending = b""

    def _process(self, buf: bytes | bytearray) -> list[Event]:
        events: list[Event] = []
        delimiter = self._delimiter
        dlen = len(delimiter)
        pos = 0
        n = len(buf)
        view = memoryview(buf)
        while True:
            state = self._state
            if state is _State.BODY and self._remaining >= 0:
                take = min(n - pos, self._remaining)
                if take:
                    events.append(PartData(view[pos : pos + take]))
                    pos += take
                    self._remaining -= take
                if self._remaining:
                    return events
                if n - pos < dlen:
                    self._pending = bytes(view[pos:])
                    return events
                if not buf.startswith(delimiter, pos):
                    raise MultipartError("a part's Content-Length does not match its body")
                self._remaining = -1
                events.append(PartEnd())
                pos += dlen
                self._state = _State.AFTER_DELIMITER
            elif state is _State.BODY:
                idx = buf.find(delimiter, pos)
                if idx < 0:
                    keep = self._hold_back_from(buf, pos)
                    if keep > pos:
                        events.append(PartData(view[pos:keep]))
                    self._pending = bytes(view[keep:])
                    return events
                if idx > pos:
                    events.append(PartData(view[pos:idx]))
                events.append(PartEnd())
                pos = idx + dlen
                self._state = _State.AFTER_DELIMITER
            elif state is _State.PREAMBLE:
                idx = buf.find(delimiter, pos)
                if idx < 0:
                    # Discard the preamble, keeping only what may begin a delimiter.
                    self._pending = bytes(view[max(pos, n - dlen + 1) :])
                    return events
                pos = idx + dlen
                self._state = _State.AFTER_DELIMITER
            elif state is _State.AFTER_DELIMITER:
                match = _PADDING.match(buf, pos)
                assert match is not None  # [ \t]* always matches
                p = match.end()
                if p - pos > self._max_header_bytes:
                    raise MultipartError("transport padding after a boundary is too long")
                if p >= n - 1:
                    # Need two bytes (CRLF or "--"), or one byte that is a bare LF.
                    if p == n - 1 and buf[p] == 0x0A:
                        pos = p + 1
                        self._enter_headers()
                        continue
                    if p == n - 1 and buf[p] not in b"\r-":
                        raise MultipartError("invalid characters after a multipart boundary")
                    self._pending = bytes(view[pos:])
                    return events
                two = buf[p : p + 2]
                if two == b"--":
                    self._state = _State.DONE
                    events.append(End())
                    return events
                if two == b"\r\n":
                    pos = p + 2
                elif buf[p] == 0x0A:
                    pos = p + 1
                else:
                    raise MultipartError("invalid characters after a multipart boundary")
                self._enter_headers()
            elif state is _State.HEADERS:
                result = self._parse_headers(buf, pos)
                if result is None:
                    self._pending = bytes(view[pos:])
                    return events
                headers, pos = result
                events.append(PartStart(headers))
                self._state = _State.BODY
                self._remaining = _declared_length(headers)
            else:  # pragma: no cover - DONE/FAILED never reach _process
                return events

    def _enter_headers(self) -> None:
        self._state = _State.HEADERS
        self._header_scanned = 0

    def _hold_back_from(self, buf: bytes | bytearray, pos: int) -> int:
        """Index from which ``buf`` must be kept because it may start a delimiter.

        Only a suffix shorter than the delimiter that is a prefix of it can; such a suffix
        starts with CR, so at most a few ``find`` calls over the last ``dlen - 1`` bytes.
        """
        delimiter = self._delimiter
        n = len(buf)
        start = max(pos, n - len(delimiter) + 1)
        cr = buf.find(b"\r", start)
        while cr >= 0:
            if delimiter.startswith(buf[cr:]):
                return cr
            cr = buf.find(b"\r", cr + 1)
        return n

    def _parse_headers(
        self, buf: bytes | bytearray, pos: int
    ) -> tuple[Mapping[str, str], int] | None:
        """Parse the header section at ``buf[pos:]``; None if it is not complete yet."""
        limit = self._max_header_bytes
        # A section that is just the blank line: a part without headers.
        if buf.startswith(b"\r\n", pos):
            return _EMPTY_HEADERS, pos + 2
        if buf.startswith(b"\n", pos):
            return _EMPTY_HEADERS, pos + 1
        if buf.startswith(b"\r", pos) and len(buf) == pos + 1:
            return None
        # Do not re-scan what earlier feeds searched; the terminator is at most 3 bytes.
        start = pos + max(0, self._header_scanned - 2)
        match = _HEADER_END.search(buf, start)
        if match is None:
            self._header_scanned = len(buf) - pos
            if self._header_scanned > limit:
                raise MultipartError(f"part header section larger than {limit} bytes")
            return None
        end = match.end()
        if end - pos > limit:
            raise MultipartError(f"part header section larger than {limit} bytes")
        return _decode_headers(bytes(buf[pos : match.start()])), end


def _declared_length(headers: Mapping[str, str]) -> int:
    """A part's Content-Length if it is one (RFC 9110 8.6: digits only), else -1."""
    value = headers.get("content-length", "")
    return int(value) if value.isdigit() and value.isascii() and len(value) < 19 else -1


# A study's parts mostly repeat one header section (same type, same size): decoded once. The
# mapping is read-only, so parts may share it.
@lru_cache(maxsize=128)
def _decode_headers(raw: bytes) -> Mapping[str, str]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    headers: dict[str, str] = {}
    last: str | None = None
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if line[:1] in (" ", "\t"):
            # Obsolete line folding (RFC 5322 2.2.3): continue the previous field.
            if last is None:
                raise MultipartError("part header section starts with a continuation line")
            headers[last] = f"{headers[last]} {line.strip()}".strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not _TOKEN.fullmatch(name):
            raise MultipartError("malformed header line in a multipart part")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
        last = name
    return MappingProxyType(headers)
