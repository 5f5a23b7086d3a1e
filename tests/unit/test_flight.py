from __future__ import annotations

import asyncio
from contextlib import aclosing
from pathlib import Path

import pytest

from ncpeh_dicomweb.backends.cache import CachedInstance
from ncpeh_dicomweb.backends.dimse.flight import WINDOW, Flight
from ncpeh_dicomweb.errors import BackendError


def _item(n: int) -> CachedInstance:
    return CachedInstance("1.2", "1.2.3", f"1.2.3.{n}", Path(f"/x/{n}"), 10)


async def _collect(flight: Flight) -> list[str]:
    out = []
    async with aclosing(flight.follow(lambda i: True)) as followed:
        async for item in followed:
            out.append(item.sop)
    return out


async def test_late_follower_gets_replay_then_live_items_and_release_waits_for_it() -> None:
    released: list[list[CachedInstance]] = []
    flight = Flight(release=released.append)
    flight.add(_item(1))
    first = asyncio.create_task(_collect(flight))
    await asyncio.sleep(0)
    flight.add(_item(2))
    late = asyncio.create_task(_collect(flight))
    await asyncio.sleep(0)
    flight.add(_item(3))
    flight.finish()
    assert await first == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert await late == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
    assert len(released) == 1 and len(released[0]) == 3


async def test_release_waits_for_the_last_reader() -> None:
    released: list[list[CachedInstance]] = []
    flight = Flight(release=released.append)
    flight.add(_item(1))
    reader = flight.follow(lambda i: True)
    assert (await anext(reader)).sop == "1.2.3.1"
    flight.finish()
    assert released == []  # a follower still holds its place
    await reader.aclose()
    assert len(released) == 1


async def test_last_follower_leaving_early_cancels() -> None:
    flight = Flight(release=lambda items: None)
    flight.add(_item(1))
    reader = flight.follow(lambda i: True)
    await anext(reader)
    await reader.aclose()
    assert flight.cancel.is_set()


async def test_late_instance_after_release_is_unpinned_at_once() -> None:
    released: list[list[CachedInstance]] = []
    flight = Flight(release=released.append)
    flight.finish()
    flight.add(_item(9))  # a C-STORE that raced the end of the flight
    assert [i.sop for batch in released for i in batch] == ["1.2.3.9"]
    assert flight.items == []


async def test_the_pacs_waits_while_clients_are_a_window_behind() -> None:
    flight = Flight(release=lambda items: None)
    big = CachedInstance("1.2", "1.2.3", "1.2.3.1", Path("/x"), WINDOW + 1)
    reader = flight.follow(lambda i: True)
    waiter = asyncio.create_task(asyncio.to_thread(flight.wait_for_room, big.size, 10.0))
    flight.add(big)
    await asyncio.sleep(0.3)
    assert not waiter.done()  # held back: nobody has read anything yet
    assert (await anext(reader)).sop == "1.2.3.1"
    flight.finish()
    assert await anext(reader, None) is None  # reading on releases the PACS
    await asyncio.wait_for(waiter, 5)


async def test_error_reaches_followers_after_the_items() -> None:
    flight = Flight(release=lambda items: None)
    flight.add(_item(1))
    flight.finish(BackendError("C-GET failed"))
    reader = flight.follow(lambda i: True)
    assert (await anext(reader)).sop == "1.2.3.1"
    with pytest.raises(BackendError):
        await anext(reader)
