"""IHE IOCM rejection notes: what a note hides, QIDO answers without it (backends/
rejection_index.py), and the backend wrapper that keeps the index (backends/rejections.py),
over a fake PACS that counts what it is asked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from ncpeh_dicomweb.backends.base import (
    DicomJson,
    PartHead,
    RetrieveEvent,
    Scope,
    SearchResult,
    Target,
)
from ncpeh_dicomweb.backends.rejection_index import (
    MAX_WIDE,
    Hidden,
    Listed,
    RejectionIndex,
    adjust_series_row,
    adjust_study_row,
    cut,
    documents_of,
    drop_hidden,
    ko_series_rows,
    listed,
    note_hides,
    retrieve_plan,
    widen,
    without_hidden_uids,
)
from ncpeh_dicomweb.backends.rejections import RejectionFilter, rejected_study
from ncpeh_dicomweb.dicomweb.attributes import Level
from ncpeh_dicomweb.dicomweb.query import MatchKey, MatchKind, QidoQuery
from ncpeh_dicomweb.errors import BackendError, BackendUnreachable, NotFound

KOS = "1.2.840.10008.5.1.4.1.1.88.59"
CT = "1.2.840.10008.5.1.4.1.1.2"
ST, ST2 = "1.2.3.1", "1.2.3.2"
SA, SB, SK = "1.2.3.1.1", "1.2.3.1.2", "1.2.3.1.9"  # series A, B, the KO series
A1, A2, B1, NOTE = "1.2.3.1.1.1", "1.2.3.1.1.2", "1.2.3.1.2.1", "1.2.3.1.9.1"


def _ui(value: str) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]}


def _note(
    sop: str = NOTE,
    refs: Sequence[tuple[str, str, str]] = ((ST, SA, A1), (ST, SB, B1)),
    code: str = "113001",
    study: str = ST,
    series: str = SK,
) -> DicomJson:
    """A KOS's DICOM JSON naming ``refs`` (study, series, sop) in its evidence."""
    evidence: dict[str, dict[str, list[str]]] = {}
    for ref_study, ref_series, ref_sop in refs:
        evidence.setdefault(ref_study, {}).setdefault(ref_series, []).append(ref_sop)
    return {
        "00080016": _ui(KOS),
        "00080018": _ui(sop),
        "0020000D": _ui(study),
        "0020000E": _ui(series),
        "00080060": {"vr": "CS", "Value": ["KO"]},
        "0040A043": {
            "vr": "SQ",
            "Value": [
                {
                    "00080100": {"vr": "SH", "Value": [code]},
                    "00080102": {"vr": "SH", "Value": ["DCM"]},
                    "00080104": {"vr": "LO", "Value": ["Rejected"]},
                }
            ],
        },
        "0040A375": {
            "vr": "SQ",
            "Value": [
                {
                    "0020000D": _ui(s),
                    "00081115": {
                        "vr": "SQ",
                        "Value": [
                            {
                                "0020000E": _ui(se),
                                "00081199": {
                                    "vr": "SQ",
                                    "Value": [
                                        {"00081150": _ui(CT), "00081155": _ui(u)} for u in sops
                                    ],
                                },
                            }
                            for se, sops in by_series.items()
                        ],
                    },
                }
                for s, by_series in evidence.items()
            ],
        },
    }


def _index(*sops: tuple[str, str, str]) -> RejectionIndex:
    return RejectionIndex(Hidden(*s) for s in sops)


INDEX = _index((ST, SA, A1), (ST, SB, B1), (ST, SK, NOTE))


# ---------------------------------------------------------------------- what a note hides


def test_a_note_hides_what_it_names_and_itself() -> None:
    assert set(note_hides(_note())) == {
        Hidden(ST, SA, A1),
        Hidden(ST, SB, B1),
        Hidden(ST, SK, NOTE),
    }


@pytest.mark.parametrize("code", ["113001", "113037", "113038", "113039"])
def test_every_rejection_title(code: str) -> None:
    assert Hidden(ST, SA, A1) in note_hides(_note(code=code))


def test_another_kos_hides_nothing() -> None:
    assert note_hides(_note(code="113000")) == []
    for odd in ({}, {"00080016": _ui(KOS)}, {"0040A375": "x"}):
        assert note_hides(odd) == []


def test_a_note_naming_another_study_hides_there_too() -> None:
    hidden = note_hides(_note(refs=[(ST, SA, A1), (ST2, "1.2.3.2.1", "1.2.3.2.1.1")]))
    assert Hidden(ST2, "1.2.3.2.1", "1.2.3.2.1.1") in hidden and Hidden(ST, SA, A1) in hidden


def test_documents_of_a_ko_series() -> None:
    other = _note(sop="1.2.3.1.9.2", code="113000")
    assert documents_of([_note(), other, {"x": 1}]) == {
        NOTE: tuple(note_hides(_note())),
        "1.2.3.1.9.2": (),
    }


def test_ko_series_rows() -> None:
    rows = [
        {"0020000D": _ui(ST), "0020000E": _ui(SK), "00201209": {"vr": "IS", "Value": ["2"]}},
        {"0020000D": _ui(ST), "0020000E": _ui("1.2.3.1.8")},
        {"0020000E": _ui("1.2.3.1.7")},  # no study: not usable
    ]
    assert ko_series_rows(rows) == [(ST, SK, 2), (ST, "1.2.3.1.8", None)]


# ---------------------------------------------------------------------- the index


def test_index_lookups() -> None:
    assert INDEX.hides(A1) and INDEX.hides(NOTE) and not INDEX.hides(A2)
    assert not INDEX.hides(None)
    assert INDEX.touches(ST) and INDEX.touches(ST, SB) and not INDEX.touches(ST, "1.9")
    assert not INDEX.touches(ST2)
    assert INDEX.touches_target(Target(ST, SA, A1)) and not INDEX.touches_target(Target(ST, SA, A2))
    assert INDEX.study_of_series(SB) == ST and INDEX.study_of_series("9.9") is None
    assert len(INDEX) == 3 and not INDEX.empty and RejectionIndex().empty


def test_droppable_rows() -> None:
    assert INDEX.droppable(Level.STUDY, Scope()) == 1
    assert INDEX.droppable(Level.STUDY, Scope(), [ST2]) == 0
    assert INDEX.droppable(Level.SERIES, Scope()) == 3
    assert INDEX.droppable(Level.SERIES, Scope(ST2)) == 0
    assert INDEX.droppable(Level.INSTANCE, Scope()) == 3
    assert INDEX.droppable(Level.INSTANCE, Scope(ST, SA)) == 1
    assert INDEX.droppable(Level.INSTANCE, Scope(ST, "9.9")) == 0


# ---------------------------------------------------------------------- QIDO answers


def _sop_key(value: str) -> MatchKey:
    kind = MatchKind.UID_LIST if "\\" in value else MatchKind.SINGLE
    return MatchKey((0x00080018,), "UI", kind, value)


def test_hidden_uids_are_taken_out_of_a_query() -> None:
    query = QidoQuery(Level.INSTANCE, keys=(_sop_key(A1),))
    assert without_hidden_uids(query, INDEX) is None
    query = QidoQuery(Level.STUDY, keys=(_sop_key(f"{A1}\\{A2}"),))
    narrowed = without_hidden_uids(query, INDEX)
    assert narrowed is not None and narrowed.keys == (_sop_key(A2),)
    untouched = QidoQuery(Level.INSTANCE, keys=(_sop_key(A2),))
    assert without_hidden_uids(untouched, INDEX) is untouched


def _rows(*sops: str) -> list[DicomJson]:
    return [{"00080018": _ui(s)} for s in sops]


def test_widened_pages_are_exact() -> None:
    everything = [A1, A2, B1, "1.2.3.1.2.2", "1.2.3.1.2.3", NOTE, "1.2.3.1.2.4"]
    visible = [s for s in everything if not INDEX.hides(s)]
    for offset in range(5):
        for limit in (1, 2, 3):
            asked = QidoQuery(Level.INSTANCE, limit=limit, offset=offset)
            sent = widen(asked, 3)
            assert sent.offset == 0 and sent.limit == offset + limit + 3
            answer = everything[sent.offset : sent.offset + (sent.limit or 0)]
            page = cut(drop_hidden(_rows(*answer), INDEX), asked, sent)
            assert [r["00080018"]["Value"][0] for r in page] == visible[offset : offset + limit]


def test_widening_beyond_the_bound_keeps_the_offset() -> None:
    asked = QidoQuery(Level.INSTANCE, limit=100, offset=MAX_WIDE)
    sent = widen(asked, 7)
    assert (sent.offset, sent.limit) == (MAX_WIDE, 107)
    assert len(cut(_rows(*(f"1.9.{i}" for i in range(107))), asked, sent)) == 100
    assert widen(QidoQuery(Level.INSTANCE, limit=0), 3).limit == 0
    unlimited = widen(QidoQuery(Level.INSTANCE, offset=2), 3)
    assert (unlimited.offset, unlimited.limit) == (0, None)
    assert cut(_rows("1.1", "1.2", "1.3"), QidoQuery(Level.INSTANCE, offset=2), unlimited) == [
        {"00080018": _ui("1.3")}
    ]


LISTING = [
    Listed(SA, A1, "CT"),
    Listed(SA, A2, "CT"),
    Listed(SB, B1, "CT"),
    Listed(SK, NOTE, "KO"),
    Listed("1.2.3.1.3", "1.2.3.1.3.1", "MR"),
]


def test_series_rows() -> None:
    row = {"0020000E": _ui(SA), "00201209": {"vr": "IS", "Value": [2]}}
    assert adjust_series_row(row, ST, LISTING, INDEX) == {
        "0020000E": _ui(SA),
        "00201209": {"vr": "IS", "Value": [1]},
    }
    as_text = {"0020000E": _ui(SA), "00201209": {"vr": "IS", "Value": ["2"]}}
    assert adjust_series_row(as_text, ST, LISTING, INDEX)["00201209"]["Value"] == ["1"]  # type: ignore[index]
    assert adjust_series_row({"0020000E": _ui(SB)}, ST, LISTING, INDEX) is None
    assert adjust_series_row({"0020000E": _ui(SK)}, ST, LISTING, INDEX) is None
    untouched = {"0020000E": _ui("1.2.3.1.3")}
    assert adjust_series_row(untouched, ST, LISTING, INDEX) is untouched


def _study_row(modalities: list[str]) -> DicomJson:
    return {
        "0020000D": _ui(ST),
        "00201206": {"vr": "IS", "Value": [4]},
        "00201208": {"vr": "IS", "Value": [5]},
        "00080061": {"vr": "CS", "Value": modalities},
    }


def test_study_rows() -> None:
    query = QidoQuery(Level.STUDY)
    row = adjust_study_row(_study_row(["CT", "KO", "MR"]), LISTING, INDEX, query)
    assert row is not None
    assert row["00201208"]["Value"] == [2] and row["00201206"]["Value"] == [2]
    assert row["00080061"]["Value"] == ["CT", "MR"]
    everything = _index(*((ST, i.series, i.sop) for i in LISTING))
    assert adjust_study_row(_study_row(["CT"]), LISTING, everything, query) is None
    ko_only = replace(query, keys=(MatchKey((0x00080061,), "CS", MatchKind.SINGLE, "KO"),))
    assert adjust_study_row(_study_row(["CT", "KO", "MR"]), LISTING, INDEX, ko_only) is None
    mr = replace(query, keys=(MatchKey((0x00080061,), "CS", MatchKind.WILDCARD, "M*"),))
    assert adjust_study_row(_study_row(["CT", "KO", "MR"]), LISTING, INDEX, mr) is not None
    unknown = [replace(i, modality=None) for i in LISTING]
    row = adjust_study_row(_study_row(["CT", "KO", "MR"]), unknown, INDEX, query)
    assert row is not None and row["00080061"]["Value"] == ["CT", "KO", "MR"]  # cannot tell


def test_listed_instances() -> None:
    rows: list[DicomJson] = [
        {"00080018": _ui(A1), "00080060": {"vr": "CS", "Value": ["CT"]}},
        {"x": 1},
    ]
    assert listed(rows, SA) == [Listed(SA, A1, "CT")]


def test_retrieve_plans() -> None:
    plan = retrieve_plan(Target(ST), LISTING, INDEX)
    assert plan == [Target(ST, SA, A2), Target(ST, "1.2.3.1.3")]
    assert retrieve_plan(Target(ST, SB), LISTING, INDEX) == []
    assert retrieve_plan(Target(ST, SA), LISTING, INDEX) == [Target(ST, SA, A2)]


# ---------------------------------------------------------------------- the wrapper


@dataclass
class Instance:
    study: str
    series: str
    sop: str
    modality: str
    metadata: DicomJson = field(default_factory=dict)


@dataclass
class FakePacs:
    """A Backend over a list of instances; ``calls`` records what it was asked."""

    instances: list[Instance]
    calls: list[str] = field(default_factory=list)
    fail: Exception | None = None
    fail_level: Level | None = None  # fail searches of this level only (None: all)
    gate: asyncio.Event | None = None

    async def search(self, query: QidoQuery, scope: Scope, base_url: str) -> SearchResult:
        self.calls.append(f"search {query.level.value}")
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None and self.fail_level in (None, query.level):
            raise self.fail
        found = [
            i
            for i in self.instances
            if scope.study in (None, i.study) and scope.series in (None, i.series)
        ]
        for key in query.keys:
            value = key.value.split("\\")
            attribute = {0x00080060: "modality", 0x0020000D: "study", 0x00080018: "sop"}
            found = [i for i in found if getattr(i, attribute[key.path[0]]) in value]
        rows: list[DicomJson] = []
        if query.level is Level.INSTANCE:
            rows = [
                {
                    "0020000D": _ui(i.study),
                    "0020000E": _ui(i.series),
                    "00080018": _ui(i.sop),
                    "00080060": {"vr": "CS", "Value": [i.modality]},
                }
                for i in found
            ]
        else:
            tag = "0020000E" if query.level is Level.SERIES else "0020000D"
            groups: dict[str, list[Instance]] = {}
            for i in found:
                groups.setdefault(i.series if query.level is Level.SERIES else i.study, []).append(
                    i
                )
            for uid, members in groups.items():
                row = {"0020000D": _ui(members[0].study), tag: _ui(uid)}
                count = "00201209" if query.level is Level.SERIES else "00201208"
                row[count] = {"vr": "IS", "Value": [len(members)]}
                if query.level is Level.STUDY:
                    row["00080061"] = {
                        "vr": "CS",
                        "Value": sorted({m.modality for m in members}),
                    }
                rows.append(row)
        end = None if query.limit is None else query.offset + query.limit
        return SearchResult(rows[query.offset : end])

    def _of(self, target: Target) -> list[Instance]:
        return [
            i
            for i in self.instances
            if i.study == target.study
            and target.series in (None, i.series)
            and target.instance in (None, i.sop)
        ]

    async def metadata(self, target: Target, base_url: str) -> list[DicomJson]:
        self.calls.append(f"metadata {target.path()}")
        found = self._of(target)
        if not found:
            raise NotFound("no such thing")
        return [i.metadata or {"00080018": _ui(i.sop)} for i in found]

    async def retrieve(self, target: Target, base_url: str) -> AsyncGenerator[RetrieveEvent, None]:
        self.calls.append(f"retrieve {target.path()}")
        found = self._of(target)
        if not found:
            raise NotFound("no such thing")
        for i in found:
            yield PartHead({"content-location": i.sop})
            yield i.sop.encode()

    def pacs_frames(
        self, target: Target, numbers: Sequence[int], base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None] | None:
        return self.retrieve(target, base_url)

    def instance_file(self, target: Target) -> AbstractAsyncContextManager[Path]:
        @asynccontextmanager
        async def opened() -> AsyncIterator[Path]:
            self.calls.append(f"file {target.path()}")
            yield Path("/dev/null")

        return opened()

    async def ping(self) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"calls": len(self.calls)}

    async def close(self) -> None:
        pass


def _pacs() -> FakePacs:
    return FakePacs(
        [
            Instance(ST, SA, A1, "CT"),
            Instance(ST, SA, A2, "CT"),
            Instance(ST, SB, B1, "CT"),
            Instance(ST, SK, NOTE, "KO", _note()),
            Instance(ST2, "1.2.3.2.1", "1.2.3.2.1.1", "MR"),
        ]
    )


def _sops(result: SearchResult) -> list[str]:
    return [r["00080018"]["Value"][0] for r in result.datasets]


async def _parts(events: AsyncGenerator[RetrieveEvent, None]) -> list[str]:
    return [e.decode() async for e in events if isinstance(e, bytes)]


async def test_searches_leave_out_what_notes_hide() -> None:
    pacs = _pacs()
    iocm = RejectionFilter(pacs)
    instances = await iocm.search(QidoQuery(Level.INSTANCE), Scope(), "")
    assert _sops(instances) == [A2, "1.2.3.2.1.1"]
    series = await iocm.search(QidoQuery(Level.SERIES), Scope(ST), "")
    assert [r["0020000E"]["Value"][0] for r in series.datasets] == [SA]
    assert series.datasets[0]["00201209"]["Value"] == [1]
    (study, other) = (await iocm.search(QidoQuery(Level.STUDY), Scope(), "")).datasets
    assert study["00201208"]["Value"] == [1] and study["00080061"]["Value"] == ["CT"]
    assert other["00201208"]["Value"] == [1]
    paged = await iocm.search(QidoQuery(Level.INSTANCE, limit=1, offset=1), Scope(), "")
    assert _sops(paged) == ["1.2.3.2.1.1"]
    assert iocm.stats()["iocm_hidden_instances"] == 3


async def test_a_warm_index_costs_the_pacs_nothing() -> None:
    pacs = _pacs()
    iocm = RejectionFilter(pacs, refresh_seconds=3600)
    await iocm.search(QidoQuery(Level.STUDY), Scope(ST2), "")
    assert pacs.calls == [
        "search series",
        "metadata studies/1.2.3.1/series/1.2.3.1.9",
        "search study",
    ]
    pacs.calls.clear()
    await iocm.search(QidoQuery(Level.STUDY, keys=(_study_key(ST2),)), Scope(), "")
    await iocm.metadata(Target(ST2), "")
    await _parts(iocm.retrieve(Target(ST2), ""))
    async with iocm.instance_file(Target(ST2, "1.2.3.2.1", "1.2.3.2.1.1")):
        pass
    assert pacs.calls == [
        "search study",
        "metadata studies/1.2.3.2",
        "retrieve studies/1.2.3.2",
        "file studies/1.2.3.2/series/1.2.3.2.1/instances/1.2.3.2.1.1",
    ]


def _study_key(uid: str) -> MatchKey:
    return MatchKey((0x0020000D,), "UI", MatchKind.SINGLE, uid)


async def test_an_interval_of_zero_reads_the_notes_every_time_but_each_ko_series_once() -> None:
    pacs = _pacs()
    iocm = RejectionFilter(pacs, refresh_seconds=0)
    for _ in range(3):
        await iocm.search(QidoQuery(Level.STUDY), Scope(ST2), "")
    assert pacs.calls.count("search series") == 3
    assert sum(c.startswith("metadata") for c in pacs.calls) == 1
    # A second note in the same KO series: its count changes, only the new one is read.
    second = Instance(ST, SK, "1.2.3.1.9.2", "KO", _note("1.2.3.1.9.2", [(ST, SA, A2)]))
    pacs.instances.append(second)
    pacs.calls.clear()
    result = await iocm.search(QidoQuery(Level.STUDY), Scope(), "")
    assert [r["0020000D"]["Value"][0] for r in result.datasets] == [ST2]
    assert "metadata studies/1.2.3.1/series/1.2.3.1.9/instances/1.2.3.1.9.2" in pacs.calls
    assert "metadata studies/1.2.3.1/series/1.2.3.1.9" not in pacs.calls
    assert rejected_study(iocm, ST) and not rejected_study(iocm, ST2)
    assert not rejected_study(pacs, ST)
    # The notes deleted: nothing is hidden any more.
    pacs.instances = [i for i in pacs.instances if i.series != SK]
    assert len((await iocm.search(QidoQuery(Level.INSTANCE), Scope(ST), "")).datasets) == 3


async def test_metadata_retrieve_frames_and_files() -> None:
    pacs = _pacs()
    iocm = RejectionFilter(pacs)
    assert _sops(SearchResult(await iocm.metadata(Target(ST), ""))) == [A2]
    for hidden in (Target(ST, SB), Target(ST, SA, A1), Target(ST, SK, NOTE)):
        with pytest.raises(NotFound):
            await iocm.metadata(hidden, "")
        with pytest.raises(NotFound):
            await _parts(iocm.retrieve(hidden, ""))
    pacs.calls.clear()
    assert await _parts(iocm.retrieve(Target(ST), "")) == [A2]
    assert pacs.calls == ["search instance", f"retrieve {Target(ST, SA, A2).path()}"]
    pacs.instances.append(Instance(ST, "1.2.3.1.3", "1.2.3.1.3.1", "MR"))
    pacs.calls.clear()
    assert await _parts(iocm.retrieve(Target(ST), "")) == [A2, "1.2.3.1.3.1"]
    assert pacs.calls[-1] == "retrieve studies/1.2.3.1/series/1.2.3.1.3"  # untouched: whole
    frames = iocm.pacs_frames(Target(ST, SA, A1), [1], "")
    assert frames is not None
    with pytest.raises(NotFound):
        await _parts(frames)
    frames = iocm.pacs_frames(Target(ST, SA, A2), [1], "")
    assert frames is not None and await _parts(frames) == [A2]
    with pytest.raises(NotFound):
        async with iocm.instance_file(Target(ST, SB, B1)):
            pass


async def test_concurrent_requests_share_one_refresh() -> None:
    pacs = _pacs()
    pacs.gate = asyncio.Event()
    iocm = RejectionFilter(pacs, refresh_seconds=0)
    searches = [
        asyncio.create_task(iocm.search(QidoQuery(Level.INSTANCE), Scope(ST2), ""))
        for _ in range(5)
    ]
    await asyncio.sleep(0.01)
    pacs.gate.set()
    await asyncio.gather(*searches)
    assert pacs.calls.count("search series") == 1
    assert iocm.stats()["iocm_refreshes"] == 1


async def test_a_pacs_that_cannot_be_reached_fails_the_request() -> None:
    pacs = _pacs()
    pacs.fail = BackendUnreachable("down")
    iocm = RejectionFilter(pacs)
    with pytest.raises(BackendUnreachable):
        await iocm.metadata(Target(ST), "")
    pacs.fail = None
    assert _sops(SearchResult(await iocm.metadata(Target(ST), ""))) == [A2]


async def test_an_unusable_answer_keeps_the_last_index_and_asks_again_soon() -> None:
    pacs = _pacs()
    iocm = RejectionFilter(pacs, refresh_seconds=60)
    await iocm.search(QidoQuery(Level.STUDY), Scope(), "")
    iocm._due = 0.0  # a minute later
    pacs.fail, pacs.fail_level = BackendError("malformed JSON"), Level.SERIES
    result = await iocm.search(QidoQuery(Level.INSTANCE), Scope(), "")
    assert _sops(result) == [A2, "1.2.3.2.1.1"]  # the last index still hides them
    assert iocm.stats()["iocm_refresh_failures"] == 1
    # asked again after RETRY_SECONDS at most, not at once
    asked = pacs.calls.count("search series")
    await iocm.search(QidoQuery(Level.INSTANCE), Scope(ST2), "")
    assert pacs.calls.count("search series") == asked


async def test_a_first_unusable_answer_serves_without_index() -> None:
    pacs = _pacs()
    pacs.fail = BackendError("malformed JSON")
    iocm = RejectionFilter(pacs)
    with pytest.raises(BackendError):  # the request's own search fails too, here
        await iocm.search(QidoQuery(Level.INSTANCE), Scope(), "")
    assert iocm.stats()["iocm_refresh_failures"] == 1
    assert iocm.index.empty


async def test_ko_series_are_read_in_pages() -> None:
    pacs = _pacs()
    many = [
        Instance("1.5.1", f"1.5.1.{n}", f"1.5.1.{n}.1", "KO", _note(f"1.5.1.{n}.1", [], "113000"))
        for n in range(2500)
    ]
    pacs.instances.extend(many)
    iocm = RejectionFilter(pacs)
    await iocm.search(QidoQuery(Level.STUDY), Scope(ST2), "")
    assert pacs.calls.count("search series") == 3
    assert iocm.stats()["iocm_ko_series"] == 2501
    await iocm.close()


# ---------------------------------------------------------------------- site settings


def test_site_settings() -> None:
    from ncpeh_dicomweb.config import ConfigError, settings_from_mapping

    web = {"id": "w", "url": "http://pacs/dicom-web"}
    dimse = {"id": "d", "kind": "dimse", "host": "pacs", "called_aet": "PACS"}
    settings = settings_from_mapping({"sites": [web, dimse]}, {})
    assert all(s.iocm and s.iocm_refresh_seconds == 30.0 for s in settings.sites)
    changed = {"iocm": False, "iocm_refresh_seconds": 0}
    settings = settings_from_mapping({"sites": [{**web, **changed}, {**dimse, **changed}]}, {})
    assert all(not s.iocm and s.iocm_refresh_seconds == 0 for s in settings.sites)
    for bad in ({"iocm": "yes"}, {"iocm_refresh_seconds": -1}, {"iocm_refresh_seconds": True}):
        for site in (web, dimse):
            with pytest.raises(ConfigError, match="iocm"):
                settings_from_mapping({"sites": [{**site, **bad}]}, {})
