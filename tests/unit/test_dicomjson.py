from __future__ import annotations

from typing import Any

from ncpeh_dicomweb.dicomweb.dicomjson import UrlRewriter, first_value, rewrite_urls

PACS = "http://10.1.2.3:8042/dicom-web"
GATEWAY = "https://ncp.example.org/site/a/dicom-web"


def test_rewriter_maps_known_roots_and_refuses_others() -> None:
    rewrite = UrlRewriter([PACS, "http://pacs.internal/dicom-web/"], GATEWAY)
    assert rewrite(f"{PACS}/studies/1.2") == f"{GATEWAY}/studies/1.2"
    assert rewrite("http://pacs.internal/dicom-web/studies/1") == f"{GATEWAY}/studies/1"
    assert rewrite("http://10.1.2.3:8042/dicom-webx/studies/1") is None
    assert rewrite("http://elsewhere/studies/1") is None


def test_rewrite_walks_retrieve_url_bulk_data_and_sequences() -> None:
    datasets: list[dict[str, Any]] = [
        {
            "00081190": {"vr": "UR", "Value": [f"{PACS}/studies/1"]},
            "7FE00010": {
                "vr": "OW",
                "BulkDataURI": f"{PACS}/studies/1/series/2/instances/3/bulk/7fe00010",
            },
            "00400275": {
                "vr": "SQ",
                "Value": [{"00420011": {"vr": "OB", "BulkDataURI": f"{PACS}/x"}}],
            },
            "00091010": {"vr": "OB", "BulkDataURI": "http://leak.internal/secret"},
            "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]},
        }
    ]
    rewrite_urls(datasets, UrlRewriter([PACS], GATEWAY))
    d = datasets[0]
    assert d["00081190"]["Value"] == [f"{GATEWAY}/studies/1"]
    assert d["7FE00010"]["BulkDataURI"] == f"{GATEWAY}/studies/1/series/2/instances/3/bulk/7fe00010"
    assert d["00400275"]["Value"][0]["00420011"]["BulkDataURI"] == f"{GATEWAY}/x"
    assert d["00091010"] == {"vr": "OB"}  # an unknown URL is dropped, not leaked
    assert first_value(d, "00100010") == {"Alphabetic": "Doe^Jane"}
    assert first_value(d, "00080020") is None


def test_retrieve_url_under_no_known_root_is_removed() -> None:
    datasets: list[dict[str, Any]] = [
        {"00081190": {"vr": "UR", "Value": ["http://other/studies/1"]}}
    ]
    rewrite_urls(datasets, UrlRewriter([PACS], GATEWAY))
    assert datasets == [{"00081190": {"vr": "UR"}}]
