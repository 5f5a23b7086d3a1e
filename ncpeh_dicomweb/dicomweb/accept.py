"""Accept-header parsing and the one negotiation over a table of offers (sans-I/O).

RFC 9110 12.5.1 (Accept, quality values, specificity) applied to DICOMweb's media types and
their parameters (PS3.18 8.7.3.5: ``type``, ``transfer-syntax``). The per-resource offer
tables live in :mod:`.media`, which re-exports what is public here; the decisions taken are
written down in its docstring.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, TypeVar

from ..errors import BadRequest, NotAcceptable
from .transfer_syntaxes import TRANSFER_SYNTAXES

__all__ = [
    "MAX_RANGES",
    "MULTIPART_RELATED",
    "MediaRange",
    "Offer",
    "choose",
    "negotiate",
    "parse_accept",
]

MULTIPART_RELATED: Final = "multipart/related"

# --------------------------------------------------------------------------------------
# Accept parsing (RFC 9110 12.5.1)
# --------------------------------------------------------------------------------------

MAX_RANGES: Final = 128  # different elements of one Accept header (all its lines together)
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 9110 12.4.2 wants 0[.ddd] or 1[.000]; we also take ".5", "1.0000" and the like.
_QVALUE: Final = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


@dataclass(frozen=True, slots=True)
class MediaRange:
    """One element of an Accept header (RFC 9110 12.5.1).

    ``type`` and ``subtype`` are lower-cased and may be ``*``; ``params`` has lower-cased
    names and unquoted values (as sent, case kept) and never contains ``q``.
    """

    type: str
    subtype: str
    params: Mapping[str, str] = field(hash=False)
    q: float = 1.0

    @property
    def specificity(self) -> tuple[int, int, int]:
        """RFC 9110 12.5.1 precedence: concrete type, concrete subtype, parameter count."""
        return (self.type != "*", self.subtype != "*", len(self.params))

    def matches(self, type_: str, subtype: str) -> bool:
        """True if this range covers ``type_/subtype`` (both lower-case, concrete)."""
        return self.type in ("*", type_) and self.subtype in ("*", subtype)


_ANY: Final = MediaRange("*", "*", MappingProxyType({}), 1.0)


def _split_outside_quotes(text: str, sep: str) -> list[str]:
    """Split on ``sep`` except inside quoted strings (RFC 9110 5.6.4, with ``\\`` escapes)."""
    if '"' not in text:
        return text.split(sep)
    out: list[str] = []
    start = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == sep:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _parse_range(element: str) -> MediaRange | None:
    """Parse one Accept element; None if it cannot be understood."""
    pieces = _split_outside_quotes(element, ";")
    mtype = pieces[0].strip().lower()
    if mtype == "*":
        mtype = "*/*"
    type_, slash, subtype = mtype.partition("/")
    if (
        not slash
        or not _TOKEN.fullmatch(type_)
        or not _TOKEN.fullmatch(subtype)
        or (type_ == "*" and subtype != "*")
    ):
        return None
    params: dict[str, str] = {}
    q = 1.0
    seen_q = False
    for piece in pieces[1:]:
        name, eq, value = piece.partition("=")
        name = name.strip().lower()
        if not eq or not _TOKEN.fullmatch(name):
            continue  # empty ("a/b;;") or valueless parameter: ignore it
        value = _unquote(value.strip())
        if name == "q":
            if seen_q:
                continue
            seen_q = True
            if not _QVALUE.fullmatch(value) or not 0.0 <= (q := float(value)) <= 1.0:
                return None
        else:
            params.setdefault(name, value)
    return MediaRange(type_, subtype, MappingProxyType(params), q)


def _parse_in_order(header: str | None) -> list[MediaRange]:
    """Every parseable range, q=0 included, in header order; [*/*] for an absent or empty
    header. An element repeated word for word counts once (where it first appears). Raises
    BadRequest if the header has elements and none of them parses, or more than
    :data:`MAX_RANGES` different ones."""
    if header is None or not header.strip():
        return [_ANY]
    # Each range is matched against each offer (40 for a retrieve): 16 kB of "image/*,"
    # (1600 ranges) cost 80 ms of the event loop before repeats were dropped and this bound.
    elements = list(dict.fromkeys(e.strip() for e in _split_outside_quotes(header, ",")))
    elements = [e for e in elements if e]
    if len(elements) > MAX_RANGES:
        raise BadRequest(
            f"the Accept header lists more than {MAX_RANGES} media ranges",
            detail={"accept": header[:200]},
        )
    if not elements:  # only empty list elements (",  ,"), allowed by RFC 9110 5.6.1
        return [_ANY]
    ranges = [r for r in map(_parse_range, elements) if r is not None]
    if not ranges:
        raise BadRequest(
            "the Accept header could not be parsed (RFC 9110 12.5.1)",
            detail={"accept": header[:200]},
        )
    return ranges


def _preference_key(r: MediaRange) -> tuple[float, int, int, int]:
    """Sort key: highest ``q`` first, then the most specific (RFC 9110 12.5.1)."""
    concrete_type, concrete_subtype, nparams = r.specificity
    return (-r.q, -concrete_type, -concrete_subtype, -nparams)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Parse an Accept header (RFC 9110 12.5.1) into ranges, most preferred first.

    Sorted by ``q`` descending, then specificity (RFC 9110 12.5.1: concrete type, concrete
    subtype, more parameters), then header order. ``None`` or an empty header gives
    ``[*/*]``. Ranges with ``q=0`` are left out. Unparseable elements are skipped; if none
    parses at all, or there are more than :data:`MAX_RANGES` different elements,
    :class:`~ncpeh_dicomweb.errors.BadRequest` is raised.
    """
    return sorted((r for r in _parse_in_order(header) if r.q > 0), key=_preference_key)


# --------------------------------------------------------------------------------------
# Offers and the one negotiation (RFC 9110 12.5.1, PS3.18 8.7)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Offer:
    """One representation a resource can produce (an "available representation", RFC 9110
    12.5.1), as a row of the resource's table (PS3.18 8.7.5 lists them per resource).

    ``media_type``: concrete (``multipart/related``, ``image/jpeg``...); compared without
    regard to case (RFC 9110 8.3.1), so PS3.18's ``video/H265`` keeps its spelling.
    ``part_type``: for ``multipart/related``, the media type of every part (RFC 2387 ``type``
    parameter, PS3.18 8.7.3.5.1); a range's ``type`` parameter must then match it (wildcards
    allowed), a range without one matches any. ``transfer_syntax``: the value of the
    ``transfer-syntax`` parameter this row answers (a UID, or ``*`` for "as stored", PS3.18
    8.7.3.5.2); ``None`` when the parameter does not apply and is ignored. ``default``: a range
    *without* ``transfer-syntax`` also selects this row (its syntax is the media type's
    default). ``params``: other parameters the row has (``charset``); a range naming one must
    name the same value.
    """

    media_type: str
    part_type: str | None = None
    transfer_syntax: str | None = None
    default: bool = False
    params: tuple[tuple[str, str], ...] = ()

    @property
    def label(self) -> str:
        """The Accept value that asks for exactly this row."""
        out = _base_label(self.media_type, self.part_type)
        if self.transfer_syntax is not None:
            out += f"; transfer-syntax={self.transfer_syntax}"
        return out


def _base_label(media_type: str, part_type: str | None) -> str:
    return media_type if part_type is None else f'{media_type}; type="{part_type}"'


def _norm(name: str, value: str) -> str:
    v = value.strip().lower()
    return "utf-8" if name == "charset" and v == "utf8" else v


def _part_type_matches(wanted: str, part_type: str) -> bool:
    """``wanted`` (a range's ``type`` parameter, maybe a wildcard) covers ``part_type``."""
    w_type, slash, w_sub = wanted.strip().lower().partition("/")
    p_type, _, p_sub = part_type.lower().partition("/")  # RFC 9110 8.3.1: case-insensitive
    if not slash or (w_type == "*" and w_sub != "*"):
        return False
    return w_type in ("*", p_type) and w_sub in ("*", p_sub)


def _type_param(r: MediaRange) -> str | None:
    """The range's multipart ``type`` parameter; an empty one counts as absent."""
    value = r.params.get("type", "").strip()
    return value or None


def _covers(r: MediaRange, media_type: str) -> bool:
    type_, _, subtype = media_type.lower().partition("/")
    return r.matches(type_, subtype)


def _matches(r: MediaRange, offer: Offer) -> bool:
    if not _covers(r, offer.media_type):
        return False
    wanted = _type_param(r)
    if (
        offer.part_type is not None
        and wanted is not None
        and not _part_type_matches(wanted, offer.part_type)
    ):
        return False
    if offer.transfer_syntax is not None:
        ts = r.params.get("transfer-syntax")
        if ts is None:
            if not offer.default:
                return False
        elif ts.strip() != offer.transfer_syntax:
            return False
    return all(
        name not in r.params or _norm(name, r.params[name]) == _norm(name, value)
        for name, value in offer.params
    )


def negotiate(accept: str | None, offers: Sequence[Offer]) -> Offer:
    """Choose one of ``offers`` for an Accept header (RFC 9110 12.5.1; PS3.18 8.7).

    ``offers`` is the resource's table in the server's order of preference. Each offer takes
    the ``q`` of the most specific range that matches it (type, subtype, then parameter
    count; :func:`_matches` says what matching means for ``type``, ``transfer-syntax`` and
    other parameters); ``q=0`` there excludes it. The winner has the highest ``q``, then the
    most specific matching range, then the range the client listed first, then comes first
    in ``offers``. An absent or empty header is ``*/*``.

    Raises :class:`~ncpeh_dicomweb.errors.NotAcceptable` (406) whose message says why each
    range selected nothing and lists what is offered (``detail.supported`` has one Accept
    value per offer), and :class:`~ncpeh_dicomweb.errors.BadRequest` (400) if the header
    cannot be parsed at all.
    """
    if not offers:
        raise ValueError("negotiate() needs at least one offer")
    ranges = _parse_in_order(accept)
    best: tuple[tuple[float, int, int, int, int, int], Offer] | None = None
    excluded: list[Offer] = []
    for server_index, offer in enumerate(offers):
        matching = [(i, r) for i, r in enumerate(ranges) if _matches(r, offer)]
        if not matching:
            continue
        client_index, chosen_by = max(matching, key=lambda m: (m[1].specificity, m[1].q, -m[0]))
        if chosen_by.q <= 0:
            if any(r.q > 0 for _, r in matching):
                excluded.append(offer)
            continue
        key = (*_preference_key(chosen_by), client_index, server_index)
        if best is None or key < best[0]:
            best = (key, offer)
    if best is not None:
        return best[1]
    raise _not_acceptable(accept, ranges, offers, excluded)


_MAX_REASONS: Final = 8


def _not_acceptable(
    accept: str | None,
    ranges: Sequence[MediaRange],
    offers: Sequence[Offer],
    excluded: Sequence[Offer],
) -> NotAcceptable:
    positive = sorted((r for r in ranges if r.q > 0), key=_preference_key)
    reasons = [_why_not(r, offers) for r in positive if not any(_matches(r, o) for o in offers)]
    reasons += [f"{o.label} is excluded by q=0" for o in excluded]
    reasons = list(dict.fromkeys(reasons))
    if len(reasons) > _MAX_REASONS:
        reasons = [*reasons[:_MAX_REASONS], "..."]
    why = "; ".join(reasons) or "the Accept header excludes every media type"
    return NotAcceptable(
        f"no acceptable representation ({why}); acceptable: {_summary(offers)}",
        detail={"accept": (accept or "")[:200], "supported": [o.label for o in offers]},
    )


def _why_not(r: MediaRange, offers: Sequence[Offer]) -> str:
    """Why range ``r`` selects none of ``offers``: the first test that leaves none."""
    mtype = f"{r.type}/{r.subtype}"[:80]
    left = [o for o in offers if _covers(r, o.media_type)]
    if not left:
        if any((o.part_type or "").lower() == mtype for o in offers):
            return (
                f"single-part {mtype} is not offered for this resource;"
                f' {MULTIPART_RELATED}; type="{mtype}" is required'
            )
        return f"{mtype} is not offered for this resource"
    wanted = _type_param(r)
    if wanted is not None:
        left = [o for o in left if o.part_type is None or _part_type_matches(wanted, o.part_type)]
        if not left:
            return f'{mtype}; type="{wanted.lower()[:80]}" is not offered for this resource'
    ts = r.params.get("transfer-syntax")
    with_ts = [o for o in left if o.transfer_syntax is not None]
    if with_ts and len(with_ts) == len(left):
        left = [o for o in left if _matches_ts(ts, o)]
        if not left:
            return _why_not_syntax(ts, with_ts)
    for name, value in r.params.items():
        known = [v for o in left for n, v in o.params if n == name]
        if known and all(_norm(name, value) != _norm(name, v) for v in known):
            return f"{name} {value.strip().lower()[:40]} is not offered"
    return f"{mtype} is not offered for this resource"  # not reached with the tables here


def _matches_ts(ts: str | None, offer: Offer) -> bool:
    return offer.default if ts is None else ts.strip() == offer.transfer_syntax


def _why_not_syntax(ts: str | None, offers: Sequence[Offer]) -> str:
    if ts is None:
        base = _base_label(offers[0].media_type, offers[0].part_type)
        return f"{base} without a transfer-syntax parameter cannot be produced here"
    ts = ts.strip()
    info = TRANSFER_SYNTAXES.get(ts)
    if info is None:
        return f'transfer syntax "{ts[:64]}" is not supported'
    if not info.web:
        return f"transfer syntax {ts} ({info.name}) is not used with DICOMweb (PS3.18 8.7.3)"
    return f"transfer syntax {ts} ({info.name}) cannot be produced for this resource"


def _summary(offers: Sequence[Offer]) -> str:
    """What is offered, grouped by media type: ``A [transfer-syntax: X (default), *, Y] or B``;
    the default is what a range without ``transfer-syntax`` gets."""
    groups: dict[tuple[str, str | None], list[Offer]] = {}
    for o in offers:
        groups.setdefault((o.media_type, o.part_type), []).append(o)
    parts: list[str] = []
    for (media_type, part_type), group in groups.items():
        syntaxes = [
            f"{o.transfer_syntax} (default)" if o.default else o.transfer_syntax
            for o in group
            if o.transfer_syntax is not None
        ]
        label = _base_label(media_type, part_type)
        parts.append(f"{label} [transfer-syntax: {', '.join(syntaxes)}]" if syntaxes else label)
    return " or ".join(dict.fromkeys(parts))


_T = TypeVar("_T")


def choose(accept: str | None, table: Sequence[tuple[Offer, _T]]) -> _T:
    """:func:`negotiate` over a table of (offer, what choosing it means)."""
    offers = [offer for offer, _ in table]
    return table[offers.index(negotiate(accept, offers))][1]
