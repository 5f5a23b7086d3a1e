"""DICOM JSON model helpers (PS3.18 Annex F): URL rewriting, attribute access."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["RETRIEVE_URL", "UrlRewriter", "first_value", "rewrite_urls"]

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
    for tag, element in dataset.items():
        if not isinstance(element, dict):
            continue
        uri = element.get("BulkDataURI")
        if isinstance(uri, str):
            new = rewrite(uri)
            if new is None:
                del element["BulkDataURI"]
            else:
                element["BulkDataURI"] = new
        values = element.get("Value")
        if not isinstance(values, list):
            continue
        if tag == RETRIEVE_URL:
            kept = [new for v in values if isinstance(v, str) and (new := rewrite(v)) is not None]
            if kept:
                element["Value"] = kept
            else:
                del element["Value"]
        elif element.get("vr") == "SQ":
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
