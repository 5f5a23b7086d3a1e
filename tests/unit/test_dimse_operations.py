"""run_find's handling of final statuses; a stand-in association (a real PACS cannot be made
to send 0xB001 as a final status, and pynetdicom's own SCP sends it as pending)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom import Dataset

from ncpeh_dicomweb.backends.dimse.operations import run_find
from ncpeh_dicomweb.errors import BackendBusy, BackendError


def _status(code: int) -> Dataset:
    ds = Dataset()
    ds.Status = code
    return ds


class _Assoc:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.cancelled: list[int] = []
        self.dimse_timeout: float | None = None

    def send_c_find(self, identifier: Dataset, model: str, msg_id: int) -> Iterator[Any]:
        for code in self.statuses:
            answer = Dataset() if code in (0xFF00, 0xFF01) else None
            yield _status(code), answer

    def send_c_cancel(self, msg_id: int, query_model: str) -> None:
        self.cancelled.append(msg_id)


def test_warning_final_status_keeps_matches_and_says_so() -> None:
    outcome = run_find(_Assoc([0xFF00, 0xFF00, 0xB001]), Dataset(), 7, None, 5.0)  # type: ignore[arg-type]
    assert len(outcome.matches) == 2
    assert outcome.warning is not None and "0xB001" in outcome.warning


def test_limit_sends_one_cancel() -> None:
    assoc = _Assoc([0xFF00] * 5 + [0xFE00])
    outcome = run_find(assoc, Dataset(), 7, 2, 5.0)  # type: ignore[arg-type]
    assert len(outcome.matches) == 2
    assert assoc.cancelled == [7]
    assert assoc.dimse_timeout == 5.0


@pytest.mark.parametrize(("code", "error"), [(0xA700, BackendBusy), (0xC000, BackendError)])
def test_failure_final_status_raises(code: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        run_find(_Assoc([0xFF00, code]), Dataset(), 7, None, 5.0)  # type: ignore[arg-type]
