"""FHIR ImagingStudy search (sans-I/O): ``GET [base]/ImagingStudy?...`` parsed, pushed down to
QIDO-RS, and what the PACS cannot match matched in the gateway.

References: FHIR R4 search (http://hl7.org/fhir/R4/search.html: #combining for ``,`` = OR and
repetition = AND, #token, #date and #prefix, #reference and #chaining, #modifiers, #escaping,
#count, #include, #_summary, #_elements, #_sort, #errors for ``Prefer: handling``), the R4
and R5 ImagingStudy search parameters, the NCPeH "Get Study Metadata (HL7 FHIR)" page, and
PS3.18 10.6 / PS3.4 C.2.2.2 for the QIDO side.

The flow the web layer follows:

1. :func:`parse_study_search` → :class:`StudySearch` (400 on anything malformed); digest ids
   resolved through the store of ids served (:func:`resolve_digests`) if there are any.
2. :func:`to_qido` → study-level QIDO queries (an empty list: nothing can match, ask nothing).
   Their answers, deduplicated by StudyInstanceUID, are kept if :func:`matches_study`.
3. If :func:`needs_series`: the series of the kept studies (:func:`lower_qido`), each study
   kept if :func:`matches_series`; if :func:`needs_instances`: likewise with instances.
4. :func:`sort_studies`, then ``_count`` / ``_offset`` paging on what is left.

=====================  ==========================================  ==========================
parameter              pushed down (study-level QIDO)              checked in the gateway
=====================  ==========================================  ==========================
patient.identifier,    PatientID (+ IssuerOfPatientID when the     exact id and issuer
patient, subject       system names one), one query per OR'ed one
identifier             StudyInstanceUID list / AccessionNumber     exact; ``:not``; mixed ORs
_id                    StudyInstanceUID                            the id itself
started                StudyDate range, whole days                 time, zone, ``ne``, ``ap``
modality               ModalitiesInStudy (one clause, as a list)   other clauses, ``:not``
status                 (every study is ``available``)              yes
reason                 no                                          study + series answers
bodysite, series       no                                          series level
dicom-class, instance  no                                          instance level
=====================  ==========================================  ==========================

Decisions beyond the standards (each also where it applies):

* ``|code`` matches whatever the system by default (:class:`~.tokens.NoSystem`).
* ``identifier``: with system ``urn:dicom:uid`` or ``urn:ietf:rfc:3986`` the value is
  ``urn:oid:<StudyInstanceUID>`` (a bare UID is read as one); without a system a value
  ``urn:oid:<UID>`` is the Study Instance UID; anything else is the AccessionNumber, whatever
  its system (the mapping takes that system from Issuer of Accession Number Sequence, not in
  every study: checking it would hide the studies without one).
* ``series``, ``instance``, ``dicom-class``: values are UIDs, bare or ``urn:oid:``; a system,
  if given, must be ``urn:dicom:uid`` or ``urn:ietf:rfc:3986`` or the value matches nothing.
* Ids: ImagingStudy ids are :func:`.mapping.study_id`, Patient ids
  :func:`~.tokens.patient_resource_id`.
* An empty parameter value is ignored. Unknown parameters, unsupported modifiers and
  unsupported ``_include`` / ``_summary`` / ``_sort`` / ``_elements`` values are ignored
  (listed in ``StudySearch.ignored``, left out of ``self``) or, when ``strict``
  (``Prefer: handling=strict``), a 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, tzinfo
from functools import partial
from typing import Final

from ..backends.base import DicomJson
from ..dicomweb.attributes import Level
from ..dicomweb.uids import is_valid_uid
from . import mapping
from .bodysite import BODY_PART_SNOMED
from .codes import DCM, SCT, URI_SYSTEM, codings, string, values
from .criteria import (
    MAX_PARAMS,
    MAX_QUERIES,
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
    sendable,
    wire,
)
from .dates import DateValue, date_matches, parse_date, study_date_range, study_times
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
    "INCLUDES",
    "INSTANCE_INCLUDEFIELDS",
    "MAX_QUERIES",
    "SERIES_INCLUDEFIELDS",
    "STATUS_SYSTEM",
    "STUDY_INCLUDEFIELDS",
    "UID_SYSTEMS",
    "PatientRef",
    "StudyRef",
    "StudySearch",
    "TokenClause",
    "lower_qido",
    "matches_instances",
    "matches_series",
    "matches_study",
    "needs_instances",
    "needs_series",
    "parse_study_search",
    "resolve_digests",
    "sort_studies",
    "study_uid_for_id",
    "to_qido",
]

UID_SYSTEMS: Final = frozenset({"urn:dicom:uid", URI_SYSTEM})
STATUS_SYSTEM: Final = "http://hl7.org/fhir/imagingstudy-status"
INCLUDES: Final = ("ImagingStudy:endpoint", "ImagingStudy:patient")

# QIDO includefield lists: what the mapping reads (mapping.*_INCLUDEFIELDS, one list for both)
# and what the matching here reads on top of it.
STUDY_INCLUDEFIELDS: Final = tuple(
    dict.fromkeys((*mapping.STUDY_INCLUDEFIELDS, "00100021", "00401012", "0040100A", "00400275"))
)
SERIES_INCLUDEFIELDS: Final = tuple(
    dict.fromkeys(("0020000D", *mapping.SERIES_INCLUDEFIELDS, "00180015", "00400275"))
)
INSTANCE_INCLUDEFIELDS: Final = tuple(
    dict.fromkeys(("0020000D", *mapping.INSTANCE_INCLUDEFIELDS, "00080016", "00080018"))
)

# MAX_QUERIES and the other limits: .criteria (shared with the ImagingSelection search).
_LOWER_BATCH: Final = 100  # StudyInstanceUIDs per lower-level query (as relational.BATCH)
_OID = "urn:oid:"
_CS = re.compile(r"[A-Z0-9 _]{1,16}")  # PS3.5 6.2 CS: what a ModalitiesInStudy key may hold
_UINT = re.compile(r"[0-9]{1,9}")
_STUDY_DIGEST = re.compile(r"h[0-9a-f]{48}")  # the digest form of mapping.study_id
_AVAILABLE: Final[Codings] = [(STATUS_SYSTEM, "available")]  # every study the PACS holds (SPEC.md)
# R4 and R5 ImagingStudy elements, for _elements.
_ELEMENT_NAMES = (
    "id meta implicitRules language text contained extension modifierExtension identifier status "
    "modality subject encounter started basedOn partOf referrer interpreter endpoint "
    "numberOfSeries numberOfInstances procedureReference procedureCode procedure location "
    "reasonCode reasonReference reason note description series"
)
_ELEMENTS: Final = frozenset(_ELEMENT_NAMES.split())

Codings = Sequence[tuple[str | None, str]]


@dataclass(frozen=True, slots=True)
class TokenClause:
    """One occurrence of a token parameter: its values, OR'ed; ``negated`` for ``:not``."""

    values: tuple[Token, ...]
    negated: bool = False


@dataclass(frozen=True, slots=True)
class StudyRef:
    """One ``_id`` value and the StudyInstanceUID it names: the id itself when it is a UID,
    None for any other id until :func:`resolve_digests` ("" once it named nothing known)."""

    resource_id: str
    uid: str | None


@dataclass(frozen=True, slots=True)
class StudySearch:
    """A parsed ImagingStudy search. Each criteria field holds AND'ed clauses whose values are
    OR'ed (R4 search #combining)."""

    patient: tuple[tuple[PatientCriterion, ...], ...] = ()
    identifier: tuple[TokenClause, ...] = ()
    ids: tuple[tuple[StudyRef, ...], ...] = ()  # _id
    modality: tuple[TokenClause, ...] = ()
    started: tuple[tuple[DateValue, ...], ...] = ()
    status: tuple[TokenClause, ...] = ()
    reason: tuple[TokenClause, ...] = ()
    bodysite: tuple[TokenClause, ...] = ()
    series: tuple[TokenClause, ...] = ()
    dicom_class: tuple[TokenClause, ...] = ()
    instance: tuple[TokenClause, ...] = ()
    count: int | None = None  # _count
    offset: int = 0  # _offset: first match of the page (the web layer's next/previous links)
    include: tuple[str, ...] = ()  # among INCLUDES
    summary_count: bool = False  # _summary=count
    elements: tuple[str, ...] = ()  # _elements
    sort: str | None = None  # _sort: "started" or "-started"
    passthrough: tuple[tuple[str, str], ...] = ()  # _format, _pretty: for the web layer
    no_system: NoSystem = NoSystem.ANY
    used: tuple[tuple[str, str], ...] = ()
    ignored: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def digests(self) -> tuple[list[str], list[str]]:
        """The digest ids to resolve before :func:`to_qido` (:func:`resolve_digests`): Patient
        ids and ImagingStudy ids, each list without repeats."""
        patients = (c for cl in self.patient for c in cl if isinstance(c, PatientRef) and c.digest)
        studies = (r.resource_id for cl in self.ids for r in cl if r.uid is None)
        return (
            list(dict.fromkeys(c.resource_id for c in patients)),
            list(dict.fromkeys(s for s in studies if _STUDY_DIGEST.fullmatch(s))),
        )

    def self_params(self) -> list[tuple[str, str]]:
        """The parameters applied, normalised, for the Bundle's ``self`` link (R4 search: "the
        parameters actually used"): in order, canonical names (``reason`` for ``reasonCode``,
        ``bodysite`` for ``body-site``), values re-escaped, duplicates and ``eq`` dropped."""
        return list(self.used)


def study_uid_for_id(resource_id: str) -> str | None:
    """The Study Instance UID an ImagingStudy id of the default site names (there the id is
    the UID: :func:`.mapping.study_id`), or None for any other id (a digest: only the store of
    ids served knows it)."""
    return resource_id if is_valid_uid(resource_id) else None


# ---- parsing ---------------------------------------------------------------------------------


def _uid_value(token: Token, parameter: str) -> Token:
    """A UID token with its code reduced to the bare UID (``urn:oid:`` dropped), checked."""
    if token.code is None:
        return token
    uid = token.code.removeprefix(_OID)
    if not is_valid_uid(uid):
        fail(parameter, token.code, f"{token.code[:80]!r} is not a DICOM UID")
    return Token(token.system, uid)


def _identifier_value(token: Token, parameter: str) -> Token:
    """An ``identifier`` token; with a UID system its code is written ``urn:oid:<UID>``."""
    if token.system not in UID_SYSTEMS or token.code is None:
        return token
    return Token(token.system, _OID + str(_uid_value(token, parameter).code))


def _plain(token: Token, parameter: str) -> Token:
    return token


# name → (canonical name, StudySearch field, value check). Names are case-sensitive (R4).
_TOKEN_PARAMS: dict[str, tuple[str, str, Callable[[Token, str], Token]]] = {
    "identifier": ("identifier", "identifier", _identifier_value),
    "modality": ("modality", "modality", _plain),
    "status": ("status", "status", _plain),
    "reason": ("reason", "reason", _plain),
    "reasonCode": ("reason", "reason", _plain),  # the NCPeH page's name (the R4 element's)
    "bodysite": ("bodysite", "bodysite", _plain),
    "body-site": ("bodysite", "bodysite", _plain),  # R5 name
    "series": ("series", "series", _uid_value),
    "instance": ("instance", "instance", _uid_value),
    "dicom-class": ("dicom-class", "dicom_class", _uid_value),
}
_INCLUDE_VALUES: dict[str, str] = {
    "ImagingStudy:endpoint": INCLUDES[0],
    "ImagingStudy:endpoint:Endpoint": INCLUDES[0],
    "ImagingStudy:patient": INCLUDES[1],
    "ImagingStudy:patient:Patient": INCLUDES[1],
    "ImagingStudy:subject": INCLUDES[1],  # every subject here is a Patient
    "ImagingStudy:subject:Patient": INCLUDES[1],
}


class _Parser(ParamParser):
    """Accumulates parameters in order; :meth:`result` builds the search."""

    resource_type = "ImagingStudy"

    def __init__(self, strict: bool, now: datetime, max_count: int | None) -> None:
        super().__init__(strict)
        self.now = now
        self.max_count = max_count
        self.tokens: dict[str, list[TokenClause]] = {f: [] for _, f, _ in _TOKEN_PARAMS.values()}
        self.patient: list[tuple[PatientCriterion, ...]] = []
        self.ids: list[tuple[StudyRef, ...]] = []
        self.started: list[tuple[DateValue, ...]] = []
        self.single: dict[str, object] = {}  # _count, _offset, _summary, _sort
        self.include: dict[str, None] = {}
        self.elements: dict[str, None] = {}

    def handler(self, base: str) -> Callable[[Param], None] | None:
        found = _HANDLERS.get(base)
        return None if found is None else partial(found, self)

    def once(self, p: Param, parsed: object, normalised: str) -> None:
        if p.base in self.single:
            fail(p.name, p.value, "given more than once")
        self.single[p.base] = parsed
        self.used.append((p.base, normalised))

    def values(self, p: Param) -> list[str]:
        return or_values(p)

    def token(self, p: Param) -> None:  # R4 search #token, #modifiers (:not)
        if not self.plain(p, "not"):
            return
        canonical, attr, check = _TOKEN_PARAMS[p.base]
        tokens = (check(parse_token(v, p.name), p.name) for v in self.values(p))
        clause = TokenClause(tuple(dict.fromkeys(tokens)), negated=p.modifier == "not")
        self.tokens[attr].append(clause)
        label = canonical + (":not" if clause.negated else "")
        self.used.append((label, ",".join(t.text() for t in clause.values)))

    def date(self, p: Param) -> None:  # R4 search #date
        if self.plain(p):
            dates = tuple(parse_date(v, p.name, now=self.now) for v in self.values(p))
            self.started.append(dates)
            self.used.append((p.base, ",".join(d.normalised() for d in dates)))

    def reference(self, p: Param) -> None:  # R4 search #reference, #chaining
        clause = patient_clause(p)
        if clause is None:
            what = f"the chain .{p.chain}" if p.chain else f"the modifier :{p.modifier}"
            return self.unsupported(p.name, p.value, f"{p.base} does not support {what}")
        criteria, label = clause
        self.patient.append(criteria)
        self.used.append((label, ",".join(criterion_text(c) for c in criteria)))

    def id_(self, p: Param) -> None:  # R4 search #_id
        if not self.plain(p):
            return
        refs = []
        for resource_id in (unescape(v) for v in self.values(p)):
            if not is_fhir_id(resource_id):
                fail(p.name, p.value, f"{resource_id[:80]!r} is not a FHIR id")
            refs.append(StudyRef(resource_id, study_uid_for_id(resource_id)))
        self.ids.append(tuple(refs))
        self.used.append(("_id", ",".join(r.resource_id for r in refs)))

    def number(self, p: Param) -> None:  # R4 search #count; _offset for paging links
        if p.modifier is not None or p.chain is not None or not _UINT.fullmatch(p.value):
            fail(p.name, p.value, "must be a non-negative integer")
        number = int(p.value)
        if p.base == "_count" and self.max_count is not None:
            number = min(number, self.max_count)
        self.once(p, number, str(number))

    def include_(self, p: Param) -> None:  # R4 search #include
        # :iterate changes nothing here: an Endpoint or a Patient includes nothing further.
        if not self.plain(p, "iterate"):
            return
        include = _INCLUDE_VALUES.get(p.value)
        if include is None:
            self.unsupported(p.name, p.value, f"_include supports {' and '.join(INCLUDES)}")
        elif include not in self.include:
            self.include[include] = None
            self.used.append(("_include", include))

    def summary(self, p: Param) -> None:  # R4 search #_summary
        if p.value not in ("count", "false"):
            self.unsupported(p.name, p.value, "_summary supports count and false")
        elif self.plain(p):
            self.once(p, p.value == "count", p.value)

    def elements_(self, p: Param) -> None:  # R4 search #_elements
        if not self.plain(p):
            return
        new = []
        for element in self.values(p):
            if element not in _ELEMENTS:
                self.unsupported(p.name, element, f"{element[:80]!r} is no ImagingStudy element")
            elif element not in self.elements:
                self.elements[element] = None
                new.append(element)
        if new:
            self.used.append(("_elements", ",".join(new)))

    def sort_(self, p: Param) -> None:  # R4 search #_sort
        keys = self.values(p) if self.plain(p) else []
        for key in keys[1:]:
            if key.lstrip("-") != "started":  # a second "started" key orders nothing more
                self.unsupported(p.name, key, "_sort supports started and -started")
        if keys and keys[0] in ("started", "-started"):
            self.once(p, keys[0], keys[0])
        elif keys:
            self.unsupported(p.name, keys[0], "_sort supports started and -started")

    def result(self, no_system: NoSystem) -> StudySearch:
        tokens = {attr: tuple(clauses) for attr, clauses in self.tokens.items()}
        count, offset = self.single.get("_count"), self.single.get("_offset", 0)
        sort = self.single.get("_sort")
        return StudySearch(
            patient=tuple(self.patient),
            identifier=tokens["identifier"],
            ids=tuple(self.ids),
            modality=tokens["modality"],
            started=tuple(self.started),
            status=tokens["status"],
            reason=tokens["reason"],
            bodysite=tokens["bodysite"],
            series=tokens["series"],
            dicom_class=tokens["dicom_class"],
            instance=tokens["instance"],
            count=count if isinstance(count, int) else None,
            offset=offset if isinstance(offset, int) else 0,
            include=tuple(self.include),
            summary_count=self.single.get("_summary") is True,
            elements=tuple(self.elements),
            sort=sort if isinstance(sort, str) else None,
            passthrough=tuple(self.passthrough),
            no_system=no_system,
            used=tuple(self.used),
            ignored=tuple(self.ignored),
        )


_HANDLERS: dict[str, Callable[[_Parser, Param], None]] = {
    **dict.fromkeys(_TOKEN_PARAMS, _Parser.token),
    "started": _Parser.date,
    "patient": _Parser.reference,
    "subject": _Parser.reference,
    "_id": _Parser.id_,
    "_count": _Parser.number,
    "_offset": _Parser.number,
    "_include": _Parser.include_,
    "_summary": _Parser.summary,
    "_elements": _Parser.elements_,
    "_sort": _Parser.sort_,
}


def parse_study_search(
    params: Sequence[tuple[str, str]],
    *,
    strict: bool,
    no_system: NoSystem = NoSystem.ANY,
    now: datetime | None = None,
    max_count: int | None = None,
) -> StudySearch:
    """Parse the (percent-decoded, in order) parameters of an ImagingStudy search.

    Every parameter of the NCPeH page and of the R4/R5 ImagingStudy search: ``patient`` /
    ``subject`` (``Patient/{id}``; chained ``.identifier``; ``:identifier``), ``identifier``,
    ``_id``, ``modality``, ``started``, ``status``, ``reason`` (= ``reasonCode``),
    ``bodysite`` (= ``body-site``), ``series``, ``dicom-class``, ``instance``; ``_count``,
    ``_offset``, ``_include`` (:data:`INCLUDES`), ``_summary`` (``count``, ``false``),
    ``_elements``, ``_sort`` (``started``, ``-started``); ``_format`` and ``_pretty`` are kept
    for the web layer. Token parameters take ``:not``. ``now`` fixes ``ap`` (default: the
    clock); a ``_count`` above ``max_count`` is lowered to it. Malformed values raise
    :class:`BadRequest` with ``detail["parameter"]``; unknown or unsupported ones too when
    ``strict``, else they land in ``StudySearch.ignored``.
    """
    if len(params) > MAX_PARAMS:
        fail(params[MAX_PARAMS][0], "", f"a search may hold at most {MAX_PARAMS} parameters")
    parser = _Parser(strict, now or datetime.now(UTC), max_count)
    for name, value in params:
        parser.add(name, value)
    return parser.result(no_system)


def resolve_digests(
    search: StudySearch,
    *,
    patient: Callable[[str], PatientKey | None],
    study: Callable[[str], str | None],
) -> StudySearch:
    """``search`` with its digest ids (over-long Patient identities, ImagingStudy ids of other
    sites) resolved, e.g. from the store of ids served, so that they can be pushed down. An
    id the resolvers do not know names nothing."""
    patients = tuple(
        tuple(
            PatientRef(c.resource_id, patient(c.resource_id))
            if isinstance(c, PatientRef) and c.digest
            else c
            for c in clause
        )
        for clause in search.patient
    )
    ids = tuple(
        tuple(
            StudyRef(r.resource_id, study(r.resource_id) or "")
            if r.uid is None and _STUDY_DIGEST.fullmatch(r.resource_id)
            else r
            for r in clause
        )
        for clause in search.ids
    )
    return replace(search, patient=patients, ids=ids)


# ---- push-down -------------------------------------------------------------------------------


def _identifier_target(token: Token, no_system: NoSystem) -> tuple[str, str | None]:
    """What an ``identifier`` token names: ("uid" | "accession", value or None for any)."""
    if token.system in UID_SYSTEMS:
        return ("uid", None if token.code is None else token.code.removeprefix(_OID))
    code = token.code
    bare = token.system is None or (token.system == "" and no_system is NoSystem.ANY)
    if bare and code is not None and code.startswith(_OID) and is_valid_uid(code[len(_OID) :]):
        return ("uid", code[len(_OID) :])
    return ("accession", code)


def _pure(search: StudySearch, kind: str) -> list[list[str]]:
    """For each ``identifier`` clause whose values all name a ``kind`` value, those values."""
    out = []
    for clause in search.identifier:
        targets = [_identifier_target(t, search.no_system) for t in clause.values]
        if not clause.negated and all(k == kind and v for k, v in targets):
            out.append([v for _, v in targets if v])
    return out


def _intersect(sets: Iterable[list[str]]) -> list[str] | None:
    """The values every list allows, in first-seen order; None when there is no list."""
    out: list[str] | None = None
    for values_ in sets:
        out = list(dict.fromkeys(values_)) if out is None else [v for v in out if v in values_]
    return out


def _modalities(clause: TokenClause, no_system: NoSystem) -> list[str] | None:
    """The DCM codes a ``modality`` clause allows; None when it allows any modality."""
    codes: list[str] = []
    for token in clause.values:
        foreign = token.system not in (None, "", DCM)
        if foreign or (token.system == "" and no_system is NoSystem.NONE):
            continue  # never a modality: those are all DCM codes
        if token.code is None:
            return None
        if _CS.fullmatch(token.code):
            codes.append(token.code)
    return codes


def _da(day: date | None) -> str:
    return "" if day is None else f"{day.year:04d}{day.month:02d}{day.day:02d}"


def to_qido(search: StudySearch, issuers: IssuerTable) -> list[list[tuple[str, str]]]:
    """The study-level QIDO-RS queries (PS3.18 10.6) whose answers hold every match.

    One query per patient alternative (OR'ed identifiers; at most :data:`MAX_QUERIES`, else
    400), times one per OR'ed AccessionNumber while that stays within the limit (else the
    accession numbers are left to the gateway); UIDs and modalities go as lists (PS3.4
    C.2.2.2.2, C.6.2.1.2); StudyDate is the tightest whole-day range of the ``started``
    clauses (:func:`~.dates.study_date_range`). An empty list: no study can match, ask
    nothing. The queries are a superset: each answer must still pass :func:`matches_study`.

    ``patient.identifier=|value`` asks PatientID=value whatever the IssuerOfPatientID (with
    ``NoSystem.NONE`` the gateway then keeps patients whose identifier has no system);
    ``system|value`` asks IssuerOfPatientID = the issuer of ``system``
    (:meth:`~.tokens.IssuerTable.issuer_for`) and finds nothing when it has none.
    """
    if not all(_token_clause(c, _AVAILABLE, search) for c in search.status):
        return []
    patients = patient_queries(search.patient, issuers)
    uid_sets = _pure(search, "uid")
    uid_sets += [[r.uid for r in clause if r.uid] for clause in search.ids]
    for clause in search.ids:
        for ref in clause:
            if ref.uid is None and _STUDY_DIGEST.fullmatch(ref.resource_id):
                fail("_id", ref.resource_id, "this ImagingStudy id must be resolved first")
    uids = _intersect(uid_sets)
    accessions = _intersect([[a for a in s if sendable(a)] for s in _pure(search, "accession")])
    days = study_date_range(search.started)
    modality_sets: list[list[str]] = [
        codes
        for clause in search.modality
        if not clause.negated and (codes := _modalities(clause, search.no_system)) is not None
    ]
    if not patients or uids == [] or accessions == [] or days is None or [] in modality_sets:
        return []
    common: list[tuple[str, str]] = []
    if uids is not None:
        common.append(("StudyInstanceUID", ",".join(uids)))
    if days != (None, None):
        low, high = _da(days[0]), _da(days[1])
        common.append(("StudyDate", low if low == high else f"{low}-{high}"))
    if modality_sets:  # one clause as a list (PS3.4 C.6.2.1.2); the narrowest
        narrowest: list[str] = min(modality_sets, key=len)
        common.append(("ModalitiesInStudy", ",".join(narrowest)))
    common.append(("includefield", ",".join(STUDY_INCLUDEFIELDS)))
    by_accession: list[str | None] = [None]
    if accessions is not None and len(patients) * len(accessions) <= MAX_QUERIES:
        by_accession = list(accessions)
    queries = []
    for (patient_id, issuer), accession in ((p, a) for p in patients for a in by_accession):
        keys = [("PatientID", patient_id), ("IssuerOfPatientID", issuer)]
        keys.append(("AccessionNumber", accession))
        query = [(k, wire(v)) for k, v in keys if v is not None]
        queries.append(query + common)
    return queries


def lower_qido(level: Level, study_uids: Sequence[str]) -> list[list[tuple[str, str]]]:
    """QIDO-RS queries (``/series`` or ``/instances``, PS3.18 10.6.1) for every series or
    instance of the given studies, with what :func:`matches_series` / :func:`matches_instances`
    and the mapping read: one query per 100 studies (a UID list, PS3.4 C.2.2.2.2)."""
    fields = {Level.SERIES: SERIES_INCLUDEFIELDS, Level.INSTANCE: INSTANCE_INCLUDEFIELDS}
    if level not in fields:
        raise ValueError("lower_qido: the series or the instance level")
    return [
        [
            ("StudyInstanceUID", ",".join(study_uids[i : i + _LOWER_BATCH])),
            ("includefield", ",".join(fields[level])),
        ]
        for i in range(0, len(study_uids), _LOWER_BATCH)
    ]


# ---- matching in the gateway -----------------------------------------------------------------


def _strings(dataset: DicomJson, tag: str) -> list[str]:
    return [v.strip() for v in values(dataset, tag) if isinstance(v, str) and v.strip()]


def _token_clause(clause: TokenClause, found: Codings, search: StudySearch) -> bool:
    hit = any(token_matches(t, found, search.no_system) for t in clause.values)
    return hit != clause.negated


def _uid_clause(clause: TokenClause, uids: set[str]) -> bool:
    """A clause of UID tokens (series, instance, dicom-class): systems as the module says."""
    hit = any(
        (not t.system or t.system in UID_SYSTEMS) and (t.code in uids if t.code else bool(uids))
        for t in clause.values
    )
    return hit != clause.negated


def matches_study(
    search: StudySearch,
    study: DicomJson,
    issuers: IssuerTable,
    *,
    site_tz: tzinfo | None = None,
    site_id: str | None = None,
) -> bool:
    """True if a study-level answer (DICOM JSON) meets every study-level criterion: patient
    (PatientID, IssuerOfPatientID through ``issuers``), identifier, ``_id``
    (:func:`.mapping.study_id` on ``site_id``), started (to the time and zone, :mod:`.dates`:
    ``site_tz`` places a study without TimezoneOffsetFromUTC), modality (ModalitiesInStudy,
    else Modality), status. Lower levels: :func:`matches_series`, :func:`matches_instances`.
    """
    patient_id, issuer = string(study, "00100020"), string(study, "00100021")
    key = None if patient_id is None else PatientKey(patient_id, issuer)
    if not all(
        any(patient_hit(c, key, issuers, search.no_system) for c in cl) for cl in search.patient
    ):
        return False
    uid, accession = string(study, "0020000D"), string(study, "00080050")
    have = {"uid": uid, "accession": accession}
    for clause in search.identifier:
        targets = (_identifier_target(t, search.no_system) for t in clause.values)
        hit = any(have[k] is not None and v in (None, have[k]) for k, v in targets)
        if hit == clause.negated:
            return False
    resource_id = None if uid is None else mapping.study_id(uid, site_id)
    if not all(any(r.resource_id == resource_id for r in clause) for clause in search.ids):
        return False
    if search.started:
        times = study_times(study, site_tz)
        if not all(any(date_matches(v, times) for v in clause) for clause in search.started):
            return False
    modalities = _strings(study, "00080061") or _strings(study, "00080060")
    found: Codings = [(DCM, m) for m in modalities]
    if not all(_token_clause(c, found, search) for c in search.modality):
        return False
    return all(_token_clause(c, _AVAILABLE, search) for c in search.status)


def needs_series(search: StudySearch) -> bool:
    """True if each study's series must be read: for ``bodysite``, ``series`` and ``reason``.

    ``reason`` because its codes may sit at either level: ReasonForPerformedProcedureCodeSequence
    (0040,1012) is a study attribute (General Study module), but a study-level QIDO returns it
    only if the PACS honours ``includefield=00401012`` (PS3.18 8.3.4.3 lets it leave out
    attributes it does not hold at that level; Orthanc reads them from a stored instance), and
    ReasonForRequestedProcedureCodeSequence (0040,100A) is mostly found inside Request
    Attributes Sequence (0040,0275), a series attribute (General Series module) that only a
    series-level query returns.
    """
    return bool(search.bodysite or search.series or search.reason)


def needs_instances(search: StudySearch) -> bool:
    """True if each study's instances must be read: for ``dicom-class`` and ``instance``."""
    return bool(search.dicom_class or search.instance)


def _reasons(study: DicomJson, series: Sequence[DicomJson]) -> Codings:
    """The reason codes the mapping gives ImagingStudy ``reasonCode`` / ``reason``."""
    items = values(study, "00401012") + values(study, "0040100A")
    for dataset in (study, *series):
        for request in values(dataset, "00400275"):
            if isinstance(request, dict):
                items += values(request, "0040100A")
    return [(c.get("system"), c["code"]) for c in codings(items)]


def matches_series(search: StudySearch, study: DicomJson, series: Sequence[DicomJson]) -> bool:
    """True if a study with all its series (series-level answers) meets ``bodysite`` (the SNOMED
    CT code of BodyPartExamined, PS3.16 Annex L: :data:`~.bodysite.BODY_PART_SNOMED`),
    ``series`` (SeriesInstanceUID) and ``reason`` (:func:`_reasons`). Each clause may be met by
    a different series: R4 search tests each parameter against the whole resource."""
    parts = (p.upper().replace(" ", "") for s in series for p in _strings(s, "00180015"))
    sites: Codings = [(SCT, row[0]) for p in parts if (row := BODY_PART_SNOMED.get(p))]
    uids = {u for s in series for u in _strings(s, "0020000E")}
    reasons = _reasons(study, series) if search.reason else []
    return (
        all(_token_clause(c, sites, search) for c in search.bodysite)
        and all(_uid_clause(c, uids) for c in search.series)
        and all(_token_clause(c, reasons, search) for c in search.reason)
    )


def matches_instances(search: StudySearch, instances: Sequence[DicomJson]) -> bool:
    """True if a study with all its instances (instance-level answers) meets ``dicom-class``
    (SOPClassUID) and ``instance`` (SOPInstanceUID)."""
    classes = {u for i in instances for u in _strings(i, "00080016")}
    uids = {u for i in instances for u in _strings(i, "00080018")}
    return all(_uid_clause(c, classes) for c in search.dicom_class) and all(
        _uid_clause(c, uids) for c in search.instance
    )


def sort_studies(
    search: StudySearch, studies: Iterable[DicomJson], *, site_tz: tzinfo | None = None
) -> list[DicomJson]:
    """``studies`` in the order of ``_sort`` (R4 search #_sort): by start as an instant,
    ``-started`` latest first, studies without a start last either way; without ``_sort``
    the order is kept."""
    studies = list(studies)
    if search.sort is None:
        return studies
    timed = [(t.instant[0], s) for s in studies if (t := study_times(s, site_tz)) is not None]
    timed.sort(key=lambda pair: pair[0], reverse=search.sort == "-started")
    untimed = [s for s in studies if study_times(s, site_tz) is None]
    return [s for _, s in timed] + untimed
