"""FHIR R5 ImagingSelection search (sans-I/O): ``GET [base]/ImagingSelection?...`` parsed,
the Key Object Selection series found through QIDO-RS, and the built resources matched in the
gateway.

References: FHIR R5 imagingselection.html#search (the parameters), R4/R5 search.html
(#combining: ``,`` = OR, repetition = AND; #token; #reference and #chaining; #modifiers;
#escaping; #count; #errors), PS3.18 10.6 and PS3.4 C.2.2.2 (the QIDO side), PS3.3 A.35.4
(a KOS's series has Modality KO).

The flow the web layer follows:

1. :func:`parse_selection_search` → :class:`SelectionSearch` (400 on anything malformed);
   digest Patient ids resolved (:func:`resolve_digests`) if there are any.
2. :func:`pacs_queries` → series-level QIDO queries for the KOS series (an empty list: no KOS
   can match, ask nothing); the KOS instances of each series read (``kos.read_kos``)
   and built (``selection.selection_from_kos``); the stored (POSTed) selections added.
3. Each resource kept if :func:`matches_selection`; ``_count`` / ``_offset`` paging.

================  =========================================  ===============================
parameter         pushed down (series-level QIDO)            checked in the gateway
================  =========================================  ===============================
patient, subject  PatientID (+ IssuerOfPatientID), one       subject reference, or the
                  query per OR'ed patient                    patient's identifier
study-uid         StudyInstanceUID (a UID list)              studyUid
derived-from      StudyInstanceUID of the ImagingStudy ids   derivedFrom
code              no                                         code.coding (token)
status            every KOS is ``available``                 status
_id               no (a query only when a KOS id can match)  id
================  =========================================  ===============================

Decisions beyond the standards:

* Token parameters (``code``, ``status``) take ``:not``; ``|code`` follows
  :class:`~.tokens.NoSystem` as in the ImagingStudy search.
* ``study-uid`` values are UIDs, bare or ``urn:oid:``; with a system, that system must be
  ``urn:dicom:uid`` or ``urn:ietf:rfc:3986`` or the value matches nothing; a value without a
  UID (``system|``) is a 400.
* ``derived-from``: ``ImagingStudy/{id}``, a bare id, or an absolute URL ending so; a
  reference to another type (R5 also allows DocumentReference) matches nothing.
* ``patient`` / ``subject`` are parsed as in the ImagingStudy search (:mod:`.criteria`):
  ``Patient/{id}``, chained ``.identifier``, ``:identifier``.
* An empty parameter value is ignored. Unknown parameters and unsupported modifiers are
  ignored (listed in ``ignored``, left out of ``self``) or, when ``strict``
  (``Prefer: handling=strict``), a 400. ``_format`` and ``_pretty`` are kept for the web layer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Final

from ..dicomweb.uids import is_valid_uid
from .bundle import COUNT_PARAMETER, OFFSET_PARAMETER
from .criteria import (
    MAX_PARAMS,
    Param,
    ParamParser,
    PatientCriterion,
    PatientRef,
    criterion_text,
    fail,
    or_values,
    patient_clause,
    patient_hit,
    patient_queries,
    wire,
)
from .search import UID_SYSTEMS, TokenClause
from .selection import parse_kos_selection_id
from .tokens import (
    IssuerTable,
    NoSystem,
    PatientKey,
    Token,
    is_fhir_id,
    parse_token,
    token_matches,
    unescape,
)

__all__ = [
    "STATUS_SYSTEM",
    "SelectionSearch",
    "matches_selection",
    "pacs_queries",
    "parse_selection_search",
    "resolve_digests",
]

STATUS_SYSTEM: Final = "http://hl7.org/fhir/imagingselection-status"
_OID = "urn:oid:"
_UINT = re.compile(r"[0-9]{1,9}")
_KOS_DIGEST = re.compile(r"k[0-9a-f]{48}")  # the digest form of selection.kos_selection_id
_AVAILABLE: Final = ((STATUS_SYSTEM, "available"),)  # every selection read from a KOS

Codings = Sequence[tuple[str | None, str]]


@dataclass(frozen=True)
class SelectionSearch:
    """A parsed ImagingSelection search. Each criteria field holds AND'ed clauses whose values
    are OR'ed (R5 search #combining). ``derived_from`` holds ImagingStudy ids (a clause left
    empty matched only references to other types: it matches nothing); ``study_uids`` bare
    Study Instance UIDs (likewise)."""

    ids: tuple[tuple[str, ...], ...] = ()  # _id
    patients: tuple[tuple[PatientCriterion, ...], ...] = ()  # patient, subject
    study_uids: tuple[tuple[str, ...], ...] = ()  # study-uid
    derived_from: tuple[tuple[str, ...], ...] = ()  # derived-from
    codes: tuple[TokenClause, ...] = ()  # code
    statuses: tuple[TokenClause, ...] = ()  # status
    count: int | None = None  # _count
    offset: int = 0  # _offset
    summary_count: bool = False  # _summary=count
    passthrough: tuple[tuple[str, str], ...] = ()  # _format, _pretty: for the web layer
    no_system: NoSystem = NoSystem.ANY
    used: tuple[tuple[str, str], ...] = ()
    ignored: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def digests(self) -> list[str]:
        """The digest Patient ids to resolve before :func:`pacs_queries`
        (:func:`resolve_digests`), without repeats."""
        found = (c for cl in self.patients for c in cl if isinstance(c, PatientRef) and c.digest)
        return list(dict.fromkeys(c.resource_id for c in found))

    def derived_study_ids(self) -> list[str]:
        """Every ImagingStudy id of ``derived-from``, without repeats: those whose Study
        Instance UID :func:`pacs_queries` needs (its ``study_uid_for``)."""
        return list(dict.fromkeys(i for clause in self.derived_from for i in clause))

    def self_params(self) -> list[tuple[str, str]]:
        """The parameters applied, normalised, for the Bundle's ``self`` link (R5 search: "the
        parameters actually used"): in order, values re-escaped, duplicates dropped."""
        return list(self.used)


# ---- parsing ---------------------------------------------------------------------------------


def _study_uid(token: Token, parameter: str) -> str | None:
    """The UID of a ``study-uid`` value; None when its system names no DICOM UID."""
    if token.code is None:
        fail(parameter, token.text(), "a Study Instance UID is required")
    uid = token.code.removeprefix(_OID)
    if not is_valid_uid(uid):
        fail(parameter, token.code, f"{token.code[:80]!r} is not a DICOM UID")
    return uid if not token.system or token.system in UID_SYSTEMS else None


def _study_ref(raw: str, parameter: str) -> tuple[str | None, str]:
    """A ``derived-from`` value: (ImagingStudy id or None for another type, its text)."""
    value = unescape(raw)
    parts = value.split("/")
    kind, resource_id = ("ImagingStudy", parts[0]) if len(parts) == 1 else (parts[-2], parts[-1])
    if len(parts) > 2 and not value.startswith(("http://", "https://")):
        fail(parameter, raw, f"{raw[:80]!r} is not a reference (ImagingStudy/{{id}} or a URL)")
    if not is_fhir_id(resource_id):
        fail(parameter, raw, f"{resource_id[:80]!r} is not a FHIR id")
    text = f"{kind}/{resource_id}"
    return (resource_id if kind == "ImagingStudy" else None), text


class _Parser(ParamParser):
    """Accumulates parameters in order; :meth:`result` builds the search."""

    resource_type = "ImagingSelection"

    def __init__(self, strict: bool, max_count: int) -> None:
        super().__init__(strict)
        self.max_count = max_count
        self.ids: list[tuple[str, ...]] = []
        self.patients: list[tuple[PatientCriterion, ...]] = []
        self.study_uids: list[tuple[str, ...]] = []
        self.derived_from: list[tuple[str, ...]] = []
        self.tokens: dict[str, list[TokenClause]] = {"code": [], "status": []}
        self.single: dict[str, int] = {}
        self.summary_count = False

    def handler(self, base: str) -> Callable[[Param], None] | None:
        found = _HANDLERS.get(base)
        return None if found is None else partial(found, self)

    def token(self, p: Param) -> None:  # R5 search #token, #modifiers (:not)
        if not self.plain(p, "not"):
            return
        tokens = (parse_token(v, p.name) for v in or_values(p))
        clause = TokenClause(tuple(dict.fromkeys(tokens)), negated=p.modifier == "not")
        self.tokens[p.base].append(clause)
        label = p.base + (":not" if clause.negated else "")
        self.used.append((label, ",".join(t.text() for t in clause.values)))

    def patient(self, p: Param) -> None:  # R5 search #reference, #chaining
        clause = patient_clause(p)
        if clause is None:
            what = f"the chain .{p.chain}" if p.chain else f"the modifier :{p.modifier}"
            return self.unsupported(p.name, p.value, f"{p.base} does not support {what}")
        criteria, label = clause
        self.patients.append(criteria)
        self.used.append((label, ",".join(criterion_text(c) for c in criteria)))

    def study_uid(self, p: Param) -> None:  # R5: a token of UIDs
        if not self.plain(p):
            return
        tokens = list(dict.fromkeys(parse_token(v, p.name) for v in or_values(p)))
        uids = (_study_uid(t, p.name) for t in tokens)
        self.study_uids.append(tuple(dict.fromkeys(u for u in uids if u is not None)))
        texts = (Token(t.system, t.code.removeprefix(_OID) if t.code else None) for t in tokens)
        self.used.append((p.base, ",".join(dict.fromkeys(t.text() for t in texts))))

    def derived(self, p: Param) -> None:  # R5 search #reference
        if not self.plain(p, "ImagingStudy"):
            return
        refs = [_study_ref(v, p.name) for v in or_values(p)]
        self.derived_from.append(tuple(dict.fromkeys(i for i, _ in refs if i is not None)))
        self.used.append((p.base, ",".join(dict.fromkeys(text for _, text in refs))))

    def id_(self, p: Param) -> None:  # R5 search #_id
        if not self.plain(p):
            return
        ids = []
        for resource_id in (unescape(v) for v in or_values(p)):
            if not is_fhir_id(resource_id):
                fail(p.name, p.value, f"{resource_id[:80]!r} is not a FHIR id")
            ids.append(resource_id)
        clause = tuple(dict.fromkeys(ids))
        self.ids.append(clause)
        self.used.append(("_id", ",".join(clause)))

    def number(self, p: Param) -> None:  # R5 search #count; _offset for paging links
        if p.modifier is not None or p.chain is not None or not _UINT.fullmatch(p.value):
            fail(p.name, p.value, "must be a non-negative integer")
        if p.base in self.single:
            fail(p.name, p.value, "given more than once")
        number = int(p.value)
        if p.base == COUNT_PARAMETER:
            number = min(number, self.max_count)
        self.single[p.base] = number
        self.used.append((p.base, str(number)))

    def summary(self, p: Param) -> None:  # R5 search #_summary
        if p.value not in ("count", "false"):
            self.unsupported(p.name, p.value, "_summary supports count and false")
        elif self.plain(p):
            if p.base in self.single:
                fail(p.name, p.value, "given more than once")
            self.single[p.base] = int(p.value == "count")
            self.summary_count = p.value == "count"
            self.used.append((p.base, p.value))

    def result(self, no_system: NoSystem) -> SelectionSearch:
        return SelectionSearch(
            ids=tuple(self.ids),
            patients=tuple(self.patients),
            study_uids=tuple(self.study_uids),
            derived_from=tuple(self.derived_from),
            codes=tuple(self.tokens["code"]),
            statuses=tuple(self.tokens["status"]),
            count=self.single.get(COUNT_PARAMETER),
            offset=self.single.get(OFFSET_PARAMETER, 0),
            summary_count=self.summary_count,
            passthrough=tuple(self.passthrough),
            no_system=no_system,
            used=tuple(self.used),
            ignored=tuple(self.ignored),
        )


_HANDLERS: dict[str, Callable[[_Parser, Param], None]] = {
    "_id": _Parser.id_,
    "patient": _Parser.patient,
    "subject": _Parser.patient,
    "study-uid": _Parser.study_uid,
    "derived-from": _Parser.derived,
    "code": _Parser.token,
    "status": _Parser.token,
    COUNT_PARAMETER: _Parser.number,
    OFFSET_PARAMETER: _Parser.number,
    "_summary": _Parser.summary,
}


def parse_selection_search(
    params: Sequence[tuple[str, str]],
    *,
    strict: bool,
    max_count: int,
    no_system: NoSystem = NoSystem.ANY,
) -> SelectionSearch:
    """Parse the (percent-decoded, in order) parameters of an ImagingSelection search.

    ``_id``, ``patient`` / ``subject`` (``Patient/{id}``; chained ``.identifier``;
    ``:identifier``), ``study-uid``, ``derived-from`` (``:ImagingStudy`` allowed), ``code``
    and ``status`` (``:not`` allowed), ``_count`` (lowered to ``max_count``), ``_offset``,
    ``_summary`` (``count``, ``false``);
    ``_format`` and ``_pretty`` kept for the web layer. Malformed values raise
    :class:`~ncpeh_dicomweb.errors.BadRequest` with ``detail["parameter"]``; unknown or
    unsupported ones too when ``strict``, else they land in ``SelectionSearch.ignored``.
    """
    if len(params) > MAX_PARAMS:
        fail(params[MAX_PARAMS][0], "", f"a search may hold at most {MAX_PARAMS} parameters")
    parser = _Parser(strict, max_count)
    for name, value in params:
        parser.add(name, value)
    return parser.result(no_system)


def resolve_digests(
    search: SelectionSearch, *, patient: Callable[[str], PatientKey | None]
) -> SelectionSearch:
    """``search`` with its digest Patient ids (over-long patient identities) resolved, e.g.
    from the store of ids served, so that they can be pushed down. An id ``patient`` does not
    know names nothing."""
    patients = tuple(
        tuple(
            PatientRef(c.resource_id, patient(c.resource_id))
            if isinstance(c, PatientRef) and c.digest
            else c
            for c in clause
        )
        for clause in search.patients
    )
    return replace(search, patients=patients)


# ---- matching in the gateway -----------------------------------------------------------------


def _token_clause(clause: TokenClause, found: Codings, no_system: NoSystem) -> bool:
    hit = any(token_matches(t, found, no_system) for t in clause.values)
    return hit != clause.negated


def _references(value: Any, kind: str) -> list[str]:
    """The ids of ``kind`` that a Reference or a list of them names (``{kind}/{id}``)."""
    refs = value if isinstance(value, list) else [value]
    out = []
    for ref in refs:
        text = ref.get("reference") if isinstance(ref, dict) else None
        if isinstance(text, str) and text.startswith(f"{kind}/"):
            out.append(text.removeprefix(f"{kind}/"))
    return out


def _codings(code: Any) -> Codings:
    items = code.get("coding") if isinstance(code, dict) else None
    return [
        (c.get("system"), c["code"])
        for c in (items if isinstance(items, list) else [])
        if isinstance(c, dict) and isinstance(c.get("code"), str)
    ]


def _patient_match(
    criterion: PatientCriterion,
    subjects: Sequence[str],
    key: PatientKey | None,
    issuers: IssuerTable,
    no_system: NoSystem,
) -> bool:
    if isinstance(criterion, PatientRef) and criterion.resource_id in subjects:
        return True
    return patient_hit(criterion, key, issuers, no_system)


def matches_selection(
    search: SelectionSearch,
    resource: Mapping[str, Any],
    issuers: IssuerTable,
    patient_identifier: tuple[str, str | None] | None,
) -> bool:
    """True if a built R5 ImagingSelection meets every criterion of ``search``: ``_id``
    (``id``), patient (``subject`` = ``Patient/{id}``, or ``patient_identifier`` = the
    subject's PatientID and IssuerOfPatientID, matched through ``issuers`` as in the
    ImagingStudy search), ``study-uid`` (``studyUid``), ``derived-from`` (``derivedFrom``),
    ``code`` (``code.coding``, R5 search #token) and ``status``."""
    resource_id = resource.get("id")
    if not all(resource_id in clause for clause in search.ids):
        return False
    subjects = _references(resource.get("subject"), "Patient")
    key = None if patient_identifier is None else PatientKey(*patient_identifier)
    no_system = search.no_system
    for criteria in search.patients:
        if not any(_patient_match(c, subjects, key, issuers, no_system) for c in criteria):
            return False
    study_uid = resource.get("studyUid")
    if not all(study_uid in clause for clause in search.study_uids):
        return False
    derived = _references(resource.get("derivedFrom"), "ImagingStudy")
    if not all(any(d in clause for d in derived) for clause in search.derived_from):
        return False
    found = _codings(resource.get("code"))
    if not all(_token_clause(c, found, no_system) for c in search.codes):
        return False
    status = resource.get("status")
    statuses: Codings = [(STATUS_SYSTEM, status)] if isinstance(status, str) else []
    return all(_token_clause(c, statuses, no_system) for c in search.statuses)


# ---- push-down -------------------------------------------------------------------------------


def _intersect(sets: Iterable[Sequence[str]]) -> list[str] | None:
    """The values every list allows, in first-seen order; None when there is no list."""
    out: list[str] | None = None
    for values in sets:
        out = list(dict.fromkeys(values)) if out is None else [v for v in out if v in values]
    return out


def _may_be_kos(resource_id: str) -> bool:
    """True if ``resource_id`` may name a selection read from a KOS (either id form)."""
    return parse_kos_selection_id(resource_id) is not None or bool(
        _KOS_DIGEST.fullmatch(resource_id)
    )


def pacs_queries(
    search: SelectionSearch,
    issuers: IssuerTable,
    study_uid_for: Callable[[str], str | None],
) -> list[list[tuple[str, str]]]:
    """The series-level QIDO-RS queries (``/series``, PS3.18 10.6) whose answers hold every
    KOS series (Modality KO) that may give a match.

    One query per patient alternative (OR'ed identifiers: PatientID, plus IssuerOfPatientID
    when the system names one, at most ``criteria.MAX_QUERIES``, else 400; an unresolved
    digest Patient id is a 400 too, see :func:`resolve_digests`); StudyInstanceUID the UIDs
    every ``study-uid`` and ``derived-from`` clause allows (``study_uid_for`` maps an
    ImagingStudy id to its UID; None: the id names nothing), as a UID list (PS3.4
    C.2.2.2.2). ``[]`` when no KOS can match: disjoint UIDs or patients, a ``status`` that
    excludes ``available``, an ``_id`` clause naming no KOS selection. Without a narrowing
    parameter: ``[[("Modality", "KO")]]``. The answers are a superset: each selection built
    must still pass :func:`matches_selection`.
    """
    if not all(_token_clause(c, _AVAILABLE, search.no_system) for c in search.statuses):
        return []
    if not all(any(_may_be_kos(i) for i in clause) for clause in search.ids):
        return []
    patients = patient_queries(search.patients, issuers)
    uid_sets = [list(clause) for clause in search.study_uids]
    for clause in search.derived_from:
        uid_sets.append([u for i in clause if (u := study_uid_for(i)) is not None])
    uids = _intersect(uid_sets)
    if not patients or uids == []:
        return []
    queries = []
    for patient_id, issuer in patients:
        query = [("Modality", "KO")]
        if patient_id is not None:
            query.append(("PatientID", wire(patient_id)))
        if issuer is not None:
            query.append(("IssuerOfPatientID", wire(issuer)))
        if uids is not None:
            query.append(("StudyInstanceUID", ",".join(uids)))
        queries.append(query)
    return queries
