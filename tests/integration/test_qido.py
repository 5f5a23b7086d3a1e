"""QIDO-RS through the gateway, with the real dicomweb-client, against Orthanc's own answers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from tests.conftest import Gateway, Pacs
from tests.integration.util import gateway_root, pacs_json, qido_as_answered, uids

pytestmark = pytest.mark.integration

STUDY_UID, SERIES_UID, SOP_UID = "0020000D", "0020000E", "00080018"
KOS_CLASS = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage


@dataclass(frozen=True)
class Sample:
    """Values picked from what the PACS holds, so every query below has matches."""

    study: dict[str, Any]
    study_uid: str
    other_study_uid: str
    patient_id: str
    patient_name: str
    study_date: str
    accession: str
    series_uid: str
    series_number: str
    sop_uid: str
    sop_class: str
    mr_study_count: int


def _value(d: dict[str, Any], tag: str) -> Any:
    return d[tag]["Value"][0]


@pytest.fixture(scope="module")
def sample(pacs: Pacs) -> Sample:
    studies = pacs_json(pacs, "studies")
    mr = pacs_json(pacs, "studies", "ModalitiesInStudy=MR")
    # A synthetic MR study of several series (the generator's manifest names them).
    core = [
        s["study_uid"]
        for s in pacs.manifest["core"]["studies"]
        if "MR" in s["modalities"] and len(s["series"]) >= 2
    ]
    # An ASCII name: the direct queries below go to Orthanc raw (it does not decode them).
    study = next(
        s
        for s in mr
        if _value(s, STUDY_UID) in core and _value(s, "00100010")["Alphabetic"].isascii()
    )
    study_uid = _value(study, STUDY_UID)
    series = pacs_json(pacs, f"studies/{study_uid}/series")
    assert len(series) >= 2
    instances = pacs_json(
        pacs, f"studies/{study_uid}/series/{_value(series[0], SERIES_UID)}/instances"
    )
    other = next(_value(s, STUDY_UID) for s in studies if _value(s, STUDY_UID) != study_uid)
    return Sample(
        study=study,
        study_uid=study_uid,
        other_study_uid=other,
        patient_id=_value(study, "00100020"),
        patient_name=_value(study, "00100010")["Alphabetic"],
        study_date=_value(study, "00080020"),
        accession=_value(study, "00080050"),
        series_uid=_value(series[0], SERIES_UID),
        series_number=str(_value(series[0], "00200011")),
        sop_uid=_value(instances[0], SOP_UID),
        sop_class=_value(instances[0], "00080016"),
        mr_study_count=len(mr),
    )


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> DICOMwebClient:
    return DICOMwebClient(url=gateway.dicomweb)


def _sorted(datasets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # PS3.18 leaves the order of matches open; compare as sets of datasets.
    def key(d: dict[str, Any]) -> tuple[str, ...]:
        return tuple(d.get(t, {}).get("Value", [""])[0] for t in (STUDY_UID, SERIES_UID, SOP_UID))

    return sorted(datasets, key=key)


# (name, level, gateway search kwargs, the raw query Orthanc is asked directly)
Case = tuple[str, str, Callable[[Sample], dict[str, Any]], Callable[[Sample], str]]

STUDY_CASES: list[Case] = [
    ("all", "studies", lambda s: {}, lambda s: ""),
    (
        "keyword",
        "studies",
        lambda s: {"search_filters": {"PatientID": s.patient_id}},
        lambda s: f"PatientID={s.patient_id}",
    ),
    (
        "tag",
        "studies",
        lambda s: {"search_filters": {"00100020": s.patient_id}},
        lambda s: f"PatientID={s.patient_id}",
    ),
    (
        "wildcard-star",
        "studies",
        lambda s: {"search_filters": {"PatientName": s.patient_name[:3] + "*"}},
        lambda s: f"PatientName={s.patient_name[:3]}*",
    ),
    (
        "wildcard-question",
        "studies",
        lambda s: {"search_filters": {"PatientName": "?" + s.patient_name[1:]}},
        lambda s: f"PatientName=?{s.patient_name[1:]}",
    ),
    (
        "date-single",
        "studies",
        lambda s: {"search_filters": {"StudyDate": s.study_date}},
        lambda s: f"StudyDate={s.study_date}",
    ),
    (
        "date-range",
        "studies",
        lambda s: {"search_filters": {"StudyDate": f"20230101-{s.study_date}"}},
        lambda s: f"StudyDate=20230101-{s.study_date}",
    ),
    (
        "date-open-end",
        "studies",
        lambda s: {"search_filters": {"StudyDate": f"{s.study_date}-"}},
        lambda s: f"StudyDate={s.study_date}-",
    ),
    (
        "date-open-start",
        "studies",
        lambda s: {"search_filters": {"StudyDate": f"-{s.study_date}"}},
        lambda s: f"StudyDate=-{s.study_date}",
    ),
    (
        "time-range",
        "studies",
        lambda s: {"search_filters": {"StudyTime": "000000-235959"}},
        lambda s: "StudyTime=000000-235959",
    ),
    (
        "uid-list-repeated",
        "studies",
        lambda s: {"search_filters": {"StudyInstanceUID": [s.study_uid, s.other_study_uid]}},
        lambda s: f"StudyInstanceUID={s.study_uid},{s.other_study_uid}",
    ),
    (
        "uid-list-comma",
        "studies",
        lambda s: {"search_filters": {"StudyInstanceUID": f"{s.study_uid},{s.other_study_uid}"}},
        lambda s: f"StudyInstanceUID={s.study_uid},{s.other_study_uid}",
    ),
    (
        "uid-list-backslash",
        "studies",
        lambda s: {"search_filters": {"StudyInstanceUID": f"{s.study_uid}\\{s.other_study_uid}"}},
        lambda s: f"StudyInstanceUID={s.study_uid},{s.other_study_uid}",
    ),
    (
        "accession",
        "studies",
        lambda s: {"search_filters": {"AccessionNumber": s.accession}},
        lambda s: f"AccessionNumber={s.accession}",
    ),
    (
        "modalities-in-study",
        "studies",
        lambda s: {"search_filters": {"ModalitiesInStudy": "MR"}},
        lambda s: "ModalitiesInStudy=MR",
    ),
    (
        "modality-on-studies",
        "studies",
        lambda s: {"search_filters": {"Modality": "MR"}},
        lambda s: "ModalitiesInStudy=MR",
    ),
    (  # the studies holding a Key Object Selection document (a series of its own)
        "modalities-in-study-ko",
        "studies",
        lambda s: {"search_filters": {"ModalitiesInStudy": "KO"}},
        lambda s: "ModalitiesInStudy=KO",
    ),
    (
        "includefield-keyword",
        "studies",
        lambda s: {"fields": ["StudyDescription"], "search_filters": {"PatientID": s.patient_id}},
        lambda s: f"PatientID={s.patient_id}&includefield=StudyDescription",
    ),
    (
        "includefield-tags",
        "studies",
        lambda s: {
            "fields": ["00081030", "00080090"],
            "search_filters": {"PatientID": s.patient_id},
        },
        lambda s: f"PatientID={s.patient_id}&includefield=00081030&includefield=00080090",
    ),
    (
        "includefield-all",
        "studies",
        lambda s: {"fields": ["all"], "search_filters": {"PatientID": s.patient_id}},
        lambda s: f"PatientID={s.patient_id}&includefield=all",
    ),
    (
        "fuzzymatching",
        "studies",
        lambda s: {"fuzzymatching": True, "search_filters": {"PatientID": s.patient_id}},
        lambda s: f"PatientID={s.patient_id}&fuzzymatching=true",
    ),
    (
        "universal-empty",
        "studies",
        lambda s: {"search_filters": {"StudyDescription": ""}},
        lambda s: "StudyDescription=",
    ),
    ("limit", "studies", lambda s: {"limit": 2}, lambda s: "limit=2"),
    ("limit-offset", "studies", lambda s: {"limit": 3, "offset": 2}, lambda s: "limit=3&offset=2"),
    (
        "combined",
        "studies",
        lambda s: {
            "search_filters": {
                "PatientName": s.patient_name[:2] + "*",
                "StudyDate": f"-{s.study_date}",
                "ModalitiesInStudy": "MR",
            }
        },
        lambda s: (
            f"PatientName={s.patient_name[:2]}*&StudyDate=-{s.study_date}&ModalitiesInStudy=MR"
        ),
    ),
]

SERIES_CASES: list[Case] = [
    ("all-series", "series", lambda s: {}, lambda s: ""),
    (
        "modality",
        "series",
        lambda s: {"search_filters": {"Modality": "MR"}},
        lambda s: "Modality=MR",
    ),
    (
        "modality-ko",
        "series",
        lambda s: {"search_filters": {"Modality": "KO"}},
        lambda s: "Modality=KO",
    ),
    (
        "series-uid",
        "series",
        lambda s: {"search_filters": {"SeriesInstanceUID": s.series_uid}},
        lambda s: f"SeriesInstanceUID={s.series_uid}",
    ),
    (
        "patient-on-series",
        "series",
        lambda s: {"search_filters": {"PatientID": s.patient_id}},
        lambda s: f"PatientID={s.patient_id}",
    ),
    ("series-in-study", "studies/{study}/series", lambda s: {}, lambda s: ""),
    (
        "series-number-in-study",
        "studies/{study}/series",
        lambda s: {"search_filters": {"SeriesNumber": s.series_number}},
        lambda s: f"SeriesNumber={s.series_number}",
    ),
    (
        "series-includefield",
        "studies/{study}/series",
        lambda s: {"fields": ["SeriesDescription", "BodyPartExamined"]},
        lambda s: "includefield=SeriesDescription&includefield=BodyPartExamined",
    ),
]

INSTANCE_CASES: list[Case] = [
    (
        "sop-class",
        "instances",
        lambda s: {"search_filters": {"SOPClassUID": s.sop_class}},
        lambda s: f"SOPClassUID={s.sop_class}",
    ),
    (
        "sop-class-ko",
        "instances",
        lambda s: {"search_filters": {"SOPClassUID": KOS_CLASS}},
        lambda s: f"SOPClassUID={KOS_CLASS}",
    ),
    (
        "sop-uid",
        "instances",
        lambda s: {"search_filters": {"SOPInstanceUID": s.sop_uid}},
        lambda s: f"SOPInstanceUID={s.sop_uid}",
    ),
    ("instances-in-study", "studies/{study}/instances", lambda s: {}, lambda s: ""),
    (
        "instances-in-series",
        "studies/{study}/series/{series}/instances",
        lambda s: {},
        lambda s: "",
    ),
    (
        "instance-number",
        "studies/{study}/series/{series}/instances",
        lambda s: {"search_filters": {"InstanceNumber": "1"}},
        lambda s: "InstanceNumber=1",
    ),
    (
        "instances-limit-offset",
        "studies/{study}/instances",
        lambda s: {"limit": 2, "offset": 1},
        lambda s: "limit=2&offset=1",
    ),
]


def _search(client: DICOMwebClient, level: str, sample: Sample, kwargs: dict[str, Any]) -> Any:
    if level == "studies":
        return client.search_for_studies(**kwargs)
    if level == "series":
        return client.search_for_series(**kwargs)
    if level == "instances":
        return client.search_for_instances(**kwargs)
    if level == "studies/{study}/series":
        return client.search_for_series(study_instance_uid=sample.study_uid, **kwargs)
    if level == "studies/{study}/instances":
        return client.search_for_instances(study_instance_uid=sample.study_uid, **kwargs)
    return client.search_for_instances(
        study_instance_uid=sample.study_uid, series_instance_uid=sample.series_uid, **kwargs
    )


@pytest.mark.parametrize(
    ("name", "level", "gateway_kwargs", "direct_query"),
    STUDY_CASES + SERIES_CASES + INSTANCE_CASES,
    ids=[c[0] for c in STUDY_CASES + SERIES_CASES + INSTANCE_CASES],
)
def test_search_equals_pacs(
    client: DICOMwebClient,
    gateway: Gateway,
    pacs: Pacs,
    sample: Sample,
    name: str,
    level: str,
    gateway_kwargs: Callable[[Sample], dict[str, Any]],
    direct_query: Callable[[Sample], str],
) -> None:
    got = _search(client, level, sample, gateway_kwargs(sample))
    path = level.format(study=sample.study_uid, series=sample.series_uid)
    direct = pacs_json(pacs, path, direct_query(sample))
    expected = qido_as_answered(gateway.dicomweb, pacs, path, direct)
    assert expected, f"{name}: the PACS itself has no match; the case proves nothing"
    if "limit" in gateway_kwargs(sample):  # order-sensitive: paging must pick the same slice
        assert got == expected
    else:
        assert _sorted(got) == _sorted(expected)


def test_retrieve_urls_point_at_the_gateway(
    client: DICOMwebClient, gateway: Gateway, pacs: Pacs
) -> None:
    studies = client.search_for_studies()
    assert studies
    for study in studies:
        url = study["00081190"]["Value"][0]
        assert url == f"{gateway.dicomweb}/studies/{study[STUDY_UID]['Value'][0]}"
    assert pacs.dicomweb_root.split("//")[1] not in str(studies)


def test_site_route_uses_its_own_root(gateway: Gateway, sample: Sample) -> None:
    root = gateway_root(gateway, "second")
    found = DICOMwebClient(url=root).search_for_studies(
        search_filters={"StudyInstanceUID": sample.study_uid}
    )
    assert uids(found, STUDY_UID) == [sample.study_uid]
    assert found[0]["00081190"]["Value"][0] == f"{root}/studies/{sample.study_uid}"


def test_percent_encoded_wildcards_are_understood(
    gateway: Gateway, pacs: Pacs, sample: Sample
) -> None:
    """Orthanc finds nothing for %2A; through the gateway the client's encoding does not matter."""
    import requests

    prefix = sample.patient_name[:3]
    url = f"{gateway.dicomweb}/studies?PatientName={prefix}%2A"
    got = requests.get(url, timeout=30).json()
    direct_encoded = pacs_json(pacs, "studies", f"PatientName={prefix}%2A")
    direct_raw = pacs_json(pacs, "studies", f"PatientName={prefix}*")
    assert direct_encoded == []  # the quirk is still there: else this test proves nothing
    assert _sorted(got) == _sorted(qido_as_answered(gateway.dicomweb, pacs, "studies", direct_raw))


def test_relational_series_key_on_studies(client: DICOMwebClient, sample: Sample) -> None:
    """PS3.18 lets a study search name a series key; the NCPeH guide does so."""
    found = client.search_for_studies(search_filters={"SeriesInstanceUID": sample.series_uid})
    assert uids(found, STUDY_UID) == [sample.study_uid]
    found = client.search_for_series(search_filters={"SOPInstanceUID": sample.sop_uid})
    assert uids(found, SERIES_UID) == [sample.series_uid]


def test_value_with_space_matches_exactly(client: DICOMwebClient, pacs: Pacs) -> None:
    """Orthanc cannot be sent a space; the gateway widens to `?` and filters exactly."""
    studies = pacs_json(pacs, "studies", "includefield=StudyDescription&StudyDescription=*")
    described = [s for s in studies if " " in (s.get("00081030", {}).get("Value") or [""])[0]]
    assert described, "sample data must hold a study description with a space"
    description = described[0]["00081030"]["Value"][0]
    found = client.search_for_studies(search_filters={"StudyDescription": description})
    want = {
        s[STUDY_UID]["Value"][0]
        for s in studies
        if s.get("00081030", {}).get("Value") == [description]
    }
    assert set(uids(found, STUDY_UID)) == want
    # A near miss (one character changed where the space was) must not match.
    near = description.replace(" ", "_", 1)
    assert client.search_for_studies(search_filters={"StudyDescription": near}) == []


@pytest.mark.parametrize("name", ["Müller*", "Nowak^Łukasz", "dubois^élodie"])
def test_non_ascii_names(client: DICOMwebClient, pacs: Pacs, name: str) -> None:
    """Orthanc answers 400 or nothing for non-ASCII query values; the gateway still matches."""
    expected = {
        s["study_uid"]
        for s in pacs.manifest["core"]["studies"]
        if _pn_match(name, s["patient_name"])
    }
    assert expected
    found = client.search_for_studies(search_filters={"PatientName": name})
    assert set(uids(found, STUDY_UID)) == expected
    for study in found:
        assert _pn_match(name, study["00100010"]["Value"][0]["Alphabetic"])


def _pn_match(pattern: str, name: str) -> bool:
    if pattern.endswith("*"):
        return name.casefold().startswith(pattern[:-1].casefold())
    return name.casefold() == pattern.casefold()


def test_relational_with_no_common_parent_is_empty(client: DICOMwebClient, sample: Sample) -> None:
    """A study UID and a series of another study: nothing matches (not every study)."""
    found = client.search_for_studies(
        search_filters={
            "StudyInstanceUID": sample.other_study_uid,
            "SeriesInstanceUID": sample.series_uid,
        }
    )
    assert found == []


def test_relational_key_with_space(client: DICOMwebClient, pacs: Pacs, sample: Sample) -> None:
    series = pacs_json(pacs, f"studies/{sample.study_uid}/series", "includefield=SeriesDescription")
    described = [s for s in series if " " in (s.get("0008103E", {}).get("Value") or [""])[0]]
    assert described, "a series description with a space is needed"
    found = client.search_for_studies(
        search_filters={"SeriesDescription": described[0]["0008103E"]["Value"][0]}
    )
    assert sample.study_uid in uids(found, STUDY_UID)


def test_counts_and_modalities_of_the_core_studies(client: DICOMwebClient, pacs: Pacs) -> None:
    """Every core study as the manifest has it: its series (Key Object Selection documents in
    a series of their own, Modality KO, included), instances and modalities."""
    core = {s["study_uid"]: s for s in pacs.manifest["core"]["studies"]}
    found = client.search_for_studies(
        fields=["NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "ModalitiesInStudy"]
    )
    got = {
        _value(s, STUDY_UID): (
            int(_value(s, "00201206")),
            int(_value(s, "00201208")),
            sorted(s["00080061"]["Value"]),
        )
        for s in found
        if _value(s, STUDY_UID) in core
    }
    assert got == {
        uid: (len(s["series"]), s["instances"], s["modalities"]) for uid, s in core.items()
    }


def test_key_object_documents_are_found(client: DICOMwebClient, pacs: Pacs) -> None:
    """The core set's Key Object Selection documents, at every level, as the manifest says."""
    kos = pacs.manifest["core"]["kos"]
    assert len({k["study"] for k in kos}) >= 2
    core = {s["study_uid"] for s in pacs.manifest["core"]["studies"]}
    studies = client.search_for_studies(search_filters={"ModalitiesInStudy": "KO"})
    assert {u for u in uids(studies, STUDY_UID) if u in core} == {k["study"] for k in kos}
    series = client.search_for_series(search_filters={"Modality": "KO"})
    mine = [s for s in series if _value(s, STUDY_UID) in core]
    assert sorted(uids(mine, SERIES_UID)) == sorted(k["series"] for k in kos)
    assert all(int(_value(s, "00201209")) == 1 for s in mine)  # one document per series
    instances = client.search_for_instances(search_filters={"SOPClassUID": KOS_CLASS})
    mine = [i for i in instances if _value(i, STUDY_UID) in core]
    assert sorted(uids(mine, SOP_UID)) == sorted(k["sop"] for k in kos)
    for k in kos:
        listed = client.search_for_series(study_instance_uid=k["study"])
        assert set(k["references"]) < set(uids(listed, SERIES_UID))  # images of the study


def test_a_key_the_pacs_ignores_is_reported(gateway: Gateway, sample: Sample) -> None:
    """Orthanc ignores a sequence key and returns every series: the answer says the key could
    not be checked (as a DIMSE site does), rather than pass as a match."""
    url = (
        f"{gateway.dicomweb}/studies/{sample.study_uid}/series"
        "?RequestAttributesSequence.RequestedProcedureID=NO-SUCH-PROCEDURE"
    )
    answer = requests.get(url, headers={"Accept": "application/dicom+json"}, timeout=30)
    assert answer.status_code == 200 and answer.json()
    assert "RequestAttributesSequence.RequestedProcedureID" in answer.headers["Warning"]
    # A key the PACS returns is not reported.
    plain = requests.get(
        f"{gateway.dicomweb}/studies?StudyInstanceUID={sample.study_uid}", timeout=30
    )
    assert "Warning" not in plain.headers
