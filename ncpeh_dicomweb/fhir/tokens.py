"""Tokens and patient identities for FHIR search (sans-I/O).

* The ``token`` value grammar and matching of FHIR R4 search
  (http://hl7.org/fhir/R4/search.html#token): ``system|code``, ``|code``, ``code``,
  ``system|``, with the escapes of R4 search #escaping (``\\,`` ``\\|`` ``\\$`` ``\\\\``).
* :class:`IssuerTable`: FHIR identifier systems ↔ DICOM Issuer of Patient ID (0010,0021).
* The id of the ``Patient`` resources the gateway serves, derived from PatientID + issuer
  (:func:`patient_resource_id`) and read back (:func:`parse_patient_resource_id`).

Decision, beyond FHIR: ``|code`` ("no system") is matched according to :class:`NoSystem`.
The NCPeH page searches ``patient.identifier=|456789123`` for a Czech patient whose identifier
has a system, and ``reasonCode=|90708001`` for a SNOMED CT code: read as R4 reads them, both
find nothing. So by default (``NoSystem.ANY``) ``|code`` matches the code whatever its system,
like ``code``; ``NoSystem.NONE`` gives R4's meaning (only codes and identifiers without one).
"""

from __future__ import annotations

import enum
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..dicomweb.uids import is_valid_uid
from ..errors import BadRequest

__all__ = [
    "IssuerTable",
    "NoSystem",
    "PatientKey",
    "Token",
    "escape",
    "is_digest_id",
    "is_fhir_id",
    "parse_patient_resource_id",
    "parse_token",
    "patient_resource_id",
    "split_or",
    "token_matches",
    "unescape",
]

Coding = tuple[str | None, str]  # (system, code) of one Coding or Identifier


class NoSystem(enum.Enum):
    """What ``|code`` matches (see the module docstring)."""

    ANY = "any"  # the code in any system, or in none: the NCPeH page's usage (default)
    NONE = "none"  # R4 search #token: only a Coding / Identifier without a system


@dataclass(frozen=True, slots=True)
class Token:
    """One token value. ``system``: None for any system (``code``), "" for none (``|code``).
    ``code``: None for any code (``system|``)."""

    system: str | None
    code: str | None

    def text(self) -> str:
        """The value as FHIR writes it, escaped (R4 search #escaping)."""
        code = "" if self.code is None else escape(self.code)
        return code if self.system is None else f"{escape(self.system)}|{code}"


_ESCAPABLE = frozenset(",|$\\")


def split_or(value: str) -> list[str]:
    """The values of a parameter, split at each comma not escaped (R4 search #combining).

    Escapes are kept for :func:`parse_token` / :func:`unescape`; empty values are dropped.
    """
    parts: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            current.append(char)
            current.append(next(chars, ""))
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [part for part in parts if part]


def unescape(value: str) -> str:
    """``\\,`` ``\\|`` ``\\$`` ``\\\\`` → the character; any other backslash is kept as is."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value) and value[i + 1] in _ESCAPABLE:
            out.append(value[i + 1])
            i += 2
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def escape(value: str) -> str:
    """The inverse of :func:`unescape`, for ``self`` links."""
    return "".join("\\" + c if c in _ESCAPABLE else c for c in value)


def _bar(value: str) -> int:
    """Index of the first ``|`` not escaped, or -1."""
    i = 0
    while i < len(value):
        if value[i] == "\\":
            i += 2
        elif value[i] == "|":
            return i
        else:
            i += 1
    return -1


def parse_token(value: str, parameter: str) -> Token:
    """One value of a token parameter in one of its four forms (R4 search #token).

    ``|`` alone, and a value with a second unescaped ``|``, are malformed: BadRequest naming
    ``parameter``.
    """
    bar = _bar(value)
    if bar < 0:
        return Token(None, unescape(value))
    system, code = value[:bar], value[bar + 1 :]
    if _bar(code) >= 0 or not (system or code):
        raise BadRequest(
            f"parameter {parameter!r}: {value[:80]!r} is not a token "
            "(system|code, |code, code or system|; a literal | is written \\|)",
            detail={"parameter": parameter, "value": value[:80]},
        )
    return Token(unescape(system), unescape(code) if code else None)


def token_matches(token: Token, codings: Iterable[Coding], no_system: NoSystem) -> bool:
    """True if one of ``codings`` matches ``token`` (R4 search #token). Codes and systems are
    compared exactly (case-sensitively): DICOM codes, SNOMED CT ids and UIDs have one spelling.
    """
    for system, code in codings:
        if token.code is not None and code != token.code:
            continue
        if token.system is None:
            return True
        if token.system == "":
            if no_system is NoSystem.ANY or system is None:
                return True
        elif system == token.system:
            return True
    return False


@dataclass(frozen=True, slots=True)
class PatientKey:
    """A patient as DICOM names one: PatientID (0010,0020) and IssuerOfPatientID (0010,0021),
    None when there is no issuer."""

    patient_id: str
    issuer: str | None = None


_OID_SYSTEM = "urn:oid:"


@dataclass(frozen=True, slots=True)
class IssuerTable:
    """FHIR identifier systems ↔ DICOM IssuerOfPatientID values, one to one (configuration:
    ``Settings.patient_id_issuers``).

    Beyond the table, an issuer that is itself an OID (PS3.5 9.1) has the system
    ``urn:oid:<issuer>`` (the FHIR R4 form of an OID, datatypes #oid), and back. An issuer
    neither in the table nor an OID gives an identifier without a system.
    """

    systems: Mapping[str, str] = field(default_factory=dict)  # FHIR system → DICOM issuer
    _issuers: Mapping[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        frozen = MappingProxyType(dict(self.systems))
        reverse = {issuer: system for system, issuer in frozen.items()}
        if len(reverse) != len(frozen) or "" in reverse or "" in frozen:
            raise ValueError("issuer table: each system and each issuer once, none empty")
        object.__setattr__(self, "systems", frozen)
        object.__setattr__(self, "_issuers", MappingProxyType(reverse))

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> IssuerTable:
        """From ``(system, issuer)`` pairs, as ``Settings.patient_id_issuers`` holds them."""
        return cls(dict(pairs))

    def system_for(self, issuer: str | None) -> str | None:
        """The FHIR ``Identifier.system`` of a patient identifier with this DICOM issuer."""
        if not issuer:
            return None
        known = self._issuers.get(issuer)
        if known is not None:
            return known
        return _OID_SYSTEM + issuer if is_valid_uid(issuer) and "." in issuer else None

    def issuer_for(self, system: str) -> str | None:
        """The DICOM IssuerOfPatientID of a FHIR identifier system, or None if there is none."""
        known = self.systems.get(system)
        if known is not None:
            return known
        oid = system.removeprefix(_OID_SYSTEM)
        if oid != system and self.system_for(oid) == system:
            return oid
        return None


# Patient resource ids (FHIR R4 datatypes #id: [A-Za-z0-9\-\.]{1,64}).
#   id      = enc(PatientID)                          no issuer
#           | enc(PatientID) "-." enc(Issuer)         with an issuer
#           | "-x" 62 lower-case hex digits           when the above is longer than 64
#   enc(s)  = each of A-Z a-z 0-9 "." kept; any other character as "-HH" per UTF-8 byte
#             (upper-case hex); the empty PatientID as "-".
# A "-" in enc output is always followed by two upper-case hex digits, so "-." marks the
# issuer and "-x" a digest, unambiguously. The digest (SHA-256 of PatientID "\" Issuer; LO
# values hold no backslash) cannot be read back: see parse_patient_resource_id.
_SAFE = re.compile(r"[A-Za-z0-9.]")
_ENCODED = re.compile(r"(?:[A-Za-z0-9.]|-[0-9A-F]{2})*")
_DIGEST = re.compile(r"-x[0-9a-f]{62}")
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_ISSUER_MARK = "-."


def _enc(text: str) -> str:
    if not text:
        return "-"
    return "".join(
        c if _SAFE.fullmatch(c) else "".join(f"-{b:02X}" for b in c.encode()) for c in text
    )


def _dec(text: str) -> str | None:
    if text == "-":
        return ""
    if not text or not _ENCODED.fullmatch(text):
        return None
    raw = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "-":
            raw.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(text[i].encode())
            i += 1
    try:
        decoded = raw.decode()
    except UnicodeDecodeError:
        return None
    return decoded if _enc(decoded) == text else None  # one spelling per patient


def patient_resource_id(patient_id: str, issuer: str | None) -> str:
    """The id of the Patient resource of ``PatientID`` + ``IssuerOfPatientID`` (see above).

    Stable (a function of the two values alone, not of configuration), readable for the
    usual cases (``456789123-.1.2.203.24341.1.2``), a valid FHIR id always.
    """
    text = _enc(patient_id) if not issuer else _enc(patient_id) + _ISSUER_MARK + _enc(issuer)
    if len(text) <= 64:
        return text
    digest = hashlib.sha256(f"{patient_id}\\{issuer or ''}".encode()).hexdigest()
    return "-x" + digest[:62]


def is_fhir_id(value: str) -> bool:
    """True if ``value`` is a valid FHIR id (R4 datatypes #id)."""
    return _FHIR_ID.fullmatch(value) is not None


def parse_patient_resource_id(resource_id: str) -> PatientKey | None:
    """The patient a :func:`patient_resource_id` names, or None if the id is a digest (only a
    store of ids served can resolve it) or not one of ours (it then names no patient)."""
    if _DIGEST.fullmatch(resource_id):
        return None
    head, mark, tail = resource_id.partition(_ISSUER_MARK)
    patient_id = _dec(head)
    if patient_id is None:
        return None
    if not mark:
        return PatientKey(patient_id)
    issuer = _dec(tail)
    if not issuer:  # an empty issuer is written without the mark
        return None
    return PatientKey(patient_id, issuer)


def is_digest_id(resource_id: str) -> bool:
    """True for the digest form of :func:`patient_resource_id` (an over-long identity)."""
    return _DIGEST.fullmatch(resource_id) is not None
