"""QIDO-RS results as PS3.18 10.6.3.3 shapes them (dicomweb/results.py) and the Pixel Data
reference metadata must carry (dicomweb/dicomjson.with_pixel_data_uris)."""

from __future__ import annotations

from typing import Any

from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.dicomjson import with_pixel_data_uris
from ncpeh_dicomweb.dicomweb.results import (
    REQUIRED,
    parent_levels,
    parents_needed,
    shaped,
    with_parents,
)


def _v(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


STUDY = {
    "0020000D": _v("UI", "1.2.3"),
    "00100020": _v("LO", "P1"),
    "00080061": _v("CS", "CT", "MR"),
    "00201206": _v("IS", 2),
    "00201208": _v("IS", 10),
    "00081190": _v("UR", "https://gw/studies/1.2.3"),
}


def test_lower_level_attributes_are_never_returned() -> None:
    study = {**STUDY, "0008103E": _v("LO", "a series"), "00080016": _v("UI", "1.2.840")}
    (out,) = shaped([study], Level.STUDY)
    assert "0008103E" not in out and "00080016" not in out
    series = {"0020000E": _v("UI", "1.2.3.4"), "00080016": _v("UI", "1.2.840")}
    (out,) = shaped([series], Level.SERIES, Level.STUDY)
    assert "00080016" not in out and "0020000E" in out
    # Private and unknown tags and attributes of every level stay.
    (out,) = shaped([{**STUDY, "00091001": _v("UN", "x")}], Level.STUDY)
    assert "00091001" in out and "00081190" in out


def test_required_attributes_are_present_empty_if_unknown_and_in_tag_order() -> None:
    (out,) = shaped([{"0020000D": _v("UI", "1.2.3")}], Level.STUDY)
    for tag in REQUIRED[Level.STUDY]:
        assert tag in out
    assert out["00080090"] == {"vr": "PN"} and out["00100030"] == {"vr": "DA"}
    assert list(out) == sorted(out)
    # All series carry the study's required attributes; a study's series do not.
    (root,) = shaped([{"0020000E": _v("UI", "1.2.3.4")}], Level.SERIES, None)
    (under,) = shaped([{"0020000E": _v("UI", "1.2.3.4")}], Level.SERIES, Level.STUDY)
    assert "00201206" in root and "00201206" not in under
    assert "00201209" in root and "00201209" in under


def test_which_parents_a_search_carries() -> None:
    assert parent_levels(Level.STUDY, None) == ()
    assert parent_levels(Level.SERIES, None) == (Level.STUDY,)
    assert parent_levels(Level.SERIES, Level.STUDY) == ()
    assert parent_levels(Level.INSTANCE, None) == (Level.STUDY, Level.SERIES)
    assert parent_levels(Level.INSTANCE, Level.STUDY) == (Level.SERIES,)
    assert parent_levels(Level.INSTANCE, Level.SERIES) == ()


def test_parents_are_asked_only_when_the_pacs_left_them_out() -> None:
    bare = {"0020000D": _v("UI", "1.2.3"), "0020000E": _v("UI", "1.2.3.4")}
    assert parents_needed([bare], Level.SERIES, None) == [Level.STUDY]
    full = {**bare, **STUDY}
    assert parents_needed([full], Level.SERIES, None) == []
    assert parents_needed([bare], Level.SERIES, Level.STUDY) == []
    assert parents_needed([], Level.SERIES, None) == []


def test_parent_attributes_are_merged_without_overwriting_or_their_retrieve_url() -> None:
    series = {
        "0020000D": _v("UI", "1.2.3"),
        "0020000E": _v("UI", "1.2.3.4"),
        "00100020": _v("LO", "kept"),
        "00081190": _v("UR", "https://gw/studies/1.2.3/series/1.2.3.4"),
    }
    orphan = {"0020000D": _v("UI", "9.9"), "0020000E": _v("UI", "9.9.9")}
    merged, alone = with_parents([series, orphan], Level.STUDY, [STUDY])
    assert merged["00080061"] == STUDY["00080061"]
    assert merged["00100020"] == _v("LO", "kept")
    assert merged["00081190"] == series["00081190"]
    assert alone == orphan


def test_images_without_pixel_data_get_a_bulk_data_uri() -> None:
    uids = {
        "0020000D": _v("UI", "1.2"),
        "0020000E": _v("UI", "1.2.3"),
        "00080018": _v("UI", "1.2.3.4"),
    }
    image = {**uids, "00280010": _v("US", 512)}
    has = {**image, "7FE00010": {"vr": "OW", "BulkDataURI": "https://gw/x"}}
    report = dict(uids)  # an SR: no pixels
    out = with_pixel_data_uris([image, has, report], "https://gw/dicom-web")
    assert out[0]["7FE00010"] == {
        "vr": "OB",
        "BulkDataURI": "https://gw/dicom-web/studies/1.2/series/1.2.3/instances/1.2.3.4/bulk/7FE00010",
    }
    assert out[1]["7FE00010"]["BulkDataURI"] == "https://gw/x"
    assert "7FE00010" not in out[2]
