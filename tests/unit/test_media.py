"""Accept negotiation (PS3.18 8.7, 10.4; RFC 9110 12.5.1) against real-world headers."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pytest

from ncpeh_dicomweb.dicomweb import transfer_syntaxes
from ncpeh_dicomweb.dicomweb.accept import MAX_RANGES
from ncpeh_dicomweb.dicomweb.media import (
    DICOM,
    DICOM_JSON,
    DICOM_XML_MULTIPART,
    EXPLICIT_VR_LITTLE_ENDIAN,
    TRANSFER_SYNTAXES,
    BulkMedia,
    FrameMedia,
    InstanceMedia,
    MediaRange,
    Offer,
    TransferSyntaxInfo,
    negotiate,
    negotiate_bulk,
    negotiate_dicom_json,
    negotiate_frames,
    negotiate_instances,
    negotiate_rendered,
    parse_accept,
)
from ncpeh_dicomweb.errors import BadRequest, NotAcceptable

EVRLE = EXPLICIT_VR_LITTLE_ENDIAN
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
IMPLICIT = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
MP_DICOM = 'multipart/related; type="application/dicom"'
J2K = "1.2.840.10008.1.2.4.90"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
JLS = "1.2.840.10008.1.2.4.80"
HTJ2K = "1.2.840.10008.1.2.4.201"
RLE = "1.2.840.10008.1.2.5"
H264 = "1.2.840.10008.1.2.4.102"
OCTETS = "application/octet-stream"
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
# Java's HttpURLConnection sends this when the caller sets no Accept.
JAVA_DEFAULT = "text/html, image/gif, image/jpeg, *; q=.2, */*; q=.2"
BROWSER_IMG = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8"


# --------------------------------------------------------------------------------------
# parse_accept
# --------------------------------------------------------------------------------------


def _r(type_: str, subtype: str, q: float = 1.0, **params: str) -> MediaRange:
    return MediaRange(type_, subtype, {k.replace("_", "-"): v for k, v in params.items()}, q)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, [_r("*", "*")], id="absent"),
        pytest.param("", [_r("*", "*")], id="empty"),
        pytest.param("   ", [_r("*", "*")], id="blank"),
        pytest.param(" , ,", [_r("*", "*")], id="only-empty-elements"),
        pytest.param("*", [_r("*", "*")], id="legacy-star"),
        pytest.param(
            "text/*;q=0.5, text/html, */*;q=0.1, text/html;level=1",
            [
                _r("text", "html", level="1"),
                _r("text", "html"),
                _r("text", "*", 0.5),
                _r("*", "*", 0.1),
            ],
            id="rfc9110-ordering",
        ),
        pytest.param(
            'Multipart/Related; Type="Application/DICOM"; Transfer-Syntax="1.2.840.10008.1.2.1"',
            [_r("multipart", "related", type="Application/DICOM", transfer_syntax=EVRLE)],
            id="case-and-quotes",
        ),
        pytest.param(
            'a/b; x="p\\"q,r;s", c/d',
            [_r("a", "b", x='p"q,r;s'), _r("c", "d")],
            id="quoted-comma-semicolon-escape",
        ),
        pytest.param(
            "a/b;q=0, c/d;q=0.0, e/f;q=0.000",
            [],
            id="all-q0-dropped",
        ),
        pytest.param(
            "a/b;q=2, c/d;q=-1, e/f;q=abc, g/h;q=nan, i/j;q=1.0, k/l;q=.5",
            [_r("i", "j"), _r("k", "l", 0.5)],
            id="invalid-q-skips-range",
        ),
        pytest.param("a/b ;; ; q=0.3 ;x ; y=1", [_r("a", "b", 0.3, y="1")], id="empty-params"),
        pytest.param("text/html, nonsense, /x, */json, a/b c", [_r("text", "html")], id="garbage"),
        pytest.param("a/b;q=0.5;q=0.9", [_r("a", "b", 0.5)], id="first-q-wins"),
    ],
)
def test_parse_accept(header: str | None, expected: list[MediaRange]) -> None:
    assert parse_accept(header) == expected


@pytest.mark.parametrize("header", ["garbage", ";;;", "text", "/", "a/b c, ,x"])
def test_parse_accept_unparseable(header: str) -> None:
    with pytest.raises(BadRequest) as info:
        parse_accept(header)
    assert info.value.status == 400
    assert info.value.detail == {"accept": header}


def test_media_range_is_hashable_and_specificity() -> None:
    r = _r("multipart", "related", type="application/dicom")
    assert hash(r) == hash(_r("multipart", "related", type="x"))
    assert r.specificity == (True, True, 1)
    assert _r("*", "*").specificity == (False, False, 0)
    assert r.matches("multipart", "related")
    assert not r.matches("multipart", "mixed")


# --------------------------------------------------------------------------------------
# negotiate_instances
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, EVRLE, id="absent"),
        pytest.param("", EVRLE, id="empty"),
        pytest.param("*/*", EVRLE, id="any"),
        pytest.param("*", EVRLE, id="legacy-star"),
        pytest.param("multipart/*", EVRLE, id="multipart-wildcard"),
        pytest.param("multipart/related", EVRLE, id="multipart-no-type"),
        pytest.param("multipart/related;type=application/dicom", EVRLE, id="unquoted-compact"),
        pytest.param(MP_DICOM, EVRLE, id="quoted"),
        pytest.param(
            'MULTIPART/RELATED; TYPE="APPLICATION/DICOM"; Transfer-Syntax=1.2.840.10008.1.2.4.70',
            "1.2.840.10008.1.2.4.70",
            id="upper-case",
        ),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={JPEG_BASELINE}",
            JPEG_BASELINE,
            id="jpeg-baseline",
        ),
        pytest.param(
            f'{MP_DICOM}; transfer-syntax="{JPEG_BASELINE}"', JPEG_BASELINE, id="quoted-uid"
        ),
        pytest.param(f"{MP_DICOM}; transfer-syntax=*", "*", id="as-stored"),
        pytest.param(f"{MP_DICOM}; transfer-syntax={EVRLE}", EVRLE, id="explicit-evrle"),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax=1.2.840.10008.1.2.4.203",
            "1.2.840.10008.1.2.4.203",
            id="htj2k",
        ),
        pytest.param('multipart/related; type="*/*"', EVRLE, id="wildcard-type-param"),
        pytest.param(
            f'  multipart/related ;  type = "application/dicom" ;; transfer-syntax = '
            f"{JPEG_BASELINE} ; q=1.0 ",
            JPEG_BASELINE,
            id="whitespace-and-empty-params",
        ),
        pytest.param(
            f'{MP_DICOM}; foo="a, b; c"; transfer-syntax=1.2.840.10008.1.2.4.90',
            "1.2.840.10008.1.2.4.90",
            id="quoted-param-with-comma",
        ),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={JPEG_BASELINE}; q=0.5, "
            f"{MP_DICOM}; transfer-syntax=*; q=0.9",
            "*",
            id="q-ordering",
        ),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={JPEG_BASELINE}; q=0.9, {MP_DICOM}; transfer-syntax=*",
            "*",
            id="q-ordering-default-1",
        ),
        pytest.param(
            f"*/*;q=0.1, {MP_DICOM}; transfer-syntax={JPEG_BASELINE}",
            JPEG_BASELINE,
            id="specific-beats-wildcard",
        ),
        pytest.param(
            'application/dicom+json, multipart/related; type="application/dicom"',
            EVRLE,
            id="mixed-json-and-dicom",
        ),
        pytest.param(
            "multipart/related; type=application/octet-stream; transfer-syntax=*, "
            f"{MP_DICOM}; transfer-syntax=*; q=0.8",
            "*",
            id="mixed-octet-stream-and-dicom",
        ),
        pytest.param(
            f"application/dicom, {MP_DICOM}; q=0.1", EVRLE, id="single-part-then-multipart"
        ),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={IMPLICIT}, {MP_DICOM}; transfer-syntax={EVRLE};q=0.5",
            EVRLE,
            id="implicit-falls-back",
        ),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax=1.2.3;q=0.9, */*;q=0.2",
            EVRLE,
            id="unknown-uid-falls-back",
        ),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={JPEG_BASELINE}; q=abc, */*;q=0.1",
            EVRLE,
            id="invalid-q-range-skipped",
        ),
        pytest.param(
            f"*/*, {MP_DICOM}; transfer-syntax={JPEG_BASELINE}; q=0",
            EVRLE,
            id="q0-other-syntax-irrelevant",
        ),
    ],
)
def test_negotiate_instances(header: str | None, expected: str) -> None:
    assert negotiate_instances(header) == InstanceMedia(expected)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        pytest.param(
            "multipart/related; type=application/octet-stream; transfer-syntax=*",
            'type="application/octet-stream" is not offered',
            id="ohif-octet-stream",
        ),
        pytest.param(
            "application/dicom+json, multipart/related; type=application/octet-stream",
            "application/dicom+json is not offered",
            id="ohif-json-and-octet-stream",
        ),
        pytest.param("application/dicom", "multipart/related", id="single-part-only"),
        pytest.param(
            "application/DICOM; transfer-syntax=*", "is required", id="single-part-as-stored"
        ),
        pytest.param("image/jpeg", "image/jpeg is not offered", id="image-jpeg"),
        pytest.param("application/*", "application/* is not offered", id="application-wild"),
        pytest.param(f"{MP_DICOM}; transfer-syntax={IMPLICIT}", IMPLICIT, id="implicit-vr-le"),
        pytest.param(f"{MP_DICOM}; transfer-syntax={BIG_ENDIAN}", BIG_ENDIAN, id="big-endian"),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax=1.2.3.4.5", '"1.2.3.4.5" is not supported', id="unknown"
        ),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax=jpeg", '"jpeg" is not supported', id="malformed-uid"
        ),
        pytest.param(f"{MP_DICOM}; transfer-syntax=", '"" is not supported', id="empty-uid"),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax=1.2.840.10008.1.2.4.94",
            "not supported",
            id="jpip-not-offered",
        ),
        pytest.param(f"{MP_DICOM}; q=0", "excludes every media type", id="only-q0"),
        pytest.param(
            f"*/*, {MP_DICOM}; transfer-syntax={EVRLE}; q=0",
            "excluded by q=0",
            id="q0-excludes-default",
        ),
        pytest.param("*/*, multipart/related;q=0", "excluded by q=0", id="q0-excludes-type"),
    ],
)
def test_negotiate_instances_not_acceptable(header: str, fragment: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_instances(header)
    exc = info.value
    assert exc.status == 406
    assert fragment in exc.message
    assert "acceptable:" in exc.message
    assert exc.detail["accept"] == header
    supported = exc.detail["supported"]
    assert isinstance(supported, list)
    assert f"{MP_DICOM}; transfer-syntax=*" in supported
    assert f"{MP_DICOM}; transfer-syntax={EVRLE}" in supported
    assert f"{MP_DICOM}; transfer-syntax={IMPLICIT}" not in supported


def test_negotiate_instances_detail_truncates_header() -> None:
    header = "image/png;x=" + "y" * 500
    with pytest.raises(NotAcceptable) as info:
        negotiate_instances(header)
    assert info.value.detail["accept"] == header[:200]


def test_negotiate_instances_unparseable_is_bad_request() -> None:
    with pytest.raises(BadRequest):
        negotiate_instances("not a media type")


# --------------------------------------------------------------------------------------
# InstanceMedia
# --------------------------------------------------------------------------------------


def test_instance_media_with_transfer_syntax() -> None:
    m = InstanceMedia(JPEG_BASELINE)
    assert m.content_type("abc123") == (
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}; '
        "boundary=abc123"
    )
    assert m.part_content_type() == f"application/dicom; transfer-syntax={JPEG_BASELINE}"
    assert m.upstream_accept() == (
        f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'
    )


def test_instance_media_as_stored() -> None:
    m = InstanceMedia("*")
    assert m.content_type("abc123") == (
        'multipart/related; type="application/dicom"; boundary=abc123'
    )
    assert m.part_content_type() == "application/dicom"
    assert m.upstream_accept() == 'multipart/related; type="application/dicom"; transfer-syntax=*'


def test_instance_media_round_trips_through_negotiation() -> None:
    for ts in ("*", EVRLE, JPEG_BASELINE):
        m = InstanceMedia(ts)
        assert negotiate_instances(m.upstream_accept()) == m


@pytest.mark.parametrize("bad", ["", "jpeg", "1.2.", "1." * 40])
def test_instance_media_rejects_bad_uid(bad: str) -> None:
    with pytest.raises(ValueError, match="transfer syntax"):
        InstanceMedia(bad)


# --------------------------------------------------------------------------------------
# negotiate_dicom_json
# --------------------------------------------------------------------------------------

DJ = "application/dicom+json"
J = "application/json"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, DJ, id="absent"),
        pytest.param("", DJ, id="empty"),
        pytest.param("*/*", DJ, id="any"),
        pytest.param("application/*", DJ, id="application-wild"),
        pytest.param(DJ, DJ, id="dicom-json"),
        pytest.param("Application/DICOM+JSON; charset=UTF-8", DJ, id="case-charset"),
        pytest.param(J, J, id="json-only"),
        # Equal q and specificity: the client's order decides (RFC 9110 12.5.1 leaves it open).
        pytest.param(f"{J}, {DJ}", J, id="tie-client-order"),
        pytest.param(f"{DJ}, {J}", DJ, id="tie-client-order-dicom-json-first"),
        pytest.param(f"{DJ};q=0.5, {J};q=0.9", J, id="json-preferred-by-q"),
        pytest.param(f"{J}, */*;q=0.1", J, id="json-over-wildcard"),
        pytest.param(
            "application/dicom+json, multipart/related; type=application/octet-stream",
            DJ,
            id="ohif-mixed",
        ),
        pytest.param(
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            DJ,
            id="browser",
        ),
        pytest.param(f"application/dicom+xml, {J};q=0.5", J, id="xml-then-json"),
        pytest.param(f"*/*, {DJ};q=0", J, id="q0-excludes-dicom-json"),
        pytest.param(f"*/*, {DJ};q=0, {J};q=0", DICOM_XML_MULTIPART, id="q0-leaves-xml"),
        pytest.param(f'{DJ}; transfer-syntax="{EVRLE}"', DJ, id="ignored-param"),
        pytest.param(f"{DJ}; charset=utf8", DJ, id="utf8-alias"),
        pytest.param(DICOM_XML_MULTIPART, DICOM_XML_MULTIPART, id="multipart-xml"),
        pytest.param(
            "multipart/related; type=application/dicom+xml", DICOM_XML_MULTIPART, id="xml-unquoted"
        ),
        pytest.param(
            f"{DJ};q=0.5, {DICOM_XML_MULTIPART}", DICOM_XML_MULTIPART, id="xml-preferred-by-q"
        ),
        pytest.param(f"{DICOM_XML_MULTIPART};q=0.5, {DJ}", DJ, id="json-preferred-by-q"),
        pytest.param("multipart/*", DICOM_XML_MULTIPART, id="multipart-wildcard-is-xml"),
    ],
)
def test_negotiate_dicom_json(header: str | None, expected: str) -> None:
    assert negotiate_dicom_json(header) == expected


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        pytest.param(
            "application/dicom+xml",
            "single-part application/dicom+xml is not offered for this resource; multipart/related;"
            ' type="application/dicom+xml" is required',
            id="single-part-xml",
        ),
        pytest.param(MP_DICOM, 'type="application/dicom" is not offered', id="multipart-dicom"),
        pytest.param("text/html", "text/html is not offered", id="html"),
        pytest.param(f"{DJ}; charset=iso-8859-1", "charset iso-8859-1", id="latin1"),
        pytest.param(
            f"*/*, {DJ};q=0, {J};q=0, multipart/related;q=0", "excluded by q=0", id="all-excluded"
        ),
        pytest.param(f"{DJ};q=0", "excludes every media type", id="only-q0"),
    ],
)
def test_negotiate_dicom_json_not_acceptable(header: str, fragment: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_dicom_json(header)
    assert fragment in info.value.message
    assert "acceptable: application/dicom+json or application/json or" in info.value.message
    assert info.value.detail == {"accept": header, "supported": [DJ, J, DICOM_XML_MULTIPART]}


# --------------------------------------------------------------------------------------
# Transfer syntax table
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uid", "media_type", "compressed"),
    [
        (IMPLICIT, "application/octet-stream", False),
        (EVRLE, "application/octet-stream", False),
        ("1.2.840.10008.1.2.1.99", "application/octet-stream", False),
        (BIG_ENDIAN, "application/octet-stream", False),
        (JPEG_BASELINE, "image/jpeg", True),
        ("1.2.840.10008.1.2.4.51", "image/jpeg", True),
        ("1.2.840.10008.1.2.4.57", "image/jpeg", True),
        ("1.2.840.10008.1.2.4.70", "image/jpeg", True),
        ("1.2.840.10008.1.2.4.80", "image/jls", True),
        ("1.2.840.10008.1.2.4.81", "image/jls", True),
        ("1.2.840.10008.1.2.4.90", "image/jp2", True),
        ("1.2.840.10008.1.2.4.91", "image/jp2", True),
        ("1.2.840.10008.1.2.4.92", "image/jpx", True),
        ("1.2.840.10008.1.2.4.201", "image/jphc", True),
        ("1.2.840.10008.1.2.4.202", "image/jphc", True),
        ("1.2.840.10008.1.2.4.203", "image/jphc", True),
        ("1.2.840.10008.1.2.5", "image/dicom-rle", True),
        ("1.2.840.10008.1.2.4.100", "video/mpeg", True),
        ("1.2.840.10008.1.2.4.102", "video/mp4", True),
        ("1.2.840.10008.1.2.4.107", "video/H265", True),
    ],
)
def test_transfer_syntax_table(uid: str, media_type: str, compressed: bool) -> None:
    info = TRANSFER_SYNTAXES[uid]
    assert info.uid == uid
    assert info.media_type == media_type
    assert info.compressed is compressed
    assert info.web is (uid not in (IMPLICIT, BIG_ENDIAN))


def test_transfer_syntax_table_lossy_flags() -> None:
    assert TRANSFER_SYNTAXES[JPEG_BASELINE].lossy
    assert not TRANSFER_SYNTAXES["1.2.840.10008.1.2.4.70"].lossy
    assert not TRANSFER_SYNTAXES[EVRLE].lossy
    assert all(info.name and info.uid == uid for uid, info in TRANSFER_SYNTAXES.items())


def test_every_web_transfer_syntax_is_negotiable() -> None:
    for uid, info in TRANSFER_SYNTAXES.items():
        header = f"{MP_DICOM}; transfer-syntax={uid}"
        if info.web:
            assert negotiate_instances(header).transfer_syntax == uid
        else:
            with pytest.raises(NotAcceptable):
                negotiate_instances(header)


def test_transfer_syntax_table_lives_in_its_own_module() -> None:
    assert TRANSFER_SYNTAXES is transfer_syntaxes.TRANSFER_SYNTAXES
    assert TransferSyntaxInfo is transfer_syntaxes.TransferSyntaxInfo
    assert EXPLICIT_VR_LITTLE_ENDIAN == transfer_syntaxes.EXPLICIT_VR_LITTLE_ENDIAN


# --------------------------------------------------------------------------------------
# negotiate: the one mechanism (RFC 9110 12.5.1)
# --------------------------------------------------------------------------------------

A = Offer("text/a")
B = Offer("text/b")
MP_X_TS1 = Offer("multipart/related", "app/x", "1.2.3", default=True)
MP_X_ANY = Offer("multipart/related", "app/x", "*")


@pytest.mark.parametrize(
    ("header", "offers", "expected"),
    [
        pytest.param(None, [A, B], A, id="absent-server-order"),
        pytest.param("*/*", [B, A], B, id="any-server-order"),
        pytest.param("text/b, text/a", [A, B], B, id="tie-client-order"),
        pytest.param("text/a;q=0.5, text/b", [A, B], B, id="q-first"),
        pytest.param("text/*, text/b", [A, B], B, id="specific-beats-wildcard"),
        pytest.param("text/*, text/a;q=0", [A, B], B, id="q0-excludes"),
        pytest.param("text/a;q=0.1, text/*;q=0.9", [A, B], B, id="most-specific-range-gives-q"),
        pytest.param("multipart/related", [MP_X_ANY, MP_X_TS1], MP_X_TS1, id="no-ts-is-default"),
        pytest.param(
            "multipart/related; transfer-syntax=*", [MP_X_TS1, MP_X_ANY], MP_X_ANY, id="*"
        ),
        pytest.param('multipart/related; type="app/*"', [MP_X_TS1], MP_X_TS1, id="type-wild"),
        pytest.param(
            "multipart/related; type=app/x; boundary=zz", [MP_X_TS1], MP_X_TS1, id="extra"
        ),
    ],
)
def test_negotiate(header: str | None, offers: list[Offer], expected: Offer) -> None:
    assert negotiate(header, offers) is expected


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        pytest.param("text/c", "text/c is not offered", id="other-type"),
        pytest.param('multipart/related; type="app/y"', 'type="app/y" is not offered', id="part"),
        pytest.param("multipart/related; transfer-syntax=9.9", '"9.9" is not supported', id="ts"),
        pytest.param("app/x", "single-part app/x is not offered", id="single-part"),
        pytest.param("text/*, text/a;q=0, text/b;q=0", "text/a is excluded by q=0", id="q0"),
    ],
)
def test_negotiate_not_acceptable(header: str, fragment: str) -> None:
    offers = [A, B, MP_X_TS1, MP_X_ANY]
    with pytest.raises(NotAcceptable) as info:
        negotiate(header, offers)
    assert fragment in info.value.message
    assert info.value.message.endswith(
        'acceptable: text/a or text/b or multipart/related; type="app/x" '
        "[transfer-syntax: 1.2.3 (default), *]"
    )
    assert info.value.detail["supported"] == [
        "text/a",
        "text/b",
        'multipart/related; type="app/x"; transfer-syntax=1.2.3',
        'multipart/related; type="app/x"; transfer-syntax=*',
    ]


def test_negotiate_bounds_the_message() -> None:
    header = ", ".join(f"text/x{i}" for i in range(50))
    with pytest.raises(NotAcceptable) as info:
        negotiate(header, [A])
    assert info.value.message.count("is not offered") == 8
    assert "; ...)" in info.value.message


def test_negotiate_needs_offers() -> None:
    with pytest.raises(ValueError, match="at least one offer"):
        negotiate("*/*", [])


@pytest.mark.parametrize("header", ["garbage", ";;;", "/"])
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda h: negotiate(h, [A]), id="negotiate"),
        pytest.param(lambda h: negotiate_frames(h, J2K), id="frames"),
        pytest.param(negotiate_bulk, id="bulk"),
        pytest.param(negotiate_rendered, id="rendered"),
        pytest.param(negotiate_dicom_json, id="json"),
    ],
)
def test_unparseable_accept_is_400_everywhere(header: str, call: Callable[[str], object]) -> None:
    with pytest.raises(BadRequest) as info:
        call(header)
    assert info.value.status == 400


# --------------------------------------------------------------------------------------
# What real clients send
# --------------------------------------------------------------------------------------
# Sources: OHIF v3 (shared/clients/OHIF.md; its frame loader drops the quotes around type),
# dicomweb-client Python 0.61 (web.py: quoted type, `multipart/related; type="*/*"` by
# default for frames and bulk data, `application/dicom+json, application/json` for QIDO and
# metadata), dicomweb-client JS (api.js: quoted type, `application/dicom+json`; its
# "singlepart" bulk data request sets no Accept, so the browser sends */*), the Orthanc
# DICOMweb plugin as a client (DicomWebClient.cpp: `...; transfer-syntax=*` unless
# HasWadoRsUniversalTransferSyntax is false, then libcurl's */*), Weasis 4 (RsQueryResult:
# `multipart/related;type="application/dicom";` + accept-ext, `transfer-syntax=*` by default;
# `image/jpeg` for thumbnails), curl (*/*).


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, EVRLE, id="absent"),
        pytest.param("*/*", EVRLE, id="curl"),
        pytest.param(MP_DICOM, EVRLE, id="dicomweb-client-py-js-default"),
        pytest.param(f"{MP_DICOM}; transfer-syntax=*", "*", id="dicomweb-client-py-as-stored"),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={J2K}, {MP_DICOM}; transfer-syntax={EVRLE}",
            J2K,
            id="dicomweb-client-py-two-syntaxes",
        ),
        pytest.param(f"{MP_DICOM}; transfer-syntax=*", "*", id="orthanc-client"),
        pytest.param("*/*", EVRLE, id="orthanc-client-no-universal-ts"),
        pytest.param(
            'multipart/related;type="application/dicom";transfer-syntax=*', "*", id="weasis"
        ),
        pytest.param(
            "multipart/related;type=application/dicom;transfer-syntax=*", "*", id="dcm4che-wadors"
        ),
        pytest.param(
            f"{MP_DICOM};transfer-syntax={J2K};q=0.5;boundary=b,"
            f" {MP_DICOM};transfer-syntax={EVRLE};q=0.4;boundary=b",
            J2K,
            id="java-client-q-and-boundary",
        ),
    ],
)
def test_negotiate_instances_real_clients(header: str | None, expected: str) -> None:
    assert negotiate_instances(header).transfer_syntax == expected


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        # Google's samples ask single-part for one instance; PS3.18 8.7.5 wants multipart here.
        pytest.param("application/dicom; transfer-syntax=*", "is required", id="google-sample"),
        pytest.param(OHIF_FRAMES, 'type="application/octet-stream" is not offered', id="ohif"),
    ],
)
def test_negotiate_instances_real_clients_not_acceptable(header: str, fragment: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_instances(header)
    assert fragment in info.value.message


def _only(*uids: str) -> Callable[[str], bool]:
    return lambda uid: uid in uids


@pytest.mark.parametrize(
    ("header", "can_produce", "expected"),
    [
        pytest.param(MP_DICOM, _only(EVRLE), EVRLE, id="default"),
        pytest.param(f"{MP_DICOM}; transfer-syntax=*", _only(), "*", id="as-stored-always"),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={J2K};q=0.9, {MP_DICOM}; transfer-syntax={EVRLE};q=0.5",
            _only(EVRLE),
            EVRLE,
            id="preferred-not-producible",
        ),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={JPEG_BASELINE};q=0.3, "
            f"{MP_DICOM}; transfer-syntax={J2K};q=0.8, "
            f"{MP_DICOM}; transfer-syntax={JPEG_LOSSLESS};q=0.5",
            _only(JPEG_BASELINE, JPEG_LOSSLESS),
            JPEG_LOSSLESS,
            id="most-preferred-producible",
        ),
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={J2K}, {MP_DICOM}; transfer-syntax=*;q=0.1",
            _only(EVRLE),
            "*",
            id="falls-back-to-as-stored",
        ),
    ],
)
def test_negotiate_instances_can_produce(
    header: str, can_produce: Callable[[str], bool], expected: str
) -> None:
    assert negotiate_instances(header, can_produce) == InstanceMedia(expected)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        pytest.param(
            f"{MP_DICOM}; transfer-syntax={J2K}",
            f"transfer syntax {J2K} (JPEG 2000 Image Compression (Lossless Only)) cannot be "
            "produced",
            id="not-producible",
        ),
        pytest.param(
            MP_DICOM, "without a transfer-syntax parameter cannot be produced", id="no-ts"
        ),
    ],
)
def test_negotiate_instances_can_produce_not_acceptable(header: str, fragment: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_instances(header, _only(JPEG_BASELINE))
    assert fragment in info.value.message
    assert info.value.message.endswith(
        f"acceptable: {MP_DICOM} [transfer-syntax: *, {JPEG_BASELINE}]"
    )
    assert info.value.detail["supported"] == [
        f"{MP_DICOM}; transfer-syntax=*",
        f"{MP_DICOM}; transfer-syntax={JPEG_BASELINE}",
    ]


# --------------------------------------------------------------------------------------
# Frames and pixel data bulk data
# --------------------------------------------------------------------------------------


def _native(*, decode: bool = False, multipart: bool = True) -> FrameMedia:
    return FrameMedia(EVRLE, OCTETS, decode, multipart)


def _stored(uid: str, *, multipart: bool = True) -> FrameMedia:
    return FrameMedia(uid, TRANSFER_SYNTAXES[uid].media_type, False, multipart)


@pytest.mark.parametrize(
    ("header", "stored", "expected"),
    [
        # OHIF v3: unquoted type, transfer-syntax=*: as stored, in the syntax's own type.
        pytest.param(OHIF_FRAMES, J2K, _stored(J2K), id="ohif-j2k"),
        pytest.param(OHIF_FRAMES, J2K_LOSSY, _stored(J2K_LOSSY), id="ohif-j2k-lossy"),
        pytest.param(OHIF_FRAMES, JPEG_BASELINE, _stored(JPEG_BASELINE), id="ohif-jpeg"),
        pytest.param(OHIF_FRAMES, JLS, _stored(JLS), id="ohif-jpeg-ls"),
        pytest.param(OHIF_FRAMES, HTJ2K, _stored(HTJ2K), id="ohif-htj2k"),
        pytest.param(OHIF_FRAMES, RLE, _stored(RLE), id="ohif-rle"),
        pytest.param(OHIF_FRAMES, EVRLE, _native(), id="ohif-native"),
        pytest.param(OHIF_FRAMES, IMPLICIT, _native(), id="ohif-implicit-stored"),
        pytest.param(OHIF_FRAMES, BIG_ENDIAN, _native(decode=True), id="ohif-big-endian-swapped"),
        # dicomweb-client Python: quoted type; "*/*" parts by default.
        pytest.param(
            f'multipart/related; type="{OCTETS}"; transfer-syntax={EVRLE}',
            J2K,
            _native(decode=True),
            id="dicomweb-client-py-evrle",
        ),
        pytest.param('multipart/related; type="*/*"', J2K, _native(decode=True), id="py-default"),
        pytest.param(
            f'multipart/related; type="image/jp2"; transfer-syntax={J2K}, '
            f'multipart/related; type="{OCTETS}"; transfer-syntax={EVRLE}',
            J2K,
            _stored(J2K),
            id="py-jp2-or-native-on-j2k",
        ),
        pytest.param(
            f'multipart/related; type="image/jp2"; transfer-syntax={J2K}, '
            f'multipart/related; type="{OCTETS}"; transfer-syntax={EVRLE}',
            JPEG_BASELINE,
            _native(decode=True),
            id="py-jp2-or-native-on-jpeg",
        ),
        # dicomweb-client JS: quoted type, octet-stream by default.
        pytest.param(f'multipart/related; type="{OCTETS}"', J2K, _native(decode=True), id="js"),
        pytest.param(
            f'multipart/related; type="{OCTETS}"; transfer-syntax=*', J2K, _stored(J2K), id="js-*"
        ),
        pytest.param(
            f'multipart/related; type="image/jls"; transfer-syntax={JLS}',
            JLS,
            _stored(JLS),
            id="jls",
        ),
        # PS3.18 defaults: absent, */*, curl.
        pytest.param(None, J2K, _native(decode=True), id="absent"),
        pytest.param("*/*", J2K, _native(decode=True), id="curl"),
        pytest.param("*/*", EVRLE, _native(), id="curl-native"),
        pytest.param("multipart/related", J2K, _native(decode=True), id="no-type"),
        pytest.param("multipart/*", J2K, _native(decode=True), id="multipart-wild"),
        # A compressed part type: as stored when the stored syntax has that type.
        pytest.param('multipart/related; type="image/jp2"', J2K, _stored(J2K), id="jp2"),
        pytest.param("multipart/related; type=image/jp2; transfer-syntax=*", J2K, _stored(J2K)),
        pytest.param(
            f"multipart/related; type=image/jp2; transfer-syntax={J2K}", J2K, _stored(J2K)
        ),
        pytest.param('multipart/related; type="image/*"', JPEG_BASELINE, _stored(JPEG_BASELINE)),
        # q values and exclusions.
        pytest.param(
            f'multipart/related; type="image/jp2";q=0.5, multipart/related; type="{OCTETS}"',
            J2K,
            _native(decode=True),
            id="q-prefers-native",
        ),
        pytest.param(
            f'*/*, multipart/related; type="{OCTETS}";q=0', J2K, _stored(J2K), id="q0-no-decode"
        ),
        # Single part: one frame (or the whole pixel data).
        pytest.param(OCTETS, J2K, _native(decode=True, multipart=False), id="single-octets"),
        pytest.param(f"{OCTETS}; transfer-syntax=*", J2K, _stored(J2K, multipart=False)),
        pytest.param("image/jp2", J2K, _stored(J2K, multipart=False), id="single-jp2"),
        pytest.param("video/mp4", H264, _stored(H264, multipart=False), id="ohif-video"),
        pytest.param("application/*", EVRLE, _native(multipart=False), id="application-wild"),
    ],
)
def test_negotiate_frames(header: str | None, stored: str, expected: FrameMedia) -> None:
    assert negotiate_frames(header, stored) == expected


@pytest.mark.parametrize(
    ("header", "stored", "fragment"),
    [
        pytest.param(
            'multipart/related; type="image/jpeg"', J2K, 'type="image/jpeg" is not offered'
        ),
        pytest.param(
            f"multipart/related; type=image/jp2; transfer-syntax={J2K_LOSSY}",
            J2K,
            f"transfer syntax {J2K_LOSSY} (JPEG 2000 Image Compression) cannot be produced",
            id="no-transcoding-between-compressed",
        ),
        pytest.param(
            f"multipart/related; type={OCTETS}; transfer-syntax={IMPLICIT}",
            EVRLE,
            "is not used with DICOMweb",
            id="implicit",
        ),
        pytest.param(
            'multipart/related; type="image/jp2"', EVRLE, 'type="image/jp2" is not offered'
        ),
        pytest.param(MP_DICOM, J2K, 'type="application/dicom" is not offered', id="instances"),
        pytest.param("application/dicom+json", J2K, "application/dicom+json is not offered"),
        pytest.param("image/jpeg", J2K, "image/jpeg is not offered", id="rendered-type"),
    ],
)
def test_negotiate_frames_not_acceptable(header: str, stored: str, fragment: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_frames(header, stored)
    assert fragment in info.value.message
    supported = info.value.detail["supported"]
    assert isinstance(supported, list)
    assert f'multipart/related; type="{OCTETS}"; transfer-syntax={EVRLE}' in supported
    info = TRANSFER_SYNTAXES[stored]
    if info.compressed:
        assert f'multipart/related; type="{info.media_type}"; transfer-syntax={stored}' in supported
    else:
        assert not any("image/" in label for label in supported)


def test_negotiate_frames_offers_for_a_compressed_syntax() -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_frames("text/html", J2K)
    assert info.value.detail["supported"] == [
        f'multipart/related; type="{OCTETS}"; transfer-syntax={EVRLE}',
        f'multipart/related; type="image/jp2"; transfer-syntax={J2K}',
        'multipart/related; type="image/jp2"; transfer-syntax=*',
        f'multipart/related; type="{OCTETS}"; transfer-syntax=*',
        f"{OCTETS}; transfer-syntax={EVRLE}",
        f"image/jp2; transfer-syntax={J2K}",
        "image/jp2; transfer-syntax=*",
        f"{OCTETS}; transfer-syntax=*",
    ]


def test_negotiate_frames_several_frames_need_multipart() -> None:
    assert negotiate_frames(None, J2K, allow_single_part=False) == _native(decode=True)
    with pytest.raises(NotAcceptable) as info:
        negotiate_frames(OCTETS, J2K, allow_single_part=False)
    assert (
        f'single-part {OCTETS} is not offered for this resource; multipart/related; type="{OCTETS}"'
        " is required" in info.value.message
    )
    supported = info.value.detail["supported"]
    assert isinstance(supported, list)
    assert all(label.startswith("multipart/related") for label in supported)


def test_negotiate_frames_cannot_decode() -> None:
    never = _only()
    assert negotiate_frames("*/*", H264, can_decode=never) == _stored(H264)
    assert negotiate_frames(OHIF_FRAMES, H264, can_decode=never) == _stored(H264)
    with pytest.raises(NotAcceptable) as info:
        negotiate_frames(f'multipart/related; type="{OCTETS}"', H264, can_decode=never)
    assert "without a transfer-syntax parameter cannot be produced" in info.value.message
    assert f"transfer-syntax={EVRLE}" not in str(info.value.detail["supported"])
    # Native pixels need no decoder.
    assert negotiate_frames(None, EVRLE, can_decode=never) == _native()


def test_negotiate_frames_unknown_stored_syntax() -> None:
    private = "1.2.3.4.5.6"
    assert negotiate_frames(None, private) == _native(decode=True)
    as_stored = FrameMedia(private, OCTETS, False)
    assert negotiate_frames(OHIF_FRAMES, private) == as_stored
    assert (
        negotiate_frames(f"multipart/related; type={OCTETS}; transfer-syntax={private}", private)
        == as_stored
    )


@pytest.mark.parametrize("bad", ["*", "", "jpeg"])
def test_negotiate_frames_rejects_bad_stored_uid(bad: str) -> None:
    with pytest.raises(ValueError, match="transfer syntax"):
        negotiate_frames(None, bad)


def test_every_syntax_round_trips_as_stored() -> None:
    for uid, info in TRANSFER_SYNTAXES.items():
        expected = _stored(uid) if info.compressed else _native(decode=uid == BIG_ENDIAN)
        own_type = f'multipart/related; type="{info.media_type}"'
        assert negotiate_frames(OHIF_FRAMES, uid) == expected, uid
        assert negotiate_frames(own_type, uid) == expected, uid
        assert negotiate_frames(own_type.upper(), uid) == expected, uid


def test_frame_media_content_types() -> None:
    m = _stored(J2K)
    assert m.content_type("b1") == (
        f'multipart/related; type="image/jp2"; transfer-syntax={J2K}; boundary=b1'
    )
    assert m.part_content_type() == f"image/jp2; transfer-syntax={J2K}"
    n = _native(decode=True)
    assert n.part_content_type() == f"{OCTETS}; transfer-syntax={EVRLE}"
    assert n.content_type("b2") == (
        f'multipart/related; type="{OCTETS}"; transfer-syntax={EVRLE}; boundary=b2'
    )
    single = _stored(J2K, multipart=False)
    assert single.content_type() == single.content_type("ignored") == single.part_content_type()
    with pytest.raises(ValueError, match="boundary"):
        m.content_type()
    with pytest.raises(ValueError, match="transfer syntax"):
        FrameMedia("*", OCTETS, False)


# --------------------------------------------------------------------------------------
# Other bulk data
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "multipart"),
    [
        pytest.param(None, True, id="absent"),
        pytest.param("*/*", True, id="curl-and-ohif-singlepart-xhr"),
        pytest.param(f'multipart/related; type="{OCTETS}"', True, id="dicomweb-client-js"),
        pytest.param('multipart/related; type="*/*"', True, id="dicomweb-client-py"),
        pytest.param(f"multipart/related; type={OCTETS}; transfer-syntax=*", True, id="unquoted-*"),
        pytest.param(
            f'multipart/related; type="application/pdf", multipart/related; type="{OCTETS}"',
            True,
            id="ohif-typed-then-octets",
        ),
        pytest.param(OCTETS, False, id="single-part"),
        pytest.param(f"{OCTETS}; transfer-syntax=*", False, id="single-part-*"),
        pytest.param(f"{OCTETS}; transfer-syntax={EVRLE}", False, id="single-part-evrle"),
        pytest.param("application/*", False, id="application-wild"),
        pytest.param(f"{OCTETS}, multipart/related;q=0.5", False, id="single-preferred-by-q"),
        pytest.param("*/*, multipart/related;q=0", False, id="multipart-excluded"),
    ],
)
def test_negotiate_bulk(header: str | None, multipart: bool) -> None:
    assert negotiate_bulk(header) == BulkMedia(multipart)


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        pytest.param('multipart/related; type="application/pdf"', 'type="application/pdf"'),
        pytest.param(MP_DICOM, 'type="application/dicom" is not offered'),
        pytest.param("image/jpeg", "image/jpeg is not offered"),
        pytest.param(f"{OCTETS}; transfer-syntax={J2K}", "cannot be produced"),
    ],
)
def test_negotiate_bulk_not_acceptable(header: str, fragment: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_bulk(header)
    assert fragment in info.value.message
    assert info.value.detail["supported"] == [
        f'multipart/related; type="{OCTETS}"; transfer-syntax={EVRLE}',
        f'multipart/related; type="{OCTETS}"; transfer-syntax=*',
        f"{OCTETS}; transfer-syntax={EVRLE}",
        f"{OCTETS}; transfer-syntax=*",
    ]


def test_bulk_media_content_types() -> None:
    assert BulkMedia(True).content_type("b") == f'multipart/related; type="{OCTETS}"; boundary=b'
    assert BulkMedia(False).content_type() == OCTETS
    assert BulkMedia(True).part_content_type() == BulkMedia(False).part_content_type() == OCTETS
    with pytest.raises(ValueError, match="boundary"):
        BulkMedia(True).content_type()


# --------------------------------------------------------------------------------------
# Rendered and thumbnail
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(None, "image/jpeg", id="absent"),
        pytest.param("*/*", "image/jpeg", id="curl"),
        pytest.param("image/*", "image/jpeg", id="image-wild"),
        pytest.param("image/jpeg", "image/jpeg", id="ohif-and-weasis-thumbnail"),
        pytest.param("image/png", "image/png", id="dicomweb-client-png"),
        pytest.param("image/gif", "image/gif", id="gif"),
        pytest.param(BROWSER_IMG, "image/jpeg", id="browser-img"),
        pytest.param("image/png;q=0.5, image/jpeg;q=0.4", "image/png", id="q"),
        pytest.param("image/*, image/jpeg;q=0", "image/png", id="q0-excludes-jpeg"),
        pytest.param("image/jp2, image/png", "image/png", id="unsupported-then-png"),
        # Equal q and specificity: client order, so Java's default header gets GIF.
        pytest.param(JAVA_DEFAULT, "image/gif", id="java-default"),
    ],
)
def test_negotiate_rendered(header: str | None, expected: str) -> None:
    assert negotiate_rendered(header) == expected


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        pytest.param("image/jp2", "image/jp2 is not offered"),
        pytest.param(DICOM, "application/dicom is not offered"),
        pytest.param("video/mp4", "video/mp4 is not offered"),
        pytest.param("image/jpeg;q=0", "excludes every media type"),
        pytest.param("image/*, image/jpeg;q=0, image/png;q=0, image/gif;q=0", "excluded by q=0"),
    ],
)
def test_negotiate_rendered_not_acceptable(header: str, fragment: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_rendered(header)
    assert fragment in info.value.message
    assert info.value.detail["supported"] == ["image/jpeg", "image/png", "image/gif"]
    assert info.value.message.endswith("acceptable: image/jpeg or image/png or image/gif")


# --------------------------------------------------------------------------------------
# DICOM JSON: real clients
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param(DICOM_JSON, DJ, id="ohif-dicomweb-client-js-orthanc"),
        pytest.param(
            "application/dicom+json, multipart/related; type=application/octet-stream",
            DJ,
            id="ohif-combined",
        ),
        pytest.param(f"{DJ}, {J}", DJ, id="dicomweb-client-py"),
        pytest.param("*/*", DJ, id="curl"),
        pytest.param(None, DJ, id="absent"),
        # Weasis sets no Accept on QIDO; if its HTTP client is HttpURLConnection this is sent.
        pytest.param(JAVA_DEFAULT, DJ, id="java-default"),
        pytest.param(DICOM_XML_MULTIPART, DICOM_XML_MULTIPART, id="dcm4che-xml"),
    ],
)
def test_negotiate_dicom_json_real_clients(header: str | None, expected: str) -> None:
    assert negotiate_dicom_json(header) == expected


@pytest.mark.parametrize(
    ("negotiator", "header", "error"),
    [
        (negotiate_dicom_json, "\udcff\udcfe/x", BadRequest),  # b"\xff\xfe/x", decoded
        (negotiate_dicom_json, "application/dicom+json; charset=\udcff", NotAcceptable),
        (negotiate_instances, 'multipart/related; type="\udcff/x"', NotAcceptable),
        (negotiate_instances, "multipart/related; transfer-syntax=\udcff", NotAcceptable),
    ],
)
def test_accept_with_bytes_that_are_not_utf8_is_refused_sendably(
    negotiator: Callable[[str], object], header: str, error: type[Exception]
) -> None:
    """Regression: aiohttp decodes header bytes that are not UTF-8 as lone surrogates; they
    were echoed in the 400/406 body as they were, and its JSON encoder raised (a 500)."""
    with pytest.raises(error) as caught:
        negotiator(header)
    assert isinstance(caught.value, BadRequest | NotAcceptable)
    body = orjson.loads(orjson.dumps(caught.value.body()))
    assert "\\udcff" in str(body)


def test_a_repeated_range_counts_once() -> None:
    """Regression: 16 kB of ``image/*,`` (1672 ranges) cost 80 ms of the event loop in
    negotiate_instances (each range against each of its 40 offers, then a reason for each)."""
    header = "image/*," * 1672
    started = time.perf_counter()
    with pytest.raises(NotAcceptable) as caught:
        negotiate_instances(header)
    assert time.perf_counter() - started < 0.02
    assert caught.value.message.count("image/*") == 1
    assert negotiate_dicom_json("a/b;q=0.1, " * 1200 + DICOM_JSON) == DICOM_JSON
    assert parse_accept("image/png, " * 500) == parse_accept("image/png")


def test_more_than_max_ranges_different_ranges_are_refused() -> None:
    header = ", ".join(f"x{i}/y{i};q=0.5" for i in range(MAX_RANGES + 1))
    with pytest.raises(BadRequest, match=f"more than {MAX_RANGES} media ranges"):
        negotiate_dicom_json(header)
    at_most = ", ".join(f"x{i}/y{i};q=0.5" for i in range(MAX_RANGES - 1)) + ", */*"
    assert negotiate_dicom_json(at_most) == DICOM_JSON
