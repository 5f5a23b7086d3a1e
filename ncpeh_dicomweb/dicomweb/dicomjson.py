"""DICOM JSON model helpers (PS3.18 Annex F): URL rewriting, attribute access."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["RETRIEVE_URL", "UrlRewriter", "first_value", "rewrite_urls", "with_pixel_data_uris"]

RETRIEVE_URL = "00081190"

UrlMap = Callable[[str], str | None]


class UrlRewriter:
    """Maps URLs the PACS wrote (under one of its roots) onto the gateway's root.

    A URL under no known root is refused (``None``): better an answer without a link than
    one that leaks an internal address.
    """

    __slots__ = ("_prefixes", "_target")

    def __init__(self, upstream_roots: Iterable[str], gateway_root: str) -> None:
        self._prefixes = tuple(root.rstrip("/") + "/" for root in upstream_roots)
        self._target = gateway_root.rstrip("/") + "/"

    def __call__(self, url: str) -> str | None:
        for prefix in self._prefixes:
            if url.startswith(prefix):
                return self._target + url[len(prefix) :]
        return None


def rewrite_urls(datasets: Iterable[dict[str, Any]], rewrite: UrlMap) -> None:
    """Rewrite, in place, Retrieve URL (0008,1190) values and every ``BulkDataURI`` (F.2.6).

    Sequences are walked to any depth. A URL the map refuses is removed; an element left
    without a value keeps its ``vr`` (an empty value is valid DICOM JSON, F.2.5).
    """
    for dataset in datasets:
        _rewrite_dataset(dataset, rewrite)


def _rewrite_dataset(dataset: dict[str, Any], rewrite: UrlMap) -> None:
    # Most elements are neither: tested by membership first (every search answer walks this).
    for tag, element in dataset.items():
        if not isinstance(element, dict):
            continue
        if "BulkDataURI" in element:
            uri = element["BulkDataURI"]
            new = rewrite(uri) if isinstance(uri, str) else uri
            if new is None:
                del element["BulkDataURI"]
            else:
                element["BulkDataURI"] = new
        if tag == RETRIEVE_URL:
            values = element.get("Value")
            if not isinstance(values, list):
                continue
            kept = [new for v in values if isinstance(v, str) and (new := rewrite(v)) is not None]
            if kept:
                element["Value"] = kept
            else:
                del element["Value"]
        elif element.get("vr") == "SQ":
            values = element.get("Value")
            if isinstance(values, list):
                for item in values:
                    if isinstance(item, dict):
                        _rewrite_dataset(item, rewrite)


def first_value(dataset: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON dataset, or None."""
    element = dataset.get(tag)
    if isinstance(element, dict):
        values = element.get("Value")
        if isinstance(values, list) and values:
            return values[0]
    return None


_PIXEL_TAGS = ("7FE00010", "7FE00008", "7FE00009")  # Pixel Data, Float, Double Float


def with_pixel_data_uris(metadata: list[dict[str, Any]], base_url: str) -> list[dict[str, Any]]:
    """``metadata`` (WADO-RS, one object per instance) with a Pixel Data BulkDataURI on every
    image that has none: some PACS (Orthanc, for compressed instances) leave the element
    out, yet PS3.18 10.4.3.3.2 metadata holds every attribute, bulk data by reference. The
    URI is the gateway's own ``.../bulk/7FE00010``, which it serves from the instance."""
    for item in metadata:
        if "00280010" not in item or any(tag in item for tag in _PIXEL_TAGS):
            continue
        uids = [first_value(item, t) for t in ("0020000D", "0020000E", "00080018")]
        if not all(isinstance(u, str) and u for u in uids):
            continue
        study, series, instance = uids
        item["7FE00010"] = {
            "vr": "OB",  # the encapsulated form's VR; native data is read the same way
            "BulkDataURI": (
                f"{base_url}/studies/{study}/series/{series}/instances/{instance}/bulk/7FE00010"
            ),
        }
    return metadata
