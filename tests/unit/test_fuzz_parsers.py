"""Fuzzing the parsers that read what a client sends: the QIDO-RS query, the Accept header with
every offer table, FHIR format negotiation and the FHIR search parameters.

Whatever the input (printable or not, huge, unicode, control characters, lone surrogates,
``%`` sequences, deep dotted paths, many repetitions), each parser returns a value or raises
one of the gateway's 4xx errors, whose body the error middleware can send (JSON-encodable),
and it does so quickly: never another exception (a 500), never a hang. What a FHIR search
sends on (its QIDO queries) parses too; a QIDO query the gateway accepts reads back the same
from the parameters it forwards.

Brief by default (profile "ci": 200 examples per test, the file in about 15 s);
``HYPOTHESIS_PROFILE=long`` runs 20 000 per test locally (about 20 minutes).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ncpeh_dicomweb.dicomweb.accept import Offer, negotiate, parse_accept
from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.media import (
    negotiate_bulk,
    negotiate_dicom_json,
    negotiate_frames,
    negotiate_instances,
    negotiate_rendered,
)
from ncpeh_dicomweb.dicomweb.query import encode_query, parse_qido, to_params
from ncpeh_dicomweb.dicomweb.transfer_syntaxes import TRANSFER_SYNTAXES
from ncpeh_dicomweb.errors import GatewayError
from ncpeh_dicomweb.fhir.negotiation import negotiate_fhir
from ncpeh_dicomweb.fhir.outcome import operation_outcome
from ncpeh_dicomweb.fhir.search import parse_study_search, to_qido
from ncpeh_dicomweb.fhir.selection_search import pacs_queries, parse_selection_search
from ncpeh_dicomweb.fhir.tokens import IssuerTable, NoSystem

T = TypeVar("T")

# Profiles: "ci" (the default) keeps the file short; "long" is for a local soak.
settings.register_profile(
    "ci",
    max_examples=200,
    # ms per example (each runs the parser once or a few times): the parsers take well under
    # 50 ms on the largest inputs here; the margin is for a loaded CI machine.
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=20_000,
    deadline=3000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
_PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# A hard stop for a parser that never returns (the deadline only measures examples that end).
HANG_SECONDS = 10.0


class Hung(Exception):
    """A parser ran longer than HANG_SECONDS on one input."""


@contextmanager
def _no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    def alarm(signum: int, frame: Any) -> None:
        raise Hung(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    # Again every 0.5 s: a first alarm may land in a garbage collector callback, which
    # swallows exceptions.
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.5)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _answer_or_4xx(call: Callable[[], T]) -> T | GatewayError:
    """``call()``'s value, or the GatewayError (4xx) it raised, after checking that its body
    can be sent both as our JSON error and as a FHIR OperationOutcome."""
    with _no_hang():
        try:
            return call()
        except GatewayError as exc:
            error = exc
    assert 400 <= error.status < 500, (type(error), error.status, error.message)
    assert error.message
    orjson.dumps(error.body())  # the error middleware's json_response
    orjson.dumps(operation_outcome(error))  # FHIR routes
    return error


# ---------------------------------------------------------------------- strategies

# Any code point, lone surrogates and control characters included.
ANY_CHAR = st.characters(exclude_categories=())
any_text = st.text(ANY_CHAR, max_size=40)

PERCENT = st.sampled_from(
    ["%", "%%", "%0", "%00", "%0D%0A", "%2F", "%2E%2E", "%5C", "%FF", "%ED%A0%80", "%E2%82", "%25"]
)
CONTROLS = st.sampled_from(["\x00", "\r", "\n", "\r\n", "\t", "\x7f", "\x85", "\u2028", "\ufeff"])
SURROGATES = st.sampled_from(["\ud800", "\udfff", "\udcff", "\ud83d\ude00"])


def _pieces(vocabulary: list[str]) -> st.SearchStrategy[str]:
    """Strings built from the vocabulary of a grammar, odd characters mixed in."""
    piece = st.one_of(
        st.sampled_from(vocabulary),
        st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=6),
        PERCENT,
        CONTROLS,
        SURROGATES,
        st.text(ANY_CHAR, max_size=3),
    )
    return st.lists(piece, max_size=12).map("".join)


def _huge(small: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A short string repeated up to 64 000 characters (four times the longest header the
    server reads, eight times its longest query string)."""
    return st.tuples(small.filter(bool), st.integers(1, 64_000)).map(
        lambda t: (t[0] * (t[1] // len(t[0]) + 1))[: t[1]]
    )


def _texts(vocabulary: list[str]) -> st.SearchStrategy[str]:
    structured = _pieces(vocabulary)
    return st.one_of(structured, any_text, _huge(structured), st.just(""))


def _params(names: st.SearchStrategy[str], values: st.SearchStrategy[str]) -> Any:
    """Parameter lists: a few pairs, or one pair repeated hundreds or thousands of times."""
    pair = st.tuples(names, values)
    few = st.lists(pair, max_size=10)
    repeated = st.tuples(pair, st.integers(1, 4000)).map(lambda t: [t[0]] * t[1])
    mixed = st.tuples(few, repeated, few).map(lambda t: t[0] + t[1] + t[2])
    return st.one_of(few, repeated, mixed)


# QIDO-RS (PS3.18 8.3.4): reserved names, keywords, tags, sequences, DICOM values.
QIDO_NAMES = [
    "includefield",
    "IncludeField",
    "fuzzymatching",
    "limit",
    "offset",
    "emptyvaluematching",
    "multiplevaluematching",
    "_",
    "PatientID",
    "PatientName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "StudyDate",
    "StudyTime",
    "AcquisitionDateTime",
    "Modality",
    "ModalitiesInStudy",
    "AccessionNumber",
    "ReferringPhysicianName",
    "IssuerOfPatientIDQualifiersSequence",
    "UniversalEntityID",
    "ReferencedStudySequence",
    "ReferencedSOPInstanceUID",
    "PixelData",
    "NumberOfFrames",
    "00100020",
    "0020000D",
    "00091010",
    "00090010",
    "7FE00010",
    "FFFEE000",
    "ffffffff",
    "00000000",
    "all",
    ".",
    "..",
    ",",
]
QIDO_VALUES = [
    "*",
    "?",
    "**",
    "\\",
    ",",
    "-",
    ".",
    "1.2.3",
    "1.2.840.10008.1.2",
    "0",
    "01",
    "1" * 70,
    "20240101",
    "2024",
    "20240101-20231231",
    "-20240101",
    "120000.123456",
    "20240101120000+0100",
    "-0500",
    "CT",
    "MR\\CT",
    "Doe^John",
    "=",
    "true",
    "false",
    "all",
    "99999999999999999999",
    "' OR 1=1 --",
    '"',
    "../../etc/passwd",
]


def _dotted(names: list[str]) -> st.SearchStrategy[str]:
    """Deep dotted sequence paths (PS3.18 8.3.4.1), up to 40 attributes."""
    return st.lists(st.sampled_from(names), min_size=2, max_size=40).map(".".join)


qido_names = st.one_of(_texts(QIDO_NAMES), _dotted(QIDO_NAMES))
qido_values = st.one_of(_texts(QIDO_VALUES), _dotted(QIDO_VALUES))

# Accept (RFC 9110 12.5.1) and DICOM's media type parameters (PS3.18 8.7.3.5).
ACCEPT_WORDS = [
    "*/*",
    "*",
    "*/json",
    "application/dicom",
    "application/dicom+json",
    "application/json",
    "application/dicom+xml",
    "application/octet-stream",
    "application/fhir+json",
    "multipart/related",
    "multipart/*",
    "image/*",
    "image/jpeg",
    "image/jp2",
    "image/png",
    "video/mpeg",
    "text/html",
    ";",
    ",",
    "=",
    '"',
    "\\",
    " ",
    "\t",
    "/",
    "q=",
    "q=0",
    "q=1",
    "q=0.5",
    "q=.5",
    "q=1.0000",
    "q=2",
    "q=-1",
    "q=nan",
    "q=1e3",
    "q=" + "9" * 400,
    "type=",
    'type="application/dicom"',
    "type=application/octet-stream",
    'type="*/*"',
    "transfer-syntax=",
    "transfer-syntax=*",
    "transfer-syntax=1.2.840.10008.1.2.1",
    "transfer-syntax=1.2.840.10008.1.2",
    "transfer-syntax=1.2.840.10008.1.2.4.50",
    "charset=utf-8",
    "charset=utf8",
    "charset=latin1",
    "fhirVersion=4.0",
    "fhirVersion=5.0",
    "fhirVersion=5.0.0",
    "fhirVersion=3.0",
    "boundary=x",
]
accept_headers = st.one_of(st.none(), _texts(ACCEPT_WORDS))
FORMAT_WORDS = [
    "json",
    "xml",
    "ttl",
    "html",
    "application/fhir+json",
    "application/fhir json",
    "application/json",
    "text/xml",
    ";",
    "fhirVersion=4.0",
    "fhirVersion=5.0",
    "fhirVersion=6.0",
    "fhirversion=",
    " ",
    "+",
]
format_params = st.one_of(st.none(), _texts(FORMAT_WORDS))

WEB_SYNTAXES = sorted(TRANSFER_SYNTAXES)
stored_syntaxes = st.one_of(st.sampled_from(WEB_SYNTAXES), st.just("1.2.3.4.5.6"))

# FHIR search (R4 search.html): names with modifiers and chains, token, date, reference values.
FHIR_NAMES = [
    "patient",
    "patient.identifier",
    "patient:identifier",
    "patient:Patient",
    "patient:Patient.identifier",
    "subject",
    "subject.identifier",
    "identifier",
    "identifier:not",
    "_id",
    "modality",
    "modality:not",
    "started",
    "status",
    "reason",
    "reasonCode",
    "bodysite",
    "body-site",
    "series",
    "instance",
    "dicom-class",
    "study-uid",
    "derived-from",
    "derived-from:ImagingStudy",
    "code",
    "code:not",
    "_count",
    "_offset",
    "_include",
    "_include:iterate",
    "_summary",
    "_elements",
    "_sort",
    "_format",
    "_pretty",
    ":",
    ".",
    ":not",
    "nonsense",
]
FHIR_VALUES = [
    "|",
    "\\|",
    "\\,",
    "\\\\",
    "\\$",
    "\\",
    ",",
    "$",
    "urn:oid:",
    "urn:oid:1.2.3",
    "urn:dicom:uid|",
    "urn:ietf:rfc:3986|urn:oid:1.2.3",
    "http://loinc.org|",
    "urn:oid:1.2.203.24341.1.2|",
    "1.2.3",
    "456789123",
    "CT",
    "DCM|MR",
    "Patient/",
    "Patient/456789123",
    "Patient/456789123-.1.2.203.24341.1.2",
    "Patient/-x" + "a" * 62,
    "ImagingStudy/1.2.3",
    "ImagingStudy/h" + "0" * 48,
    "Observation/x",
    "http://example.org/fhir/Patient/1",
    "https://",
    "-",
    "-.",
    "-41",
    "-ZZ",
    "2024",
    "2024-06",
    "2024-06-01",
    "2024-06-01T10:00",
    "2024-06-01T10:00:00.123456789Z",
    "2024-06-01T10:00:00 02:00",
    "2024-02-30",
    "eq",
    "ne",
    "gt",
    "lt",
    "ge",
    "le",
    "sa",
    "eb",
    "ap",
    "apgt",
    "0001-01-01",
    "9999-12-31T23:59:59.999999+14:00",
    "0",
    "999999999",
    "1" * 30,
    "count",
    "false",
    "started",
    "-started",
    "ImagingStudy:patient",
    "ImagingStudy:endpoint:Endpoint",
    "id",
    "series",
    "*",
    "?",
]
fhir_names = _texts(FHIR_NAMES)
fhir_values = _texts(FHIR_VALUES)

LEVELS = list(Level)
ISSUERS = IssuerTable({"urn:oid:1.2.203.24341.1.2": "CZ-NCPEH"})
NOW = datetime(2025, 1, 15, 12, 0, tzinfo=UTC)


def _internal_qido(params: list[tuple[str, str]], level: Level) -> object:
    return parse_qido([*params, ("limit", "1000")], level, max_value_length=1 << 20)


def _fuzz(test: Callable[..., None]) -> Callable[..., None]:
    return settings(_PROFILE)(test)


# ---------------------------------------------------------------------- QIDO-RS


@_fuzz
@given(params=_params(qido_names, qido_values), level=st.sampled_from(LEVELS))
def test_parse_qido(params: list[tuple[str, str]], level: Level) -> None:
    result = _answer_or_4xx(lambda: parse_qido(params, level))
    if isinstance(result, GatewayError):
        return
    # What the gateway sends on is what it read: its canonical parameters parse back to it.
    again = parse_qido(to_params(result), level, max_value_length=1 << 20)
    assert again == result
    encode_query(to_params(result))


@_fuzz
@given(
    raw=_texts([*QIDO_NAMES, *QIDO_VALUES, "&", "=", "+", "%2B", "%26", "%3D"]),
    level=st.sampled_from(LEVELS),
)
def test_parse_qido_of_a_raw_query_string(raw: str, level: Level) -> None:
    """The QIDO handler's path: the raw query string, percent-decoded as UTF-8 strictly."""
    try:
        params = parse_qsl(raw, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        return  # the handler answers 400 "not valid UTF-8"
    _answer_or_4xx(lambda: parse_qido(params, level))


# ---------------------------------------------------------------------- Accept


@_fuzz
@given(header=accept_headers)
def test_parse_accept(header: str | None) -> None:
    ranges = _answer_or_4xx(lambda: parse_accept(header))
    if not isinstance(ranges, GatewayError):
        assert all(0 < r.q <= 1 for r in ranges)


@_fuzz
@given(
    header=accept_headers,
    stored=stored_syntaxes,
    single=st.booleans(),
    decodable=st.booleans(),
    producible=st.frozensets(st.sampled_from(WEB_SYNTAXES)),
)
def test_negotiate_every_offer_table(
    header: str | None, stored: str, single: bool, decodable: bool, producible: frozenset[str]
) -> None:
    _answer_or_4xx(lambda: negotiate_instances(header))
    _answer_or_4xx(lambda: negotiate_instances(header, producible.__contains__))
    _answer_or_4xx(
        lambda: negotiate_frames(
            header, stored, allow_single_part=single, can_decode=lambda _: decodable
        )
    )
    _answer_or_4xx(lambda: negotiate_bulk(header))
    _answer_or_4xx(lambda: negotiate_rendered(header))
    _answer_or_4xx(lambda: negotiate_dicom_json(header))


@_fuzz
@given(
    header=accept_headers,
    offers=st.lists(
        st.builds(
            Offer,
            media_type=st.sampled_from(["application/dicom", "multipart/related", "image/jpeg"]),
            part_type=st.sampled_from([None, "application/dicom", "application/octet-stream"]),
            transfer_syntax=st.sampled_from([None, "*", "1.2.840.10008.1.2.1"]),
            default=st.booleans(),
            params=st.sampled_from([(), (("charset", "utf-8"),)]),
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_negotiate_any_table(header: str | None, offers: list[Offer]) -> None:
    _answer_or_4xx(lambda: negotiate(header, offers))


@_fuzz
@given(
    header=accept_headers,
    format_param=format_params,
    versions=st.sampled_from([("R4", "R5"), ("R5",), ("R4",), ("R5", "R4")]),
)
def test_negotiate_fhir(header: str | None, format_param: str | None, versions: Any) -> None:
    _answer_or_4xx(lambda: negotiate_fhir(header, format_param, versions=versions))


# ---------------------------------------------------------------------- FHIR searches


@_fuzz
@given(
    params=_params(fhir_names, fhir_values),
    strict=st.booleans(),
    no_system=st.sampled_from(list(NoSystem)),
    max_count=st.sampled_from([None, 0, 100]),
)
def test_parse_study_search(
    params: list[tuple[str, str]], strict: bool, no_system: NoSystem, max_count: int | None
) -> None:
    search = _answer_or_4xx(
        lambda: parse_study_search(
            params, strict=strict, no_system=no_system, now=NOW, max_count=max_count
        )
    )
    if isinstance(search, GatewayError):
        return
    # The web layer pushes it down next (digest ids unresolved here stay unresolved).
    if not any(search.digests()):
        queries = _answer_or_4xx(lambda: to_qido(search, ISSUERS))
        if not isinstance(queries, GatewayError):
            for query in queries:  # as web.fhir_site.qido sends them
                _answer_or_4xx(lambda q=query: _internal_qido(q, Level.STUDY))


@_fuzz
@given(
    params=_params(fhir_names, fhir_values),
    strict=st.booleans(),
    no_system=st.sampled_from(list(NoSystem)),
)
def test_parse_selection_search(
    params: list[tuple[str, str]], strict: bool, no_system: NoSystem
) -> None:
    search = _answer_or_4xx(
        lambda: parse_selection_search(params, strict=strict, max_count=100, no_system=no_system)
    )
    if isinstance(search, GatewayError) or search.digests():
        return
    queries = _answer_or_4xx(lambda: pacs_queries(search, ISSUERS, lambda _: None))
    if not isinstance(queries, GatewayError):
        for query in queries:
            _answer_or_4xx(lambda q=query: _internal_qido(q, Level.SERIES))


# ---------------------------------------------------------------------- the guard itself


def test_a_hanging_parser_is_caught() -> None:
    def hang() -> None:
        while True:
            pass

    with pytest.raises(Hung), _no_hang(0.2):
        hang()
