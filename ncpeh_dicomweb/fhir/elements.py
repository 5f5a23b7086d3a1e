"""``_elements``: a resource cut down to the elements a client asked for (sans-I/O).

FHIR R4 search.html#elements: the server returns the listed elements, SHOULD also return the
mandatory ones (so the resource still validates), always keeps ``resourceType``, ``id`` and
``meta``, and marks the result with the ``SUBSETTED`` tag (R4 v3-ObservationValue) so that no
one takes it for the whole resource. R5 keeps the same rule.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any, Final

__all__ = ["SUBSETTED", "subset"]

SUBSETTED: Final[Mapping[str, str]] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_ALWAYS: Final = ("resourceType", "id", "meta")


def subset(
    resource: Mapping[str, Any], elements: Collection[str], mandatory: Collection[str] = ()
) -> dict[str, Any]:
    """``resource`` keeping only ``elements`` and ``mandatory`` (plus resourceType, id, meta),
    in the resource's own order, tagged ``SUBSETTED``. Empty ``elements``: unchanged copy."""
    if not elements:
        return dict(resource)
    keep = set(elements) | set(mandatory) | set(_ALWAYS)
    out = {name: value for name, value in resource.items() if name in keep}
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != SUBSETTED["code"]]
    meta["tag"] = [*tags, dict(SUBSETTED)]
    out["meta"] = meta
    # meta goes right after id, where FHIR JSON puts it.
    ordered: dict[str, Any] = {k: out[k] for k in _ALWAYS if k in out}
    ordered.update((k, v) for k, v in out.items() if k not in ordered)
    return ordered
