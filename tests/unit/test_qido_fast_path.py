"""The cheaper paths of a QIDO-RS search (issue 10): each gives what the plain code gave."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.media import negotiate_dicom_json
from ncpeh_dicomweb.dicomweb.query import parse_qido
from ncpeh_dicomweb.dicomweb.results import REQUIRED, _too_low, parent_levels, shaped
from ncpeh_dicomweb.errors import BadRequest, InvalidQuery, NotAcceptable
from ncpeh_dicomweb.security.audit.events import _uuid4, interaction_for
from ncpeh_dicomweb.web.keys import REQUEST_ID
from ncpeh_dicomweb.web.middleware import AccessLogger
from ncpeh_dicomweb.web.qido import _media_type, _parsed

# Study, series and instance attributes, a private tag and a key that is not a tag.
_KEYS = (
    *REQUIRED[Level.STUDY],
    *REQUIRED[Level.SERIES],
    *REQUIRED[Level.INSTANCE],
    "0020000D",
    "0020000E",
    "00080018",
    "00081190",
    "00091010",
    "not-a-tag",
)


def _shaped_plainly(
    datasets: list[dict[str, Any]], level: Level, scoped: Level | None
) -> list[dict[str, Any]]:
    """shaped() as it was written before its fast path: every key checked every time."""
    required = [t for lv in (*parent_levels(level, scoped), level) for t in REQUIRED[lv]]
    out = []
    for dataset in datasets:
        if all(t in dataset for t in required) and not any(_too_low(k, level) for k in dataset):
            out.append(dataset)
            continue
        kept = {k: v for k, v in dataset.items() if not _too_low(k, level)}
        for tag in required:
            kept.setdefault(tag, {"vr": "UN"})
        out.append(dict(sorted(kept.items())))
    return out


@pytest.mark.parametrize("seed", range(40))
def test_shaped_gives_what_the_plain_check_gave(seed: int) -> None:
    rng = random.Random(seed)
    level = rng.choice(list(Level))
    scoped = rng.choice([None, Level.STUDY, Level.SERIES])
    datasets = [
        {k: {"vr": "LO", "Value": [k]} for k in rng.sample(_KEYS, rng.randint(0, len(_KEYS)))}
        for _ in range(rng.randint(1, 5))
    ]
    got = shaped(datasets, level, scoped)
    want = _shaped_plainly(datasets, level, scoped)
    assert [list(d) for d in got] == [list(d) for d in want]  # same keys, same order
    assert [{k: v for k, v in d.items() if "Value" in v} for d in got] == [
        {k: v for k, v in d.items() if "Value" in v} for d in want
    ]


def test_a_dataset_that_fits_is_returned_as_it_is_twice() -> None:
    dataset = {t: {"vr": "LO"} for t in (*REQUIRED[Level.STUDY], "0020000D")}
    for _ in range(2):  # the second time from the remembered keys
        assert shaped([dataset], Level.STUDY)[0] is dataset
    lower = {**dataset, "00080060": {"vr": "CS"}}  # Modality: a series attribute
    for _ in range(2):
        assert "00080060" not in shaped([lower], Level.STUDY)[0]


@pytest.mark.parametrize(
    "accept",
    [
        None,
        "application/dicom+json",
        "*/*",
        "application/json",
        'multipart/related; type="application/dicom+xml"',
    ],
)
def test_media_type_is_the_negotiated_one(accept: str | None) -> None:
    assert _media_type(accept) == negotiate_dicom_json(accept)
    assert _media_type(accept) == negotiate_dicom_json(accept)


def test_a_refused_accept_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises((NotAcceptable, BadRequest)):
            _media_type("image/png")


def test_parsed_is_parse_qido() -> None:
    raw = "PatientID=P%5E1&includefield=00080020&limit=5&PatientName=A+B*"
    want = parse_qido(
        [
            ("PatientID", "P^1"),
            ("includefield", "00080020"),
            ("limit", "5"),
            ("PatientName", "A B*"),
        ],
        Level.STUDY,
        max_limit=1000,
    )
    for _ in range(2):
        got, capped = _parsed(raw, Level.STUDY, 1000)
        assert got == want
        assert got.warnings == want.warnings
        assert not capped


def test_a_search_without_limit_is_capped() -> None:
    want = parse_qido([("PatientID", "P")], Level.SERIES, max_limit=1000)
    assert want.limit is None
    for _ in range(2):
        got, capped = _parsed("PatientID=P", Level.SERIES, 1000)
        assert capped
        assert got.limit == 1000
        assert got.keys == want.keys


def test_a_bad_query_is_refused_every_time() -> None:
    for _ in range(2):
        with pytest.raises(InvalidQuery):
            _parsed("PatientID=%FF", Level.STUDY, 1000)
        with pytest.raises(InvalidQuery):
            _parsed("NoSuchKeyword=1", Level.SERIES, 1000)


def test_event_ids_are_random_version_4_uuids() -> None:
    ids = {_uuid4() for _ in range(500)}
    assert len(ids) == 500
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_interaction_for_is_remembered_but_unchanged() -> None:
    assert interaction_for("GET", "/dicom-web/studies") == "qido-studies"
    assert interaction_for("GET", "/dicom-web/studies") == "qido-studies"
    assert interaction_for("POST", "/dicom-web/studies") is None
    assert interaction_for("get", "/site/{site}/dicom-web/studies/{study}/series") == "qido-series"


def test_access_log_line_is_as_before(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("aiohttp.access")
    request = make_mocked_request("GET", "/dicom-web/studies%0D%0AX?PatientID=secret")
    request[REQUEST_ID] = "req-1"
    response = web.Response(status=200)
    with caplog.at_level(logging.INFO, logger="aiohttp.access"):
        AccessLogger(logger, "").log(request, response, 0.01234)
    (record,) = caplog.records
    assert record.levelno == logging.INFO
    assert record.name == "aiohttp.access"
    text = record.getMessage()
    path = "/dicom-web/studies\\x0d\\x0aX"  # CR LF escaped: no forged line
    assert text == f'{request.remote} "GET {path}" 200 {response.body_length} 12.3ms req-1'
    assert "secret" not in text
