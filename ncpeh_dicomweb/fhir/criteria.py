"""What FHIR searches of several resource types share (sans-I/O): parameter names and limits,
the errors, and the patient criteria (``patient`` / ``subject`` references, the chained
``patient.identifier``) with how they are pushed down to QIDO-RS and matched in the gateway.

Used by :mod:`.search` (ImagingStudy) and :mod:`.selection_search` (ImagingSelection), so
that a patient is searched the same way in both. References: FHIR R4 search
(http://hl7.org/fhir/R4/search.html: #reference, #chaining, #modifiers, #combining,
#escaping, #errors), PS3.4 C.2.2.2 (what a QIDO key may hold).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, NoReturn

from ..errors import BadRequest
from .tokens import (
    IssuerTable,
    NoSystem,
    PatientKey,
    Token,
    is_digest_id,
    is_fhir_id,
    parse_patient_resource_id,
    parse_token,
    patient_resource_id,
    split_or,
    token_matches,
    unescape,
)

__all__ = [
    "FORBIDDEN",
    "MAX_PARAMS",
    "MAX_QUERIES",
    "MAX_TEXT",
    "MAX_VALUES",
    "PASSTHROUGH",
    "Param",
    "ParamParser",
    "PatientCriterion",
    "PatientQuery",
    "PatientRef",
    "check_text",
    "criterion_text",
    "fail",
    "meet",
    "or_values",
    "parse_reference",
    "patient_clause",
    "patient_hit",
    "patient_queries",
    "patient_query",
    "sendable",
    "split_param",
    "wire",
]

MAX_QUERIES: Final = 10  # study-level queries one search may send (OR'ed patients, accessions)
MAX_PARAMS: Final = 64  # parameters in one search (each repetition counts)
MAX_VALUES: Final = 100  # comma-separated values in one parameter
MAX_TEXT: Final = 1024  # characters in one parameter name or value
FORBIDDEN: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def fail(parameter: str, value: str, reason: str) -> NoReturn:
    """A malformed search parameter: 400 (R4 search #errors), naming the parameter."""
    raise BadRequest(
        f"parameter {parameter[:80]!r}: {reason}",
        detail={"parameter": parameter[:80], "value": value[:80]},
    )


# ---- parameters ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Param:
    """One parameter: ``base:modifier.chain=value`` (R4 search #modifiers, #chaining)."""

    name: str
    value: str
    base: str
    modifier: str | None
    chain: str | None


def check_text(name: str, value: str) -> None:
    """400 for a name or value over :data:`MAX_TEXT` characters or with control characters."""
    for text in (name, value):
        if len(text) > MAX_TEXT:
            fail(name, value, f"longer than {MAX_TEXT} characters")
        if FORBIDDEN.search(text):
            fail(name, value, "control characters are not allowed")


def split_param(name: str, value: str) -> Param:
    """``name`` cut into its base, ``:modifier`` and ``.chain``."""
    head, _, chain = name.partition(".")
    base, colon, modifier = head.partition(":")
    return Param(name, value, base, modifier if colon else None, chain or None)


PASSTHROUGH = frozenset({"_format", "_pretty"})  # http.html: the web layer's business


class ParamParser:
    """What both searches' parsers share: parameters taken in order, each by its handler in
    ``handlers`` (a subclass's table), passthrough ones kept for the web layer, unknown or
    unsupported ones ignored (or a 400 when ``strict``)."""

    resource_type = ""  # for "not a search parameter of ..."

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.passthrough: list[tuple[str, str]] = []
        self.used: list[tuple[str, str]] = []
        self.ignored: list[tuple[str, str]] = []

    def handler(self, base: str) -> Callable[[Param], None] | None:
        """The bound handler of parameter ``base``, or None if it is not one of ours."""
        raise NotImplementedError

    def add(self, name: str, value: str) -> None:
        check_text(name, value)
        if name in PASSTHROUGH:
            self.passthrough.append((name, value))
            self.used.append((name, value))
            return
        p = split_param(name, value)
        handler = self.handler(p.base)
        if handler is None:
            self.unsupported(name, value, f"not a search parameter of {self.resource_type}")
        elif value == "":
            self.ignored.append((name, value))  # a parameter without a value asks nothing
        else:
            handler(p)

    def unsupported(self, name: str, value: str, reason: str) -> None:
        if self.strict:
            fail(name, value, f"{reason} (Prefer: handling=strict)")
        self.ignored.append((name, value))

    def plain(self, p: Param, *modifiers: str) -> bool:
        """False (parameter ignored or refused) if ``p`` has a chain or another modifier."""
        if p.chain is None and (p.modifier is None or p.modifier in modifiers):
            return True
        what = "a chain" if p.chain is not None else f"the modifier :{p.modifier}"
        self.unsupported(p.name, p.value, f"{p.base} does not support {what}")
        return False


def or_values(p: Param) -> list[str]:
    """The OR'ed values of ``p`` (R4 search #combining), without repeats; 400 for none or for
    more than :data:`MAX_VALUES`."""
    found = list(dict.fromkeys(split_or(p.value)))
    if not found:
        fail(p.name, p.value, "no value")
    if len(found) > MAX_VALUES:
        fail(p.name, p.value, f"at most {MAX_VALUES} values may be OR'ed")
    return found


# ---- patient criteria ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PatientRef:
    """``patient=Patient/{id}``: the id and the patient it names. ``key`` is None for a digest
    id (``digest``: resolved through the store of ids served) and for a reference naming no
    patient of ours."""

    resource_id: str
    key: PatientKey | None
    digest: bool = False


PatientCriterion = Token | PatientRef
PatientQuery = tuple[str | None, str | None]  # (PatientID, IssuerOfPatientID); None = any


def parse_reference(raw: str, parameter: str) -> PatientRef:
    """A reference value (R4 search #reference): ``Patient/{id}``, an absolute URL ending so,
    or a bare ``{id}``. Another resource type names no patient of ours: it matches nothing."""
    value = unescape(raw)
    parts = value.split("/")
    kind, resource_id = ("Patient", parts[0]) if len(parts) == 1 else (parts[-2], parts[-1])
    if len(parts) > 2 and not value.startswith(("http://", "https://")):
        fail(parameter, raw, f"{raw[:80]!r} is not a reference (Patient/{{id}} or a URL)")
    if not is_fhir_id(resource_id):
        fail(parameter, raw, f"{resource_id[:80]!r} is not a FHIR id")
    if kind != "Patient":
        return PatientRef(f"{kind}/{resource_id}", None)
    key = parse_patient_resource_id(resource_id)
    return PatientRef(resource_id, key, digest=key is None and is_digest_id(resource_id))


def criterion_text(criterion: PatientCriterion) -> str:
    """A criterion as the ``self`` link writes it."""
    if isinstance(criterion, Token):
        return criterion.text()
    if "/" in criterion.resource_id:
        return criterion.resource_id
    return f"Patient/{criterion.resource_id}"


def patient_clause(p: Param) -> tuple[tuple[PatientCriterion, ...], str] | None:
    """The OR'ed criteria of one ``patient`` / ``subject`` parameter and its label for the
    ``self`` link: ``Patient/{id}`` (``:Patient`` allowed), chained ``.identifier``
    (R4 search #chaining) or ``:identifier`` (Reference.identifier); None for any other
    modifier or chain (the caller ignores the parameter or, when strict, refuses it)."""
    criteria: tuple[PatientCriterion, ...]
    if p.chain == "identifier" and p.modifier in (None, "Patient"):
        criteria = tuple(parse_token(v, p.name) for v in or_values(p))
        label = f"{p.base}.identifier"
    elif p.chain is None and p.modifier == "identifier":  # Reference.identifier
        criteria = tuple(parse_token(v, p.name) for v in or_values(p))
        label = f"{p.base}:identifier"
    elif p.chain is None and p.modifier in (None, "Patient"):
        criteria = tuple(parse_reference(v, p.name) for v in or_values(p))
        label = p.base
    else:
        return None
    return tuple(dict.fromkeys(criteria)), label


def wire(value: str) -> str:
    """A value as a QIDO key carries it: a comma would separate values (PS3.18 8.3.4.1), so it
    goes as the wildcard ``?``. ``*`` and ``?`` of the value itself go as wildcards too: a
    superset, which the gateway narrows (matching in the gateway compares exactly)."""
    return value.replace(",", "?")


def sendable(value: str) -> bool:
    """A value an LO/SH attribute may hold (PS3.5 6.2: no backslash, no control character)
    and not wildcards alone once sent (:func:`wire`; PS3.4 C.2.2.2.4: that would be a
    universal match, a scan of the whole PACS). Any other value matches no study."""
    return wire(value).strip("*?") != "" and "\\" not in value and not FORBIDDEN.search(value)


def patient_query(criterion: PatientCriterion, issuers: IssuerTable) -> PatientQuery | None:
    """What one patient criterion asks of the PACS; None when no patient can match it."""
    if isinstance(criterion, PatientRef):
        if criterion.digest and criterion.key is None:
            fail("patient", criterion.resource_id, "this Patient id must be resolved first")
        key = criterion.key
        return None if key is None or not sendable(key.patient_id) else (key.patient_id, key.issuer)
    issuer = None
    if criterion.system:
        issuer = issuers.issuer_for(criterion.system)
        if issuer is None:
            return None  # a system that names no DICOM issuer: no identifier of ours has it
    if criterion.code is not None and not sendable(criterion.code):
        return None
    return (criterion.code, issuer)


def meet(a: PatientQuery, b: PatientQuery) -> PatientQuery | None:
    """Both constraints at once (AND), or None if they exclude each other."""
    if any(x is not None and y is not None and x != y for x, y in zip(a, b, strict=True)):
        return None
    return (a[0] if a[0] is not None else b[0], a[1] if a[1] is not None else b[1])


def patient_queries(
    clauses: Iterable[Sequence[PatientCriterion]], issuers: IssuerTable
) -> list[PatientQuery]:
    """The (PatientID, IssuerOfPatientID) alternatives that together hold every patient the
    AND'ed clauses of OR'ed criteria allow; ``[(None, None)]`` without a clause, ``[]`` when no
    patient can match. More than :data:`MAX_QUERIES` alternatives: 400."""
    alternatives: list[PatientQuery] = [(None, None)]
    for clause in clauses:
        ors = list(dict.fromkeys(q for c in clause if (q := patient_query(c, issuers))))
        met = (meet(a, b) for a in alternatives for b in ors)
        alternatives = list(dict.fromkeys(m for m in met if m is not None))
    if len(alternatives) > MAX_QUERIES:
        fail("patient", "", f"at most {MAX_QUERIES} patients may be searched at once")
    return alternatives


def patient_hit(
    criterion: PatientCriterion, key: PatientKey | None, issuers: IssuerTable, no_system: NoSystem
) -> bool:
    """True if the patient ``key`` (None: no patient known) meets ``criterion``: identifier
    tokens through ``issuers`` (:meth:`~.tokens.IssuerTable.system_for`), references by the
    patient they name or, for a digest id, by :func:`~.tokens.patient_resource_id`."""
    if key is None:
        return False
    if isinstance(criterion, Token):
        found = [(issuers.system_for(key.issuer), key.patient_id)]
        return token_matches(criterion, found, no_system)
    if criterion.key is not None:
        return criterion.key == key
    mine = patient_resource_id(key.patient_id, key.issuer)
    return criterion.digest and criterion.resource_id == mine
