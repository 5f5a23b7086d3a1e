"""FHIR R5 ImagingSelection POST validation (fhir/selection_post.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from fhir.resources.imagingselection import ImagingSelection

from ncpeh_dicomweb.fhir.kos import ListedInstance
from ncpeh_dicomweb.fhir.selection import imaging_selection, new_selection_id
from ncpeh_dicomweb.fhir.selection_post import (
    MAX_INSTANCES,
    PostedSelection,
    SelectionInvalid,
    parse_posted_selection,
)
from tests.unit.test_fhir_kos import DCM, MR, SERIES_A, STUDY, Json
from tests.unit.test_fhir_selection import RETRIEVE, _order_ok


def _posted(**changes: Any) -> Json:
    body: Json = {
        "resourceType": "ImagingSelection",
        "status": "available",
        "code": {"coding": [{"system": DCM, "code": "113000", "display": "Of Interest"}]},
        "studyUid": STUDY,
        "seriesUid": SERIES_A,
        "instance": [
            {
                "uid": "1.1.1",
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{MR}"},
                "subset": ["1", "3", "1"],
            },
            {"uid": "1.1.2"},
        ],
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def _parse(body: Json) -> PostedSelection:
    return parse_posted_selection(orjson.dumps(body))


def test_post_minimal() -> None:
    posted = _parse(_posted())
    assert posted.study_uid == STUDY and posted.series_uid == SERIES_A
    assert posted.instances == (
        ListedInstance("1.1.1", MR, (1, 3)),
        ListedInstance("1.1.2", None, ()),
    )
    assert posted.status == "available"
    assert posted.code == _posted()["code"]
    assert posted.subject_reference is None and posted.derived_from == ()
    assert posted.extra == {}


def test_post_full_round_trip() -> None:
    extras: Json = {
        "implicitRules": "http://example.org/rules",
        "language": "cs",
        "extension": [{"url": "http://example.org/e", "valueString": "v"}],
        "modifierExtension": [{"url": "http://example.org/m", "valueBoolean": False}],
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"}],
        "performer": [{"actor": {"reference": "Practitioner/1"}}],
        "basedOn": [{"reference": "ServiceRequest/1"}],
        "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}],
        "seriesNumber": 0,
        "frameOfReferenceUid": "1.2.3",
        "bodySite": {"concept": {"text": "chest"}},
        "focus": [{"reference": "Observation/1"}],
        "_status": {"extension": [{"url": "http://example.org/s", "valueString": "s"}]},
    }
    owned: Json = {
        "id": "client-id",
        "meta": {"versionId": "9"},
        "text": {"status": "generated", "div": "<div>x</div>"},
        "contained": [{"resourceType": "Endpoint"}],
        "endpoint": [{"reference": "Endpoint/x"}],
        "issued": "2020-01-01T00:00:00Z",
    }
    body = _posted(
        **extras,
        **owned,
        subject={"reference": "Patient/p1", "display": "x"},
        derivedFrom=[
            {"reference": f"ImagingStudy/{STUDY}"},
            {"reference": f"ImagingStudy/{STUDY}"},
        ],
        instance=[
            {
                "uid": "1.1.1",
                "number": 4,
                "subset": ["2"],
                "imageRegion2D": [{"regionType": "point", "coordinate": [1.0, 2.0]}],
                "extension": [{"url": "http://example.org/i", "valueString": "i"}],
            }
        ],
        status="unknown",
    )
    posted = _parse(body)
    assert posted.extra == extras  # server-owned elements dropped, the rest as given
    assert posted.subject_reference == "Patient/p1"
    assert posted.derived_from == (f"ImagingStudy/{STUDY}",)
    assert posted.instances == (ListedInstance("1.1.1", None, (2,)),)
    assert posted.status == "unknown"
    resource = imaging_selection(
        resource_id=new_selection_id(),
        status=posted.status,
        code=posted.code,
        study_uid=posted.study_uid,
        series_uid=posted.series_uid,
        instances=posted.instances,
        patient_id="p1",
        study_resource_id=STUDY,
        retrieve_url=RETRIEVE,
        issued="2025-01-02T03:04:05.123+01:00",
        extra=posted.extra,
        meta={"lastUpdated": "2025-01-02T03:04:05.123+01:00"},
    )
    ImagingSelection.model_validate(resource)
    assert _order_ok(resource)
    assert resource["seriesNumber"] == 0 and resource["_status"] == extras["_status"]


def test_post_code_text_only() -> None:
    assert _parse(_posted(code={"text": "key images"})).code == {"text": "key images"}


def test_post_many_instances() -> None:
    instances = [{"uid": f"1.1.{n}"} for n in range(1, MAX_INSTANCES + 1)]
    assert len(_parse(_posted(instance=instances)).instances) == MAX_INSTANCES
    with pytest.raises(SelectionInvalid) as info:
        _parse(_posted(instance=[*instances, {"uid": "1.2"}]))
    assert info.value.status == 422
    assert info.value.expression == "ImagingSelection.instance"
    assert str(MAX_INSTANCES) in info.value.message


INSTANCE_0 = "ImagingSelection.instance[0]"
INSTANCE_1 = "ImagingSelection.instance[1]"


@pytest.mark.parametrize(
    ("body", "status", "expression"),
    [
        # Not JSON, not an ImagingSelection, wrong structure: 400.
        (b"{", 400, "ImagingSelection"),
        (b"", 400, "ImagingSelection"),
        (b"[]", 400, "ImagingSelection"),
        (b'"x"', 400, "ImagingSelection"),
        (_posted(resourceType="ImagingStudy"), 400, "ImagingSelection.resourceType"),
        (_posted(resourceType=...), 400, "ImagingSelection.resourceType"),
        (_posted(started="2020"), 400, "ImagingSelection.started"),  # not an R5 element
        (_posted(_code={}), 400, "ImagingSelection._code"),
        (_posted(status=None), 400, "ImagingSelection.status"),
        (_posted(status=1), 400, "ImagingSelection.status"),
        (_posted(status=""), 400, "ImagingSelection.status"),
        (_posted(code="113000"), 400, "ImagingSelection.code"),
        (_posted(code={"coding": {"code": "x"}}), 400, "ImagingSelection.code.coding"),
        (_posted(code={"coding": ["x"]}), 400, "ImagingSelection.code.coding[0]"),
        (_posted(code={"text": ""}), 400, "ImagingSelection.code.text"),
        (_posted(code={"coding": [{"code": None}]}), 400, "ImagingSelection.code.coding[0].code"),
        (_posted(studyUid=123), 400, "ImagingSelection.studyUid"),
        (_posted(instance={"uid": "1.1"}), 400, "ImagingSelection.instance"),
        (_posted(instance=["1.1"]), 400, INSTANCE_0),
        (_posted(instance=[{"uid": "1.1", "frames": [1]}]), 400, INSTANCE_0),
        (_posted(instance=[{"uid": 1}]), 400, f"{INSTANCE_0}.uid"),
        (_posted(instance=[{"uid": "1.1", "subset": "1"}]), 400, f"{INSTANCE_0}.subset"),
        (_posted(instance=[{"uid": "1.1", "subset": [1]}]), 400, f"{INSTANCE_0}.subset[0]"),
        (_posted(instance=[{"uid": "1.1", "sopClass": MR}]), 400, f"{INSTANCE_0}.sopClass"),
        (_posted(subject="Patient/p"), 400, "ImagingSelection.subject"),
        (_posted(subject={"reference": 1}), 400, "ImagingSelection.subject.reference"),
        (_posted(derivedFrom={"reference": "x"}), 400, "ImagingSelection.derivedFrom"),
        (_posted(derivedFrom=["x"]), 400, "ImagingSelection.derivedFrom[0]"),
        (_posted(identifier={"value": "x"}), 400, "ImagingSelection.identifier"),
        (_posted(identifier=["x"]), 400, "ImagingSelection.identifier[0]"),
        (_posted(identifier=[{"value": ""}]), 400, "ImagingSelection.identifier[0].value"),
        (_posted(identifier=[{"value": None}]), 400, "ImagingSelection.identifier[0].value"),
        (_posted(identifier=[{}]), 400, "ImagingSelection.identifier[0]"),
        (_posted(bodySite=[]), 400, "ImagingSelection.bodySite"),
        (_posted(seriesNumber=-1), 400, "ImagingSelection.seriesNumber"),
        (_posted(seriesNumber="1"), 400, "ImagingSelection.seriesNumber"),
        (_posted(seriesNumber=True), 400, "ImagingSelection.seriesNumber"),
        (_posted(language=["en"]), 400, "ImagingSelection.language"),
        (_posted(frameOfReferenceUid=5), 400, "ImagingSelection.frameOfReferenceUid"),
        # Well-formed, but not a selection the gateway accepts: 422.
        (_posted(status=...), 422, "ImagingSelection.status"),
        (_posted(status="active"), 422, "ImagingSelection.status"),
        (_posted(code=...), 422, "ImagingSelection.code"),
        (_posted(code={"coding": []}), 400, "ImagingSelection.code.coding"),  # empty array
        (_posted(code={"id": "c"}), 422, "ImagingSelection.code"),  # neither coding nor text
        (_posted(studyUid=...), 422, "ImagingSelection.studyUid"),
        (_posted(seriesUid=...), 422, "ImagingSelection.seriesUid"),
        (_posted(studyUid="1.02.3"), 422, "ImagingSelection.studyUid"),  # leading zero
        (_posted(seriesUid="1.2.x"), 422, "ImagingSelection.seriesUid"),
        (_posted(seriesUid="1." + "2" * 63), 422, "ImagingSelection.seriesUid"),  # 65 chars
        (_posted(instance=...), 422, "ImagingSelection.instance"),
        (_posted(instance=[]), 422, "ImagingSelection.instance"),
        (_posted(instance=[{"sopClass": {"code": "x"}}]), 422, f"{INSTANCE_0}.uid"),
        (_posted(instance=[{"uid": "1.1"}, {"uid": "1.1"}]), 422, f"{INSTANCE_1}.uid"),
        (_posted(instance=[{"uid": "1.01"}]), 422, f"{INSTANCE_0}.uid"),
        (_posted(instance=[{"uid": "1.1", "subset": ["0"]}]), 422, f"{INSTANCE_0}.subset[0]"),
        (_posted(instance=[{"uid": "1.1", "subset": ["1", "a"]}]), 422, f"{INSTANCE_0}.subset[1]"),
        (
            _posted(instance=[{"uid": "1.1", "sopClass": {"code": f"urn:oid:{MR}"}}]),
            422,
            f"{INSTANCE_0}.sopClass.system",
        ),
        (
            _posted(
                instance=[{"uid": "1.1", "sopClass": {"system": "urn:ietf:rfc:3986", "code": MR}}]
            ),
            422,
            f"{INSTANCE_0}.sopClass.code",
        ),
        (
            _posted(
                instance=[
                    {"uid": "1.1", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:x"}}
                ]
            ),
            422,
            f"{INSTANCE_0}.sopClass.code",
        ),
        (
            _posted(instance=[{"uid": "1.1", "modifierExtension": [{"url": "http://x"}]}]),
            422,
            f"{INSTANCE_0}.modifierExtension",
        ),
        (_posted(subject={"reference": "Group/g"}), 422, "ImagingSelection.subject.reference"),
        (_posted(subject={"display": "x"}), 422, "ImagingSelection.subject.reference"),
        (
            _posted(subject={"reference": "http://x/Patient/p"}),
            422,
            "ImagingSelection.subject.reference",
        ),
        (
            _posted(derivedFrom=[{"reference": "DocumentReference/d"}]),
            422,
            "ImagingSelection.derivedFrom[0].reference",
        ),
        (_posted(frameOfReferenceUid="x"), 422, "ImagingSelection.frameOfReferenceUid"),
    ],
)
def test_post_errors(body: bytes | Json, status: int, expression: str) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(SelectionInvalid) as info:
        parse_posted_selection(raw)
    assert (info.value.status, info.value.expression) == (status, expression)
    assert info.value.message and isinstance(info.value, ValueError)


def test_post_deep_nesting_refused() -> None:
    deep: Any = {"url": "http://x", "valueString": "v"}
    for _ in range(40):
        deep = {"url": "http://x", "extension": [deep]}
    with pytest.raises(SelectionInvalid) as info:
        _parse(_posted(extension=[deep]))
    assert info.value.status == 400
