"""Blocking DIMSE operations, run on the pool's threads (PS3.4 C.4.1-C.4.3).

Each returns plain data or raises one of our errors; nothing here touches the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom import Dataset
from pynetdicom.association import Association

from ...errors import BackendError, BackendTimeout, GatewayError
from .contexts import (
    FIND_MODEL,
    GET_MODEL,
    MOVE_MODEL,
    Holdings,
    holdings_from_instances,
    holdings_from_study,
    instance_classes_query,
    study_classes_query,
)
from .status import CANCEL, PENDING, SUCCESS, error_for_status, is_failure

__all__ = [
    "Canceller",
    "FindOutcome",
    "RetrieveOutcome",
    "find_holdings",
    "find_series",
    "run_find",
    "run_get",
    "run_move",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetrieveOutcome:
    status: int
    completed: int
    failed: int
    warning: int


def _no_response(since: float, timeout: float, operation: str) -> GatewayError:
    # pynetdicom yields an empty status when the association was aborted or timed out.
    if time.monotonic() - since >= timeout * 0.9:
        return BackendTimeout(f"the PACS did not answer the {operation} in time")
    return BackendError(f"the PACS broke off the {operation}")


@dataclass(frozen=True, slots=True)
class FindOutcome:
    matches: list[Dataset]
    warning: str | None = None  # a final Warning status (0xBxxx): matches, but not all


def _responses(
    assoc: Association, identifier: Dataset, msg_id: int, timeout: float
) -> Iterator[tuple[int, Dataset | None]]:
    """A C-FIND's (status code, answer) pairs. ``timeout`` bounds the whole search and is the
    association's wait for each answer, so a silent PACS frees this thread when it is given up."""
    started = time.monotonic()
    assoc.dimse_timeout = timeout
    for status, answer in assoc.send_c_find(identifier, FIND_MODEL, msg_id=msg_id):
        if "Status" not in status:
            raise _no_response(started, timeout, "C-FIND")
        if time.monotonic() - started > timeout:
            raise BackendTimeout("the PACS did not finish the C-FIND in time")
        yield int(status.Status), answer


def run_find(
    assoc: Association, identifier: Dataset, msg_id: int, limit: int | None, timeout: float
) -> FindOutcome:
    """C-FIND; once ``limit`` matches have come, C-CANCEL the rest (PS3.4 C.4.1.2.3).

    ``timeout`` bounds the whole search: it is also the association's wait for each answer,
    so a silent PACS frees this thread when the search is given up, not later.
    """
    matches: list[Dataset] = []
    cancelled = False
    for code, answer in _responses(assoc, identifier, msg_id, timeout):
        if code in PENDING:
            if answer is not None and not cancelled:
                matches.append(answer)
                if limit is not None and len(matches) >= limit:
                    assoc.send_c_cancel(msg_id, query_model=FIND_MODEL)
                    cancelled = True
            continue
        if code in (SUCCESS, CANCEL):
            break
        if code >> 12 == 0xB:  # e.g. 0xB001: matching reached the PACS's response limit
            return FindOutcome(matches, f"the PACS ended the search with warning 0x{code:04X}")
        raise error_for_status(code, "C-FIND")
    return FindOutcome(matches)


def find_holdings(
    assoc: Association,
    study: str,
    series: str | None,
    instance: str | None,
    msg_id: int,
    timeout: float,
) -> Holdings | None:
    """What a C-GET / C-MOVE of the target will bring: SOP classes, stored syntaxes if said.

    A study: one STUDY-level answer with SOP Classes in Study if the PACS keeps them; else
    (and for a series or an instance) an IMAGE-level C-FIND of its instances' SOP Class UID
    and Available Transfer Syntax UID (PS3.4 C.6.2.1), C-CANCELled at the first answer
    without a SOP Class UID (the PACS does not return it). None when the PACS cannot say, or
    fails the query with a status (the retrieve is then planned without knowing); a broken or
    silent association raises, as in :func:`run_find`.
    """
    if series is None and instance is None:
        answers = _answers(assoc, study_classes_query(study), msg_id, timeout, "SOPClassesInStudy")
        if not answers:  # no such study, or a failure status: the retrieve will tell
            return None
        held = holdings_from_study(answers)
        if held is not None:
            return held
    identifier = instance_classes_query(study, series, instance)
    answers = _answers(assoc, identifier, msg_id, timeout, "SOPClassUID")
    return holdings_from_instances(answers) if answers else None


def find_series(assoc: Association, study: str, msg_id: int, timeout: float) -> list[str]:
    """The study's Series Instance UIDs, in the PACS's order: a SERIES-level C-FIND (PS3.4
    C.6.2.1.2), to retrieve a study one series at a time. Empty unless the PACS named every
    series and ended with Success (a failure or warning status, a response limit: the study
    is then retrieved whole); a broken or silent association raises."""
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "SERIES"
    identifier.StudyInstanceUID = study
    identifier.SeriesInstanceUID = None
    uids: list[str] = []
    every = True
    for code, answer in _responses(assoc, identifier, msg_id, timeout):
        if code not in PENDING:
            return list(dict.fromkeys(uids)) if code == SUCCESS and every else []
        uid = str(answer.get("SeriesInstanceUID", "") or "") if answer is not None else ""
        every = every and bool(uid)
        uids.append(uid)
    return []


def _answers(
    assoc: Association, identifier: Dataset, msg_id: int, timeout: float, needed: str
) -> list[Dataset] | None:
    """The C-FIND's answers, up to the first lacking ``needed``; None on a failure status."""
    answers: list[Dataset] = []
    cancelled = False
    for code, answer in _responses(assoc, identifier, msg_id, timeout):
        if code not in PENDING:
            return answers if code in (SUCCESS, CANCEL) or code >> 12 == 0xB else None
        if answer is None or cancelled:
            continue
        answers.append(answer)
        if not answer.get(needed):
            assoc.send_c_cancel(msg_id, query_model=FIND_MODEL)
            cancelled = True
    return answers


def run_get(
    canceller: Canceller,
    identifier: Dataset,
    cancel: threading.Event,
    deadline: float,
    timeout: float,
) -> RetrieveOutcome:
    """C-GET; instances arrive as C-STORE sub-operations on this association (C.4.3)."""
    canceller.assoc.dimse_timeout = timeout  # a C-FIND may have left it shorter
    responses = canceller.assoc.send_c_get(identifier, GET_MODEL, msg_id=canceller.msg_id)
    return _final_outcome(responses, canceller, cancel, deadline, timeout, "C-GET")


def run_move(
    canceller: Canceller,
    identifier: Dataset,
    destination: str,
    cancel: threading.Event,
    deadline: float,
    timeout: float,
) -> RetrieveOutcome:
    """C-MOVE to our own storage SCP (C.4.2); it routes what arrives by Message ID."""
    canceller.assoc.dimse_timeout = timeout  # a C-FIND may have left it shorter
    responses = canceller.assoc.send_c_move(
        identifier, destination, MOVE_MODEL, msg_id=canceller.msg_id
    )
    return _final_outcome(responses, canceller, cancel, deadline, timeout, "C-MOVE")


@dataclass(slots=True)
class Canceller:
    """Sends the one C-CANCEL (PS3.7 9.3.2.3) of a C-GET/C-MOVE, from whichever thread first.

    Never an A-ABORT: an abort landing in the middle of a C-STORE wedges pynetdicom's reactor.
    """

    assoc: Association
    msg_id: int
    model: str
    sent: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self) -> None:
        with self._lock:
            if self.sent or not self.assoc.is_established:
                return
            self.sent = True
        try:
            self.assoc.send_c_cancel(self.msg_id, query_model=self.model)
        except Exception:  # the association went away meanwhile: nothing left to cancel
            log.debug("C-CANCEL failed", exc_info=True)

    def soon(self) -> None:
        """Cancel from a short-lived thread: the caller (the event loop) must not block."""
        threading.Thread(target=self, name="dimse-cancel", daemon=True).start()


def _final_outcome(
    responses: Iterator[tuple[Dataset, Dataset | None]],
    send_cancel: Canceller,
    cancel: threading.Event,
    deadline: float,
    timeout: float,
    operation: str,
) -> RetrieveOutcome:
    """Wait through the pending responses for the final one (C.4.2.1.5, C.4.3.1.4).

    Cancelling (every client gone, or the operation's deadline passed) is done from this
    thread, between responses, with a C-CANCEL (PS3.7 9.3.2.3): aborting from another thread
    in the middle of a C-STORE can wedge pynetdicom's reactor.
    """
    last = time.monotonic()
    final: Dataset | None = None
    late = False
    for status, _identifier in responses:
        if "Status" not in status:
            if cancel.is_set() or late:
                break
            raise _no_response(last, timeout, operation)
        last = time.monotonic()
        if int(status.Status) not in PENDING:
            final = status
            break
        late = late or last > deadline
        if cancel.is_set() or late:
            send_cancel()
    if late:
        raise BackendTimeout(f"the PACS did not finish the {operation} in time")
    if final is None:
        if cancel.is_set():
            return RetrieveOutcome(CANCEL, 0, 0, 0)
        raise BackendError(f"the PACS ended the {operation} without a final status")
    code = int(final.Status)
    outcome = RetrieveOutcome(
        status=code,
        completed=int(final.get("NumberOfCompletedSuboperations", 0) or 0),
        failed=int(final.get("NumberOfFailedSuboperations", 0) or 0),
        warning=int(final.get("NumberOfWarningSuboperations", 0) or 0),
    )
    if is_failure(code) and outcome.completed == 0:
        raise error_for_status(code, operation)
    return outcome
