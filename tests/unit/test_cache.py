from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ncpeh_dicomweb.backends.cache import CachedInstance, InstanceCache, validate_uid

ST = "1.2.840.1"
SE = "1.2.840.1.1"
SE2 = "1.2.840.1.2"


def _put(
    cache: InstanceCache, sop: str, body: bytes, series: str = SE, *, pin: bool = False
) -> CachedInstance:
    with cache.writer(ST, series, sop, pin=pin) as w:
        w.write(body)
        return w.commit()


def _files(root: Path, sub: str) -> list[Path]:
    return sorted(p for p in (root / sub).rglob("*") if p.is_file())


def test_write_commit_get(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)
    with cache.writer(ST, SE, "1.1") as w:
        w.write(b"DICM")
        w.write(memoryview(b"-body"))
        item = w.commit()
        with pytest.raises(RuntimeError):
            w.write(b"more")
    assert item == CachedInstance(ST, SE, "1.1", tmp_path / "data" / ST / SE / "1.1.dcm", 9)
    assert item.path.read_bytes() == b"DICM-body"
    assert cache.get(ST, SE, "1.1") == item
    assert cache.get(ST, SE, "1.2") is None
    stats = cache.stats
    assert (stats.entries, stats.bytes, stats.max_bytes) == (1, 9, 1000)
    assert (stats.hits, stats.misses, stats.writes, stats.evictions) == (1, 1, 1, 0)
    assert _files(tmp_path, "tmp") == []
    cache.close()
    cache.close()


def test_leaving_writer_without_commit_deletes_temp_file(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)

    def fail_midway() -> None:
        with cache.writer(ST, SE, "1.1") as w:
            w.write(b"half an instance")
            assert len(_files(tmp_path, "tmp")) == 1
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    with cache.writer(ST, SE, "1.2") as w:
        w.write(b"never committed")
    assert _files(tmp_path, "tmp") == []
    assert cache.get(ST, SE, "1.1") is None and cache.get(ST, SE, "1.2") is None
    assert cache.stats.bytes == 0 and cache.stats.writes == 0


def test_writing_a_cached_instance_replaces_it(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)
    _put(cache, "1.1", b"x" * 100)
    _put(cache, "1.2", b"y" * 10)
    new = _put(cache, "1.1", b"z" * 40)
    assert new.path.read_bytes() == b"z" * 40
    assert cache.get(ST, SE, "1.1") == new
    assert (cache.stats.entries, cache.stats.bytes, cache.stats.writes) == (2, 50, 3)


def test_lru_eviction_order(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=30)
    a = _put(cache, "1.1", b"a" * 10)
    b = _put(cache, "1.2", b"b" * 10)
    _put(cache, "1.3", b"c" * 10)
    assert cache.get(ST, SE, "1.1") is not None  # a is now more recent than b
    _put(cache, "1.4", b"d" * 10)
    assert cache.get(ST, SE, "1.2") is None and not b.path.exists()
    _put(cache, "1.5", b"e" * 10)  # c is the oldest now
    assert cache.get(ST, SE, "1.3") is None
    assert cache.get(ST, SE, "1.1") == a and a.path.exists()
    assert (cache.stats.entries, cache.stats.bytes, cache.stats.evictions) == (3, 30, 2)


def test_pinned_entries_survive_eviction_until_unpinned(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=20)
    a = _put(cache, "1.1", b"a" * 10)
    cache.pin([a])
    cache.pin([a])  # refcounted
    _put(cache, "1.2", b"b" * 10)
    _put(cache, "1.3", b"c" * 10)
    assert cache.get(ST, SE, "1.1") == a and a.path.exists()
    assert cache.get(ST, SE, "1.2") is None
    with cache.pinned(x for x in [a]) as held:
        assert held == [a]
    cache.unpin([a])
    assert cache.get(ST, SE, "1.1") == a  # still pinned once
    _put(cache, "1.4", b"d" * 10)
    assert cache.stats.bytes == 20 and a.path.exists() and cache.get(ST, SE, "1.3") is None
    cache.unpin([a])
    cache.unpin([a])  # unmatched: ignored
    assert cache.stats.bytes == 20  # within budget: nothing to evict yet
    _put(cache, "1.5", b"e" * 10)
    assert cache.get(ST, SE, "1.1") is None and not a.path.exists()


def test_everything_pinned_exceeds_the_budget(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=15)
    items = [_put(cache, f"1.{i}", b"x" * 10, pin=True) for i in range(3)]
    assert cache.stats.bytes == 30 and all(i.path.exists() for i in items)
    cache.unpin(items)
    assert cache.stats.bytes == 10 and cache.get(ST, SE, "1.2") == items[2]


def test_get_with_pin_protects_the_file(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=10)
    _put(cache, "1.1", b"a" * 10)
    held = cache.get(ST, SE, "1.1", pin=True)
    assert held is not None
    _put(cache, "1.2", b"b" * 10)
    assert held.path.read_bytes() == b"a" * 10
    cache.unpin([held])
    assert not held.path.exists() and cache.get(ST, SE, "1.2") is not None


def test_oversize_instance_is_written_then_evicted(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=10)
    small = _put(cache, "1.1", b"s" * 5)
    big = _put(cache, "1.2", b"B" * 50, pin=True)
    assert big.path.read_bytes() == b"B" * 50 and not small.path.exists()
    assert cache.stats.bytes == 50
    cache.unpin([big])
    assert not big.path.exists() and cache.stats.bytes == 0 and cache.stats.entries == 0
    # without a pin the commit that wrote it still returns an existing file
    unpinned = _put(cache, "1.3", b"U" * 50)
    assert unpinned.path.read_bytes() == b"U" * 50
    _put(cache, "1.4", b"s" * 5)
    assert not unpinned.path.exists() and cache.stats.bytes == 5


def test_listings_for_study_and_series(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)
    a = _put(cache, "1.1", b"a")
    b = _put(cache, "1.2", b"b")
    c = _put(cache, "2.1", b"c", series=SE2)
    assert cache.listing(ST) is None and cache.listing(ST, SE) is None
    assert cache.record_listing(ST, SE, [(SE, "1.2"), (SE, "1.1")])
    assert cache.listing(ST, SE) == [b, a]  # in recorded order
    assert cache.listing(ST) is None and cache.listing(ST, SE2) is None
    assert cache.record_listing(ST, None, [(SE, "1.1"), (SE2, "2.1"), (SE, "1.2")])
    assert cache.listing(ST) == [a, c, b]
    assert cache.listing(ST, SE2) == [c]  # answered by the study listing
    assert cache.listing(ST, "1.2.840.1.99") is None  # not in the study
    held = cache.listing(ST, SE2, pin=True)
    assert held == [c]
    cache.unpin(held)
    assert cache.stats.hits == 0  # listings do not count as get() hits
    with pytest.raises(ValueError, match="another series"):
        cache.record_listing(ST, SE, [(SE2, "2.1")])


def test_record_listing_refuses_missing_members(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)
    _put(cache, "1.1", b"a")
    assert not cache.record_listing(ST, SE, [(SE, "1.1"), (SE, "1.2")])
    assert cache.listing(ST, SE) is None
    assert _files(tmp_path, "listings") == [] and _files(tmp_path, "tmp") == []


def test_listing_is_dropped_once_a_member_is_evicted(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=20)
    _put(cache, "1.1", b"a" * 10)
    _put(cache, "2.1", b"b" * 10, series=SE2)
    assert cache.record_listing(ST, SE, [(SE, "1.1")])
    assert cache.record_listing(ST, SE2, [(SE2, "2.1")])
    assert cache.record_listing(ST, None, [(SE, "1.1"), (SE2, "2.1")])
    assert cache.listing(ST, SE2) is not None  # 1.1 is now the least recently used
    _put(cache, "3.1", b"c" * 10, series="1.2.840.1.3")
    assert cache.listing(ST) is None and cache.listing(ST, SE) is None
    assert [i.sop for i in cache.listing(ST, SE2) or []] == ["2.1"]
    assert [p.name for p in _files(tmp_path, "listings")] == [f"{SE2}.json"]


def test_explicit_evict(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)
    a = _put(cache, "1.1", b"a")
    b = _put(cache, "2.1", b"b", series=SE2)
    other = _put(cache, "9.1", b"o", series="1.2.9")
    assert cache.record_listing(ST, None, [(SE, "1.1"), (SE2, "2.1"), ("1.2.9", "9.1")])
    cache.pin([b])
    cache.evict(ST, SE)
    assert cache.get(ST, SE, "1.1") is None and not a.path.exists()
    assert cache.listing(ST) is None and cache.listing(ST, SE2) is None
    cache.evict(ST)
    assert cache.get(ST, SE2, "2.1") is None and cache.get(ST, "1.2.9", "9.1") is None
    assert b.path.read_bytes() == b"b" and not other.path.exists()  # pinned: kept for now
    cache.unpin([b])
    assert not b.path.exists()
    assert (cache.stats.entries, cache.stats.bytes) == (0, 0)
    assert list((tmp_path / "data").iterdir()) == [] and _files(tmp_path, "listings") == []
    cache.evict("1.2.3")  # unknown: no-op


def test_a_doomed_pinned_entry_is_revived_by_a_new_write(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)
    held = _put(cache, "1.1", b"old", pin=True)
    cache.evict(ST)
    new = _put(cache, "1.1", b"new")
    cache.unpin([held])
    assert cache.get(ST, SE, "1.1") == new and new.path.read_bytes() == b"new"


def test_restart_after_a_clean_run(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)
    items = [_put(cache, "1.1", b"a" * 10), _put(cache, "2.1", b"bb", series=SE2)]
    assert cache.record_listing(ST, None, [(SE, "1.1"), (SE2, "2.1")])
    assert cache.record_listing(ST, SE2, [(SE2, "2.1")])
    cache.close()
    again = InstanceCache(tmp_path, max_bytes=1000)
    assert (again.stats.entries, again.stats.bytes) == (2, 12)
    assert again.get(ST, SE, "1.1") == items[0] and again.get(ST, SE2, "2.1") == items[1]
    assert again.listing(ST) == items and again.listing(ST, SE2) == items[1:]
    assert again.listing(ST, SE) == items[:1]


def test_restart_takes_lru_order_from_mtime_and_evicts(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)
    items = [_put(cache, f"1.{i}", b"x" * 10) for i in range(4)]
    for item, mtime in zip(items, (4000, 1000, 3000, 2000), strict=True):
        os.utime(item.path, (mtime, mtime))
    again = InstanceCache(tmp_path, max_bytes=25)  # the two oldest must go: 1.1 and 1.3
    assert [again.get(ST, SE, f"1.{i}") is not None for i in range(4)] == [True, False, True, False]
    assert again.stats.bytes == 20 and len(_files(tmp_path, "data")) == 2


def test_restart_after_a_crash(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path, max_bytes=1000)
    kept = _put(cache, "1.1", b"a" * 10)
    gone = _put(cache, "2.1", b"b" * 10, series=SE2)
    assert cache.record_listing(ST, SE, [(SE, "1.1")])
    assert cache.record_listing(ST, SE2, [(SE2, "2.1")])
    assert cache.record_listing(ST, None, [(SE, "1.1"), (SE2, "2.1")])
    # the crash: a half-written instance, a truncated listing, a listing whose file vanished
    (tmp_path / "tmp" / "tmpabc.part").write_bytes(b"DICM half")
    study_listing = tmp_path / "listings" / ST / "study.json"
    study_listing.write_bytes(study_listing.read_bytes()[:25])
    gone.path.unlink()
    # and junk that no cache run writes
    (tmp_path / "data" / ST / SE / "notes.txt").write_text("x")
    (tmp_path / "data" / "not-a-uid").mkdir()
    (tmp_path / "listings" / ST / "junk.json").write_text("{}")
    (tmp_path / "listings" / ST / f"{SE}.json.tmp").write_text("{}")

    again = InstanceCache(tmp_path, max_bytes=1000)
    assert _files(tmp_path, "tmp") == []
    assert again.listing(ST) is None and again.listing(ST, SE2) is None
    assert again.listing(ST, SE) == [kept]
    assert again.get(ST, SE2, "2.1") is None
    assert (again.stats.entries, again.stats.bytes) == (1, 10)
    assert _files(tmp_path, "data") == [kept.path]
    assert _files(tmp_path, "listings") == [tmp_path / "listings" / ST / f"{SE}.json"]
    assert sorted((tmp_path / "data").iterdir()) == [tmp_path / "data" / ST]


def test_concurrent_use_keeps_the_cache_consistent(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    cache = InstanceCache(root, max_bytes=2_000)
    series = [(f"1.2.{s % 5}", f"1.2.{s % 5}.{s}") for s in range(50)]  # 5 studies
    keys = [(st, se, f"{se}.{i}") for st, se in series for i in range(10)]  # 500 instances

    def body(key: tuple[str, str, str]) -> bytes:
        return ("|".join(key) * (1 + int(key[2].rsplit(".", 1)[1]) % 3)).encode()

    def worker(seed: int) -> None:
        rnd = random.Random(seed)
        last_series = series[0]
        for n in range(400):
            key = rnd.choice(keys)
            op = rnd.random()
            if op < 0.4:
                if n % 7 == 0:
                    source = tmp_path / f"adopt-{seed}-{n}"
                    source.write_bytes(body(key))
                    cache.adopt(*key, source)
                else:
                    with cache.writer(*key) as w:
                        w.write(body(key))
                        w.commit()
            elif op < 0.8:
                item = cache.get(*key, pin=True)
                if item is not None:
                    try:
                        assert item.path.read_bytes() == body(key)
                    finally:
                        cache.unpin([item])
            elif op < 0.85:
                cache.evict(key[0], key[1] if n % 2 else None)
            elif op < 0.93:  # retrieve a whole series, pinned while in flight
                members = [k for k in keys if k[1] == key[1]]
                got = []
                for k in members:
                    with cache.writer(*k, pin=True) as w:
                        w.write(body(k))
                        got.append(w.commit())
                cache.record_listing(key[0], key[1], [(k[1], k[2]) for k in members])
                for item in cache.listing(key[0], key[1]) or []:  # None only after an evict()
                    assert item.path.read_bytes() == body((item.study, item.series, item.sop))
                cache.unpin(got)
                last_series = key[:2]
            else:
                listed = cache.listing(*last_series, pin=True)
                if listed is not None:
                    with cache.pinned(listed):
                        cache.unpin(listed)
                        for item in listed:
                            assert item.path.read_bytes() == body(
                                (item.study, item.series, item.sop)
                            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(worker, seed) for seed in range(8)]:
            future.result()

    def check(c: InstanceCache) -> None:
        files = _files(root, "data")
        stats = c.stats
        assert stats.bytes == sum(f.stat().st_size for f in files) <= stats.max_bytes
        assert stats.entries == len(files)
        for f in files:
            key = (f.parent.parent.name, f.parent.name, f.name.removesuffix(".dcm"))
            assert f.read_bytes() == body(key)
            item = c.get(*key)
            assert item is not None and item.path == f and item.size == f.stat().st_size
        for f in _files(root, "listings"):
            scope = None if f.name == "study.json" else f.name.removesuffix(".json")
            assert c.listing(f.parent.name, scope) is not None
        assert _files(root, "tmp") == []

    assert cache.stats.writes > 500
    check(cache)
    check(InstanceCache(root, max_bytes=2_000))


BAD_UIDS = ["..", ".", "", "../../etc", "1.2/../3", "1..2", ".1", "1.", "1/2", "a.1", "1 2",
            "1.2\n", "\u0661.2", "1" * 65, "/tmp", "1\\2"]  # fmt: skip


@pytest.mark.parametrize("bad", BAD_UIDS)
def test_path_traversal_is_rejected(tmp_path: Path, bad: str) -> None:
    cache = InstanceCache(tmp_path / "c", max_bytes=1000)
    source = tmp_path / "f.dcm"
    source.write_bytes(b"x")
    calls: list[Callable[[], object]] = [
        lambda: cache.writer(bad, SE, "1.1"),
        lambda: cache.writer(ST, bad, "1.1"),
        lambda: cache.writer(ST, SE, bad),
        lambda: cache.get(ST, SE, bad),
        lambda: cache.adopt(ST, bad, "1.1", source),
        lambda: cache.record_listing(bad, None, []),
        lambda: cache.record_listing(ST, SE, [(SE, bad)]),
        lambda: cache.listing(ST, bad),
        lambda: cache.evict(bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="invalid DICOM UID"):
            call()
    assert source.exists() and _files(tmp_path / "c", "tmp") == []
    assert _files(tmp_path / "c", "data") == []


def test_valid_uids() -> None:
    assert validate_uid("1" * 64) == "1" * 64
    assert validate_uid("0.1.02") == "0.1.02"


def test_adopt_moves_a_file_into_the_cache(tmp_path: Path) -> None:
    cache = InstanceCache(tmp_path / "c", max_bytes=1000)
    source = tmp_path / "incoming.dcm"
    source.write_bytes(b"DICM adopted")
    item = cache.adopt(ST, SE, "1.1", source)
    assert not source.exists() and item.path.read_bytes() == b"DICM adopted" and item.size == 12
    assert cache.get(ST, SE, "1.1") == item
    source.write_bytes(b"v2")
    assert cache.adopt(ST, SE, "1.1", source, pin=True).size == 2
    assert (cache.stats.entries, cache.stats.bytes, cache.stats.writes) == (1, 2, 2)
    with pytest.raises(FileNotFoundError):
        cache.adopt(ST, SE, "1.2", tmp_path / "missing.dcm")
    assert _files(tmp_path / "c", "tmp") == []


def test_adopt_across_devices_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = InstanceCache(tmp_path / "c", max_bytes=1000)
    source = tmp_path / "incoming.dcm"
    source.write_bytes(b"DICM far away")
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(src) == source:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    item = cache.adopt(ST, SE, "1.1", source)
    assert not source.exists() and item.path.read_bytes() == b"DICM far away"
    assert _files(tmp_path / "c", "tmp") == []


def test_negative_budget_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        InstanceCache(tmp_path, max_bytes=-1)
