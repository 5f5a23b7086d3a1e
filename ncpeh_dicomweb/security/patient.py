"""Patient-bound tokens: a token whose claims name one patient sees that patient's data only.

Which patient (pure, :func:`patient_of`): the claims configured in ``[auth]``

* ``patient_claim`` (default ``patient``): a FHIR Patient id as the gateway makes them
  (:func:`~ncpeh_dicomweb.fhir.tokens.patient_resource_id`, e.g. ``456789123-.CZ-2DNCPEH``)
  or a reference ``Patient/{id}``;
* ``patient_identifier_claim`` (off by default): a patient identifier, ``system|value`` or an
  object ``{"system": ..., "value": ...}``, whose system is mapped to an IssuerOfPatientID
  through ``[fhir.patient_id_issuers]`` (or is ``urn:oid:{issuer}``); no system (``|value``)
  names a patient without an issuer.

A token with neither claim is unbound (system-level access). A claim that is present but cannot
be read (not a string, empty, not one of our ids, an unknown system, a value no PatientID can
hold), or two claims naming different patients, make the token invalid
(:class:`PatientClaimError`, a 401 ``invalid_token``): never a silently unbound token.

What the bound token may see (:class:`PatientBinding`, the one policy every handler asks):

* a dataset whose PatientID (0010,0020) and IssuerOfPatientID (0010,0021) are exactly the
  patient's (spaces around the values are not significant, PS3.5 6.2 LO); a dataset without
  PatientID, or without an issuer when the patient has one, is not the patient's;
* QIDO queries are narrowed (:meth:`PatientBinding.narrow`): the patient's PatientID and
  IssuerOfPatientID become matching keys (so the PACS pages over the patient's data only and
  returns both attributes), a client's own PatientID/IssuerOfPatientID key that cannot match
  the patient makes the query match nothing, without asking the PACS; what comes back is still
  filtered with :meth:`PatientBinding.allows`;
* a study (retrieve, metadata, frames, rendered, FHIR read...) is the patient's when every
  dataset a study-level QIDO by its UID returns is the patient's (a UID some PACS file under
  two patients is nobody's); the answer is kept per (site, study) for a short time, bounded
  (:class:`StudyPatients`): it is the same for every token, so the cache is shared.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

from ..dicomweb.attributes import Level
from ..dicomweb.matching import key_matches
from ..dicomweb.query import MatchKey, MatchKind, QidoQuery, parse_qido, to_params
from ..fhir.tokens import IssuerTable, PatientKey, parse_patient_resource_id, patient_resource_id
from .tokens import TokenError

__all__ = [
    "ISSUER_TAG",
    "PATIENT_ID_TAG",
    "PatientBinding",
    "PatientClaimError",
    "PatientClaims",
    "StudyPatients",
    "patient_of",
    "study_query",
]

PATIENT_ID_TAG: Final = "00100020"
ISSUER_TAG: Final = "00100021"
_PATIENT_ID_PATH: Final = (0x00100020,)
_ISSUER_PATH: Final = (0x00100021,)
_REFERENCE_PREFIX: Final = "Patient/"
_MAX_LO: Final = 64
# PS3.5 6.2 LO: no backslash, no control character (ESC aside, which no identifier needs).
_NOT_LO = re.compile(r"[\\\x00-\x1f\x7f]")
# The gateway's own QIDO queries may be long (UID lists): the narrowing re-reads them unbounded.
_INTERNAL_LIMIT: Final = 2**31 - 1
_INTERNAL_LENGTH: Final = 1 << 20


class PatientClaimError(TokenError):
    """A patient claim that cannot be read: the token is refused (401 ``invalid_token``)."""


@dataclass(frozen=True, slots=True)
class PatientClaims:
    """Which claims bind a token, and the issuer table identifier systems are mapped with."""

    patient_claim: str | None = "patient"
    identifier_claim: str | None = None
    issuers: IssuerTable = field(default_factory=IssuerTable)


def _lo(value: str) -> str | None:
    """``value`` without surrounding spaces if one LO value may hold it, else None."""
    value = value.strip(" ")
    if not value or len(value) > _MAX_LO or _NOT_LO.search(value):
        return None
    return value


def _from_patient_claim(value: object) -> PatientKey:
    if not isinstance(value, str):
        raise PatientClaimError("the token's patient claim is not a string")
    resource_id = value.removeprefix(_REFERENCE_PREFIX)
    key = parse_patient_resource_id(resource_id) if resource_id else None
    if key is None:
        raise PatientClaimError("the token's patient claim names no patient")
    return _checked(key.patient_id, key.issuer)


def _from_identifier_claim(value: object, issuers: IssuerTable) -> PatientKey:
    if isinstance(value, str):
        system, bar, text = value.partition("|")
        if not bar:
            raise PatientClaimError("the token's patient identifier is not system|value")
    elif isinstance(value, Mapping):
        given_system, given_text = value.get("system", ""), value.get("value")
        if not isinstance(given_system, str) or not isinstance(given_text, str):
            raise PatientClaimError("the token's patient identifier is malformed")
        system, text = given_system, given_text
    else:
        raise PatientClaimError("the token's patient identifier is malformed")
    issuer = None
    if system:
        issuer = issuers.issuer_for(system)
        if issuer is None:
            raise PatientClaimError("the token's patient identifier system is not known here")
    return _checked(text, issuer)


def _checked(patient_id: str, issuer: str | None) -> PatientKey:
    pid = _lo(patient_id)
    checked_issuer = None if issuer is None else _lo(issuer)
    if pid is None or (issuer is not None and checked_issuer is None):
        raise PatientClaimError("the token's patient is not a valid DICOM patient identity")
    return PatientKey(pid, checked_issuer)


def patient_of(claims: Mapping[str, Any], rules: PatientClaims) -> PatientKey | None:
    """The patient the token is bound to; None if it is unbound; PatientClaimError if a
    patient claim is present but cannot be read, or two claims name different patients."""
    found: list[PatientKey] = []
    if rules.patient_claim is not None and rules.patient_claim in claims:
        found.append(_from_patient_claim(claims[rules.patient_claim]))
    if rules.identifier_claim is not None and rules.identifier_claim in claims:
        found.append(_from_identifier_claim(claims[rules.identifier_claim], rules.issuers))
    if not found:
        return None
    if any(key != found[0] for key in found):
        raise PatientClaimError("the token's patient claims name different patients")
    return found[0]


def _text(dataset: Mapping[str, Any], tag: str) -> str | None:
    """The first value of ``tag`` in a DICOM JSON dataset, without surrounding spaces."""
    element = dataset.get(tag)
    values = element.get("Value") if isinstance(element, Mapping) else None
    if not isinstance(values, list) or not values or not isinstance(values[0], str | int):
        return None
    return str(values[0]).strip(" ") or None


def study_query(study_uid: str) -> QidoQuery:
    """The study-level QIDO that tells whose study ``study_uid`` is."""
    return parse_qido(
        [("StudyInstanceUID", study_uid), ("includefield", "PatientID,IssuerOfPatientID")],
        Level.STUDY,
    )


def patients_in(datasets: Iterable[Mapping[str, Any]]) -> frozenset[PatientKey | None]:
    """The patients of ``datasets`` (None for one without PatientID)."""
    out: set[PatientKey | None] = set()
    for dataset in datasets:
        patient_id = _text(dataset, PATIENT_ID_TAG)
        out.add(None if patient_id is None else PatientKey(patient_id, _text(dataset, ISSUER_TAG)))
    return frozenset(out)


class StudyPatients:
    """Whose study each (site, Study Instance UID) is, as the PACS last said: kept ``ttl``
    seconds, at most ``max_entries`` (least recently used dropped first). A study the PACS does
    not know is not kept (it may be stored the next second)."""

    def __init__(
        self,
        *,
        max_entries: int = 10_000,
        ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[tuple[str, str], tuple[float, frozenset[PatientKey | None]]]
        self._entries = OrderedDict()
        self.max_entries, self.ttl, self._clock = max_entries, ttl, clock
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, site_id: str, study_uid: str) -> frozenset[PatientKey | None] | None:
        key = (site_id, study_uid)
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, site_id: str, study_uid: str, patients: frozenset[PatientKey | None]) -> None:
        if not patients or self.ttl <= 0:
            return
        key = (site_id, study_uid)
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self.ttl, patients)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


Search = Callable[[QidoQuery], Awaitable[Sequence[Mapping[str, Any]]]]
D = TypeVar("D", bound=Mapping[str, Any])


@dataclass(frozen=True, slots=True, eq=False)
class PatientBinding:
    """The access of a token bound to ``patient`` (see the module docstring)."""

    patient: PatientKey
    studies: StudyPatients = field(default_factory=StudyPatients, repr=False)

    @property
    def resource_id(self) -> str:
        """The FHIR Patient id of the patient."""
        return patient_resource_id(self.patient.patient_id, self.patient.issuer)

    def is_patient(self, patient: PatientKey | tuple[str, str | None] | None) -> bool:
        """True if ``patient`` (a key, or PatientID and IssuerOfPatientID) is the patient."""
        if patient is None:
            return False
        patient_id, issuer = (
            (patient.patient_id, patient.issuer) if isinstance(patient, PatientKey) else patient
        )
        issuer = (issuer or "").strip(" ") or None
        return patient_id.strip(" ") == self.patient.patient_id and issuer == self.patient.issuer

    def allows(self, dataset: Mapping[str, Any]) -> bool:
        """True if ``dataset`` (DICOM JSON) is the patient's: exact PatientID and issuer."""
        patient_id = _text(dataset, PATIENT_ID_TAG)
        return patient_id is not None and self.is_patient((patient_id, _text(dataset, ISSUER_TAG)))

    def filter(self, datasets: Iterable[D]) -> list[D]:
        """The patient's datasets among ``datasets``."""
        return [d for d in datasets if self.allows(d)]

    # ---------------------------------------------------------------- narrowing QIDO

    def _key_for(self, path: tuple[int, ...], value: str | None) -> MatchKey:
        if value is None:
            return MatchKey(path, "LO", MatchKind.UNIVERSAL, "")
        # A comma would split the value upstream (PS3.18 8.3.4.1): sent as the wildcard "?";
        # "*" and "?" of the value match as wildcards. A superset: the answers are filtered.
        wire = value.replace(",", "?")
        kind = MatchKind.WILDCARD if re.search(r"[*?]", wire) else MatchKind.SINGLE
        return MatchKey(path, "LO", kind, wire)

    def _compatible(self, key: MatchKey, tag: str, value: str | None) -> bool:
        """True if a client's key on ``tag`` may match the patient's ``value``."""
        if key.kind is MatchKind.UNIVERSAL:
            return True
        if value is None:
            return False  # the patient has no issuer: any issuer asked is another patient's
        return key_matches({tag: {"vr": "LO", "Value": [value]}}, key)

    def narrow(self, query: QidoQuery) -> QidoQuery | None:
        """``query`` restricted to the patient; None if it cannot match any of the patient's
        datasets (a PatientID or issuer of someone else was asked): then nothing is asked."""
        keys: list[MatchKey] = []
        for key in query.keys:
            if key.path == _PATIENT_ID_PATH:
                if not self._compatible(key, PATIENT_ID_TAG, self.patient.patient_id):
                    return None
            elif key.path == _ISSUER_PATH:
                if not self._compatible(key, ISSUER_TAG, self.patient.issuer):
                    return None
            else:
                keys.append(key)
        keys.append(self._key_for(_PATIENT_ID_PATH, self.patient.patient_id))
        keys.append(self._key_for(_ISSUER_PATH, self.patient.issuer))
        return replace(query, keys=tuple(sorted(keys, key=lambda k: k.path)))

    def narrow_params(
        self, params: Sequence[tuple[str, str]], level: Level
    ) -> list[tuple[str, str]] | None:
        """:meth:`narrow` for QIDO parameters as the gateway's own queries are written (FHIR
        searches); None if they cannot match the patient."""
        query = parse_qido(
            params, level, max_limit=_INTERNAL_LIMIT, max_value_length=_INTERNAL_LENGTH
        )
        narrowed = self.narrow(query)
        if narrowed is None:
            return None
        return to_params(narrowed)

    # ---------------------------------------------------------------- studies

    async def allows_study(self, site_id: str, study_uid: str, search: Search) -> bool:
        """True if the study is the patient's, by the PACS's study-level answer for its UID
        (``search`` runs :func:`study_query` on the site), kept in :attr:`studies`."""
        patients = self.studies.get(site_id, study_uid)
        if patients is None:
            patients = patients_in(await search(study_query(study_uid)))
            self.studies.put(site_id, study_uid, patients)
        return bool(patients) and all(self.is_patient(p) for p in patients)
