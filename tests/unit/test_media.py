"""Accept negotiation (PS3.18 8.7, 10.4; RFC 9110 12.5.1) against real-world headers."""

from __future__ import annotations

import pytest

from ncpeh_dicomweb.dicomweb.media import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    TRANSFER_SYNTAXES,
    InstanceMedia,
    MediaRange,
    negotiate_dicom_json,
    negotiate_instances,
    parse_accept,
)
from ncpeh_dicomweb.errors import BadRequest, NotAcceptable

EVRLE = EXPLICIT_VR_LITTLE_ENDIAN
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
IMPLICIT = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
MP_DICOM = 'multipart/related; type="application/dicom"'


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
        pytest.param(f"{J}, {DJ}", DJ, id="tie-prefers-dicom-json"),
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
        pytest.param(f'{DJ}; transfer-syntax="{EVRLE}"', DJ, id="ignored-param"),
    ],
)
def test_negotiate_dicom_json(header: str | None, expected: str) -> None:
    assert negotiate_dicom_json(header) == expected


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        pytest.param(
            'multipart/related; type="application/dicom+xml"',
            "application/dicom+xml is not supported yet",
            id="multipart-xml",
        ),
        pytest.param("application/dicom+xml", "not supported yet", id="xml"),
        pytest.param(MP_DICOM, 'type="application/dicom" is not offered', id="multipart-dicom"),
        pytest.param("text/html", "text/html is not offered", id="html"),
        pytest.param(f"{DJ}; charset=iso-8859-1", "charset iso-8859-1", id="latin1"),
        pytest.param(f"*/*, {DJ};q=0, {J};q=0", "excluded by q=0", id="all-excluded"),
        pytest.param(f"{DJ};q=0", "excludes every media type", id="only-q0"),
    ],
)
def test_negotiate_dicom_json_not_acceptable(header: str, fragment: str) -> None:
    with pytest.raises(NotAcceptable) as info:
        negotiate_dicom_json(header)
    assert fragment in info.value.message
    assert info.value.detail == {"accept": header, "supported": [DJ, J]}


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
