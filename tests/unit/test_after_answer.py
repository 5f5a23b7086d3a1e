"""web/after_answer.py: bookkeeping deferred past the answer, run in order, never lost."""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiohttp import web

from ncpeh_dicomweb.web.after_answer import (
    AFTER_ANSWER,
    AfterAnswer,
    after_answer_context,
    defer,
)


async def test_jobs_wait_for_the_delay_then_run_together_in_order() -> None:
    lane = AfterAnswer(delay=0.02)
    done: list[int] = []
    for n in range(3):
        lane.defer(done.append, n)
    await asyncio.sleep(0.005)
    assert done == []  # not on the loop's next turn: after the delay
    await asyncio.sleep(0.04)
    assert done == [0, 1, 2]
    lane.defer(done.append, 3)  # a new batch, a new timer
    await asyncio.sleep(0.04)
    assert done == [0, 1, 2, 3]


async def test_a_failing_job_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lane = AfterAnswer(delay=0.001)
    done: list[str] = []

    def broken() -> None:
        raise RuntimeError("boom")

    lane.defer(done.append, "before")
    lane.defer(broken)
    lane.defer(done.append, "after")
    with caplog.at_level(logging.ERROR):
        await asyncio.sleep(0.02)
    assert done == ["before", "after"]
    assert lane.failed == 1
    assert "after-answer job" in caplog.text and "boom" in caplog.text


async def test_a_job_queued_by_a_job_runs_in_the_same_batch() -> None:
    lane = AfterAnswer(delay=0.001)
    done: list[str] = []
    lane.defer(lambda: lane.defer(done.append, "queued by a job"))
    await asyncio.sleep(0.02)
    assert done == ["queued by a job"]


async def test_close_runs_what_is_queued_and_later_jobs_run_at_once() -> None:
    lane = AfterAnswer(delay=60)
    done: list[int] = []
    lane.defer(done.append, 1)
    lane.close()
    assert done == [1]
    lane.defer(done.append, 2)
    assert done == [1, 2]


async def test_defer_without_a_lane_runs_now() -> None:
    done: list[int] = []
    defer(None, done.append, 1)
    defer(web.Application(), done.append, 2)
    assert done == [1, 2]


async def test_the_app_context_closes_the_lane_at_cleanup() -> None:
    app = web.Application()
    context = after_answer_context(app)
    await anext(context)
    done: list[int] = []
    defer(app, done.append, 1)
    assert done == [] and app[AFTER_ANSWER] is not None
    with pytest.raises(StopAsyncIteration):
        await anext(context)
    assert done == [1]


async def test_now_waiting_runs_the_batch_on_the_next_turn_not_after_the_delay() -> None:
    lane = AfterAnswer(delay=60)
    done: list[int] = []
    lane.defer(done.append, 1)
    lane.defer(done.append, 2)
    lane.now_waiting()
    assert done == []  # not inside the caller: once it has yielded to the loop
    await asyncio.sleep(0)
    assert done == [1, 2]


async def test_now_waiting_with_nothing_queued_does_nothing_and_the_timer_still_serves() -> None:
    lane = AfterAnswer(delay=0.01)
    done: list[int] = []
    lane.now_waiting()
    await asyncio.sleep(0)
    lane.defer(done.append, 1)
    await asyncio.sleep(0.005)
    assert done == []
    await asyncio.sleep(0.03)
    assert done == [1]


async def test_a_batch_run_by_now_waiting_cancels_its_timer() -> None:
    """The first batch's timer must not run the next batch before that one's own delay."""
    lane = AfterAnswer(delay=0.05)
    done: list[str] = []
    lane.defer(done.append, "first")  # its timer: t = 0.05
    await asyncio.sleep(0.02)
    lane.now_waiting()
    await asyncio.sleep(0)
    assert done == ["first"]
    lane.defer(done.append, "second")  # a timer of its own: t = 0.07
    await asyncio.sleep(0.04)  # t = 0.06: past the first timer, before the second's
    assert done == ["first"]
    await asyncio.sleep(0.04)
    assert done == ["first", "second"]


async def test_close_with_a_batch_due_on_the_next_turn_runs_it_once() -> None:
    lane = AfterAnswer(delay=60)
    done: list[int] = []
    lane.defer(done.append, 1)
    lane.now_waiting()
    lane.close()
    assert done == [1]
    await asyncio.sleep(0.01)
    assert done == [1]
    lane.now_waiting()  # after close: nothing queued, nothing scheduled
    await asyncio.sleep(0)
    assert done == [1]
