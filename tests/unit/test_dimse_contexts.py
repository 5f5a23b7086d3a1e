"""The presentation contexts of a C-GET, row by row: the planner (contexts.py: what the PACS
says a retrieve holds in, the contexts proposed out; PS3.4 C.4.3, PS3.7 D.3.3.4, PS3.8
9.3.2.2), the C-FIND that asks (operations.find_holdings, on a stand-in association), and the
pool handing out associations by plan (pool.AssociationPool, with associations faked)."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from types import MappingProxyType
from typing import Any

import pytest
from pydicom import Dataset
from pydicom.uid import UID
from pynetdicom import build_context

from ncpeh_dicomweb.backends.dimse.contexts import (
    ACCEPTED_SYNTAXES,
    FALLBACK_CLASSES,
    FIND_MODEL,
    GET_MODEL,
    IMAGE_SYNTAXES,
    KNOWN_STORAGE_CLASSES,
    MAX_CONTEXTS,
    MOVE_MODEL,
    NO_PIXELS_SYNTAXES,
    VERIFICATION,
    VIDEO_SYNTAXES,
    ContextPlan,
    Holdings,
    candidate_syntaxes,
    holdings_from_instances,
    holdings_from_study,
    instance_classes_query,
    plan_retrieve,
    query_plan,
    study_classes_query,
)
from ncpeh_dicomweb.backends.dimse.operations import find_holdings
from ncpeh_dicomweb.backends.dimse.pool import AssociationPool
from ncpeh_dicomweb.config import DimseSite
from ncpeh_dicomweb.errors import BackendError

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
BASIC_SR = "1.2.840.10008.5.1.4.1.1.88.11"
KOS = "1.2.840.10008.5.1.4.1.1.88.59"
ECG = "1.2.840.10008.5.1.4.1.1.9.1.1"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
RT_PLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RT_DOSE = "1.2.840.10008.5.1.4.1.1.481.2"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
PRIVATE = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image: not in pynetdicom's list

ELE, ILE, EBE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE, JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70"
JPEG_LS, J2K_LOSSLESS, J2K = (
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
)
RLE = "1.2.840.10008.1.2.5"

BASE = query_plan("c-get")


def _storage(plan: ContextPlan) -> list[tuple[str, tuple[str, ...]]]:
    return list(plan.contexts[len(BASE.contexts) :])


def _per_class(plan: ContextPlan) -> Counter[str]:
    return Counter(uid for uid, _ in _storage(plan))


def _alone(plan: ContextPlan, sop_class: str) -> set[str]:
    """The syntaxes with a context of their own for ``sop_class``."""
    return {s[0] for uid, s in _storage(plan) if uid == sop_class and len(s) == 1}


def _offered(plan: ContextPlan, sop_class: str) -> set[str]:
    return {t for uid, s in _storage(plan) if uid == sop_class for t in s}


# ---------------------------------------------------------------------- the tables


def test_every_syntax_is_one_pydicom_knows() -> None:
    """pynetdicom warns on a UID pydicom does not know as a transfer syntax."""
    for syntax in ACCEPTED_SYNTAXES:
        assert UID(syntax).is_transfer_syntax, syntax
    assert set(IMAGE_SYNTAXES) | set(VIDEO_SYNTAXES) | set(NO_PIXELS_SYNTAXES) == set(
        ACCEPTED_SYNTAXES
    )
    assert len(set(ACCEPTED_SYNTAXES)) == len(ACCEPTED_SYNTAXES)


def test_storage_scp_prefers_stored_syntaxes_to_uncompressed_ones() -> None:
    """pynetdicom accepts the first of the acceptor's syntaxes a requested context lists."""
    first_native = ACCEPTED_SYNTAXES.index(ELE)
    assert all(not UID(s).is_compressed for s in ACCEPTED_SYNTAXES[first_native:])
    assert all(UID(s).is_compressed for s in ACCEPTED_SYNTAXES[:first_native])


def test_known_classes_hold_the_fallback_and_pynetdicoms() -> None:
    assert set(FALLBACK_CLASSES) <= set(KNOWN_STORAGE_CLASSES)
    assert len(KNOWN_STORAGE_CLASSES) >= 150
    assert len(FALLBACK_CLASSES) == len(set(FALLBACK_CLASSES)) == 61


@pytest.mark.parametrize(
    ("sop_class", "syntaxes"),
    [
        (CT, IMAGE_SYNTAXES),
        (SEG, IMAGE_SYNTAXES),  # binary or fractional frames: may be RLE, J2K lossless
        (RT_DOSE, IMAGE_SYNTAXES),
        (PRIVATE, IMAGE_SYNTAXES),  # unknown: taken for an image, the safe side
        (BASIC_SR, NO_PIXELS_SYNTAXES),
        (KOS, NO_PIXELS_SYNTAXES),
        (ECG, NO_PIXELS_SYNTAXES),
        (PDF, NO_PIXELS_SYNTAXES),
        (GSPS, NO_PIXELS_SYNTAXES),
        (RT_PLAN, NO_PIXELS_SYNTAXES),
        (VIDEO_ENDOSCOPIC, VIDEO_SYNTAXES),
    ],
)
def test_candidate_syntaxes_by_kind(sop_class: str, syntaxes: tuple[str, ...]) -> None:
    assert candidate_syntaxes(sop_class) == syntaxes
    assert syntaxes[:2] == (ELE, ILE) or syntaxes is VIDEO_SYNTAXES


# ---------------------------------------------------------------------- the plans


def test_query_plan_has_echo_find_and_the_sites_retrieve() -> None:
    models = [uid for uid, _ in query_plan("c-get").contexts]
    assert models == [VERIFICATION, FIND_MODEL, GET_MODEL]
    assert [uid for uid, _ in query_plan("c-move").contexts] == [
        VERIFICATION,
        FIND_MODEL,
        MOVE_MODEL,
    ]
    assert query_plan("c-get").roles == ()


def test_one_class_gets_one_context_per_syntax() -> None:
    plan = plan_retrieve(Holdings((CT,)), BASE)
    assert plan.contexts[: len(BASE.contexts)] == BASE.contexts
    assert _storage(plan) == [(CT, (s,)) for s in IMAGE_SYNTAXES]
    assert plan.roles == (CT,)
    assert plan.left_out == ()


def test_a_study_of_images_reports_and_waveforms() -> None:
    """What a study really holds: each class, each candidate syntax alone; SCP of each."""
    classes = (CT, SEG, BASIC_SR, KOS, ECG, PDF, RT_PLAN)
    plan = plan_retrieve(Holdings(classes), BASE)
    assert plan.roles == classes
    for sop_class in classes:
        assert _alone(plan, sop_class) == set(candidate_syntaxes(sop_class)), sop_class
    assert len(plan.contexts) == 3 + 2 * len(IMAGE_SYNTAXES) + 5 * len(NO_PIXELS_SYNTAXES)
    assert len(plan.contexts) <= MAX_CONTEXTS


def test_named_syntaxes_first_and_explicit_little_endian_as_last_resort() -> None:
    """The PACS named every instance's syntax (0008,3002): those, plus ELE only."""
    held = Holdings(
        (CT, MR),
        MappingProxyType({CT: frozenset({J2K, JPEG_LS}), MR: frozenset({ELE})}),
    )
    plan = plan_retrieve(held, BASE)
    assert _storage(plan) == [
        (CT, (JPEG_LS,)),  # in the table's order of likelihood
        (CT, (J2K,)),
        (CT, (ELE,)),
        (MR, (ELE,)),
    ]


def test_some_instances_unnamed_keeps_every_candidate() -> None:
    held = Holdings((CT,), MappingProxyType({CT: frozenset({RLE})}), frozenset({CT}))
    plan = plan_retrieve(held, BASE)
    assert _storage(plan)[0] == (CT, (RLE,))
    assert _alone(plan, CT) == set(IMAGE_SYNTAXES)


def test_named_syntax_outside_the_tables_is_proposed_as_named() -> None:
    future = "1.2.840.10008.1.2.4.110"  # JPEG XL Lossless: pydicom 3.0 does not know it
    plan = plan_retrieve(Holdings((CT,), MappingProxyType({CT: frozenset({future})})), BASE)
    assert _storage(plan) == [(CT, (future,)), (CT, (ELE,))]


def test_class_outside_pynetdicoms_list_gets_contexts_and_a_role() -> None:
    plan = plan_retrieve(Holdings((PRIVATE, SC)), BASE)
    assert PRIVATE not in KNOWN_STORAGE_CLASSES
    assert plan.roles == (PRIVATE, SC)
    assert _alone(plan, PRIVATE) == set(IMAGE_SYNTAXES)
    build_context(PRIVATE, [ELE])  # pynetdicom takes it as an abstract syntax


def test_the_128_limit_shares_contexts_round_robin() -> None:
    """Ten image classes want 190 contexts: each gets 12 or 13 of the 125 left after the
    models, the likeliest syntaxes alone, the rest sharing the class's last context."""
    classes = tuple(f"1.2.826.0.1.3680043.8.498.1.{n}" for n in range(10))
    plan = plan_retrieve(Holdings(classes), BASE)
    assert len(plan.contexts) == MAX_CONTEXTS
    shares = _per_class(plan)
    assert set(shares.values()) == {12, 13}
    assert [shares[c] for c in classes] == [13] * 5 + [12] * 5  # the first classes first
    for sop_class in classes:
        offered = [s for uid, s in _storage(plan) if uid == sop_class]
        assert [s[0] for s in offered[:-1]] == list(IMAGE_SYNTAXES[: len(offered) - 1])
        assert offered[-1] == IMAGE_SYNTAXES[len(offered) - 1 :]  # the tail, together
        assert _offered(plan, sop_class) == set(IMAGE_SYNTAXES)  # nothing dropped


def test_small_classes_leave_room_for_large_ones() -> None:
    """Reports need four contexts; the images get what they leave."""
    reports = tuple(f"{BASIC_SR}.{n}" for n in range(25))  # 88.x: no pixel data
    images = (CT, MR)
    plan = plan_retrieve(Holdings(reports + images), BASE)
    assert len(plan.contexts) == MAX_CONTEXTS
    assert all(_alone(plan, r) == set(NO_PIXELS_SYNTAXES) for r in reports)
    assert (_per_class(plan)[CT], _per_class(plan)[MR]) == (13, 12)  # 128 - 3 - 25 x 4
    assert _offered(plan, CT) == _offered(plan, MR) == set(IMAGE_SYNTAXES)


def test_more_classes_than_contexts_leaves_the_last_out() -> None:
    classes = tuple(f"1.2.826.0.1.3680043.8.498.2.{n}" for n in range(130))
    plan = plan_retrieve(Holdings(classes), BASE)
    assert len(plan.contexts) == MAX_CONTEXTS
    assert plan.roles == classes[:125]
    assert plan.left_out == classes[125:]
    assert all(s == IMAGE_SYNTAXES for _, s in _storage(plan))  # one shared context each


def test_unknown_holdings_propose_the_fallback_classes() -> None:
    plan = plan_retrieve(None, BASE)
    assert plan.roles == FALLBACK_CLASSES
    assert len(plan.contexts) == MAX_CONTEXTS
    assert all(n >= 2 for n in _per_class(plan).values())
    for sop_class in FALLBACK_CLASSES:  # the likeliest syntax alone, each
        assert (sop_class, candidate_syntaxes(sop_class)[:1]) in plan.contexts
    assert plan_retrieve(Holdings(()), BASE) == plan


# ---------------------------------------------------------------------- covering, merging


def test_covers_and_merged() -> None:
    ct, mr = plan_retrieve(Holdings((CT,)), BASE), plan_retrieve(Holdings((MR,)), BASE)
    assert ct.covers(BASE) and ct.covers(ct) and not BASE.covers(ct) and not ct.covers(mr)
    both = ct.merged(mr)
    assert both is not None
    assert both.covers(ct) and both.covers(mr) and both.roles == (CT, MR)
    assert len(both.contexts) == 3 + 2 * len(IMAGE_SYNTAXES)
    assert BASE.merged(ct) == ContextPlan(ct.contexts, ct.roles)
    assert plan_retrieve(None, BASE).merged(ct) is None  # would pass 128


# ---------------------------------------------------------------------- queries and answers


def test_study_query_asks_sop_classes_in_study() -> None:
    identifier = study_classes_query("1.2.3")
    assert identifier.QueryRetrieveLevel == "STUDY"
    assert identifier.StudyInstanceUID == "1.2.3"
    assert "SOPClassesInStudy" in identifier and not identifier.SOPClassesInStudy


@pytest.mark.parametrize(
    ("series", "instance"), [(None, None), ("1.2.3.4", None), ("1.2.3.4", "1.2.3.4.5")]
)
def test_instance_query_keeps_upper_unique_keys(series: str | None, instance: str | None) -> None:
    identifier = instance_classes_query("1.2.3", series, instance)
    assert identifier.QueryRetrieveLevel == "IMAGE"
    assert identifier.StudyInstanceUID == "1.2.3"
    assert "SeriesInstanceUID" in identifier and (identifier.SeriesInstanceUID or None) == series
    assert (identifier.SOPInstanceUID or None) == instance
    for key in ("SOPClassUID", "AvailableTransferSyntaxUID"):
        assert key in identifier and not identifier[key].value


def _answer(**keys: object) -> Dataset:
    answer = Dataset()
    for key, value in keys.items():
        setattr(answer, key, value)
    return answer


@pytest.mark.parametrize(
    ("answers", "classes"),
    [
        ([_answer(SOPClassesInStudy=[CT, BASIC_SR])], (CT, BASIC_SR)),
        ([_answer(SOPClassesInStudy=CT)], (CT,)),
        ([_answer(SOPClassesInStudy=None)], None),  # the PACS does not keep it
        ([_answer(StudyInstanceUID="1.2.3")], None),
        ([], None),  # no such study
        ([_answer(SOPClassesInStudy=CT), _answer(SOPClassesInStudy=MR)], None),  # not one
    ],
)
def test_holdings_from_study(answers: list[Dataset], classes: tuple[str, ...] | None) -> None:
    held = holdings_from_study(answers)
    assert (held.classes if held is not None else None) == classes


def test_holdings_from_instances_fold_classes_and_named_syntaxes() -> None:
    held = holdings_from_instances(
        [
            _answer(SOPClassUID=CT, AvailableTransferSyntaxUID=J2K),
            _answer(SOPClassUID=SEG, AvailableTransferSyntaxUID=None),
            _answer(SOPClassUID=CT, AvailableTransferSyntaxUID=[JPEG_LS, J2K]),
            _answer(SOPClassUID=ECG),
        ]
    )
    assert held is not None
    assert held.classes == (CT, SEG, ECG)
    assert dict(held.syntaxes) == {CT: frozenset({J2K, JPEG_LS})}
    assert held.unnamed == frozenset({SEG, ECG})


@pytest.mark.parametrize(
    "answers",
    [
        [],
        [_answer(SOPInstanceUID="1.2.3")],  # no SOP Class UID returned (dcmqrscp)
        [_answer(SOPClassUID=CT), _answer(SOPClassUID=None)],
    ],
    ids=["none", "no-class", "one-without-class"],
)
def test_holdings_from_instances_unknown(answers: list[Dataset]) -> None:
    assert holdings_from_instances(answers) is None


# ---------------------------------------------------------------------- asking the PACS


class _FindAssoc:
    """A stand-in association answering C-FINDs from a script: per query level, the answers
    (datasets) then the final status; it records the identifiers and C-CANCELs."""

    def __init__(self, script: dict[str, tuple[list[Dataset], int]]) -> None:
        self.script = script
        self.asked: list[Dataset] = []
        self.cancelled = 0
        self.dimse_timeout: float | None = None

    def send_c_find(self, identifier: Dataset, model: str, msg_id: int) -> Iterator[Any]:
        assert model == FIND_MODEL
        self.asked.append(identifier)
        answers, final = self.script[identifier.QueryRetrieveLevel]
        for answer in answers:
            yield _status(0xFF00), answer
            if self.cancelled:
                yield _status(0xFE00), None
                return
        yield _status(final), None

    def send_c_cancel(self, msg_id: int, query_model: str) -> None:
        self.cancelled += 1


def _status(code: int) -> Dataset:
    status = Dataset()
    status.Status = code
    return status


def _holdings(
    assoc: _FindAssoc, series: str | None = None, instance: str | None = None
) -> Holdings | None:
    return find_holdings(assoc, "1.2.3", series, instance, 7, 5.0)  # type: ignore[arg-type]


def test_study_answered_by_sop_classes_in_study() -> None:
    assoc = _FindAssoc({"STUDY": ([_answer(SOPClassesInStudy=[CT, KOS])], 0x0000)})
    held = _holdings(assoc)
    assert held is not None and held.classes == (CT, KOS)
    assert [a.QueryRetrieveLevel for a in assoc.asked] == ["STUDY"]
    assert assoc.dimse_timeout == 5.0


def test_study_without_sop_classes_in_study_asks_its_instances() -> None:
    assoc = _FindAssoc(
        {
            "STUDY": ([_answer(StudyInstanceUID="1.2.3")], 0x0000),
            "IMAGE": ([_answer(SOPClassUID=CT, AvailableTransferSyntaxUID=J2K)], 0x0000),
        }
    )
    held = _holdings(assoc)
    assert (
        held is not None and held.classes == (CT,) and dict(held.syntaxes) == {CT: frozenset({J2K})}
    )
    assert [a.QueryRetrieveLevel for a in assoc.asked] == ["STUDY", "IMAGE"]


def test_unknown_study_is_not_asked_further() -> None:
    assoc = _FindAssoc({"STUDY": ([], 0x0000)})
    assert _holdings(assoc) is None
    assert len(assoc.asked) == 1


def test_series_and_instance_ask_their_instances() -> None:
    assoc = _FindAssoc({"IMAGE": ([_answer(SOPClassUID=ECG)], 0x0000)})
    held = _holdings(assoc, "1.2.3.4", "1.2.3.4.5")
    assert held is not None and held.classes == (ECG,)
    asked = assoc.asked[0]
    assert (asked.QueryRetrieveLevel, asked.SeriesInstanceUID, asked.SOPInstanceUID) == (
        "IMAGE",
        "1.2.3.4",
        "1.2.3.4.5",
    )


def test_instances_without_sop_class_are_cancelled_at_the_first() -> None:
    """dcmqrscp does not return SOP Class UID: no use reading the other 499 answers."""
    answers = [_answer(SOPInstanceUID=f"1.2.3.{n}") for n in range(500)]
    assoc = _FindAssoc({"IMAGE": (answers, 0x0000)})
    assert _holdings(assoc, "1.2.3.4") is None
    assert assoc.cancelled == 1


@pytest.mark.parametrize("final", [0xC000, 0xA900, 0xC311])
def test_failure_status_is_not_knowing(final: int) -> None:
    """A PACS that fails the query: the retrieve is planned without knowing, not failed."""
    assoc = _FindAssoc({"IMAGE": ([_answer(SOPClassUID=CT)], final)})
    assert _holdings(assoc, "1.2.3.4") is None


def test_warning_status_keeps_the_answers() -> None:
    assoc = _FindAssoc({"IMAGE": ([_answer(SOPClassUID=CT)], 0xB001)})
    held = _holdings(assoc, "1.2.3.4")
    assert held is not None and held.classes == (CT,)


def test_no_answer_at_all_raises() -> None:
    """An aborted association (pynetdicom yields an empty status) is not a PACS's answer."""

    class _Aborted(_FindAssoc):
        def send_c_find(self, identifier: Dataset, model: str, msg_id: int) -> Iterator[Any]:
            yield Dataset(), None

    with pytest.raises(BackendError):
        _holdings(_Aborted({}), "1.2.3.4")


# ---------------------------------------------------------------------- associations per plan


class _FakeAssoc:
    def __init__(self, plan: ContextPlan) -> None:
        self.plan = plan
        self.is_established = True
        self.released = threading.Event()

    def release(self) -> None:
        self.is_established = False
        self.released.set()


def _pool(
    max_associations: int = 4, idle_release_seconds: float = 5.0
) -> tuple[AssociationPool, list[_FakeAssoc]]:
    site = DimseSite(
        id="t",
        host="127.0.0.1",
        port=104,
        called_aet="PACS",
        max_associations=max_associations,
        idle_release_seconds=idle_release_seconds,
    )
    pool = AssociationPool(site)
    opened: list[_FakeAssoc] = []

    def fake_open(plan: ContextPlan) -> _FakeAssoc:
        opened.append(_FakeAssoc(plan))
        return opened[-1]

    pool._open = fake_open  # type: ignore[assignment,method-assign]
    return pool, opened


async def _lease(pool: AssociationPool, plan: ContextPlan | None = None) -> Any:
    async with pool.lease(plan=plan) as assoc:
        return assoc


async def test_an_association_serves_every_plan_it_covers() -> None:
    pool, opened = _pool()
    ct = plan_retrieve(Holdings((CT,)), pool.query_plan)
    first = await _lease(pool, ct)
    assert await _lease(pool) is first  # a C-FIND on the C-GET's association
    assert await _lease(pool, ct) is first
    assert len(opened) == 1
    await pool.close()


async def test_a_new_plan_takes_in_the_idle_one_and_lets_it_go() -> None:
    """Plans converge: the new association serves both studies' classes."""
    pool, opened = _pool()
    query = await _lease(pool)  # the pre-retrieve C-FIND's association
    ct = plan_retrieve(Holdings((CT,)), pool.query_plan)
    mr = plan_retrieve(Holdings((MR,)), pool.query_plan)
    for_ct = await _lease(pool, ct)
    assert for_ct is not query and query.released.wait(2)
    for_mr = await _lease(pool, mr)
    assert for_mr.plan.covers(ct) and for_mr.plan.covers(mr)
    assert for_ct.released.wait(2)
    assert await _lease(pool, ct) is for_mr
    assert len(opened) == 3
    await pool.close()


async def test_plans_too_large_to_merge_live_side_by_side_within_the_limit() -> None:
    pool, _ = _pool(max_associations=2)
    broad = await _lease(pool, plan_retrieve(None, pool.query_plan))  # 128 contexts
    ct = await _lease(pool, plan_retrieve(Holdings((CT,)), pool.query_plan))
    assert ct.plan.contexts == plan_retrieve(Holdings((CT,)), pool.query_plan).contexts
    assert not broad.released.is_set()  # 2 open: within max_associations
    mr = await _lease(pool, plan_retrieve(Holdings((MR,)), pool.query_plan))
    assert mr.plan.covers(ct.plan) and ct.released.wait(2)  # merged with the recent one
    assert not broad.released.is_set()
    await pool.close()


async def test_open_associations_never_outnumber_the_limit() -> None:
    pool, _ = _pool(max_associations=1)
    broad = await _lease(pool, plan_retrieve(None, pool.query_plan))
    await _lease(pool, plan_retrieve(Holdings((CT,)), pool.query_plan))
    assert broad.released.wait(2)  # the oldest idle one goes
    await pool.close()


async def test_an_association_idle_too_long_is_released() -> None:
    """pynetdicom's idle associations poll (~8 % of a core each): not kept for nothing."""
    pool, opened = _pool(idle_release_seconds=0.3)
    first = await _lease(pool)
    await asyncio.sleep(0.2)
    assert await _lease(pool) is first  # reused within the time: its clock starts again
    await asyncio.sleep(0.2)
    assert not first.released.is_set() and pool.open_associations == 1
    await asyncio.sleep(0.3)
    assert first.released.wait(2) and pool.open_associations == 0
    again = await _lease(pool)  # the next operation opens a new one
    assert again is not first and len(opened) == 2
    await pool.close()
