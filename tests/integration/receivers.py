"""A recording StoreReceiver for the native DIMSE tests (test_dimse_native, _native_scp)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

ILE = "1.2.840.10008.1.2"


def encoded(ds: Dataset, syntax: str) -> bytes:
    """The data set as pydicom encodes it in ``syntax`` (no File Meta)."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, syntax == ILE
    write_dataset(out, ds)
    return out.getvalue()


@dataclass
class Incoming:
    """What the receiver saw of one instance."""

    sop_class: str
    sop: str
    syntax: str
    data: bytearray = field(default_factory=bytearray)
    writes: int = 0
    finished: bool = False
    aborted: bool = False


class Receiving:
    def __init__(self, receiver: RecordingReceiver, incoming: Incoming) -> None:
        self._receiver, self._incoming = receiver, incoming

    def write(self, fragment: memoryview) -> None:
        assert not (self._incoming.finished or self._incoming.aborted)
        self._incoming.data += fragment
        self._incoming.writes += 1

    def finish(self) -> int:
        assert not (self._incoming.finished or self._incoming.aborted)
        status = self._receiver.finished(self._incoming)  # may raise: then not finished
        self._incoming.finished = True
        self._receiver.finishes += 1
        return status

    def abort(self) -> None:
        assert not self._incoming.finished
        self._incoming.aborted = True
        self._receiver.aborts += 1


class RecordingReceiver:
    """A StoreReceiver keeping what it saw: (class, instance, syntax) of each begin(), each
    instance's bytes, how many finish() / abort() calls and room() awaits. Subclasses say
    what to refuse at begin() (:meth:`refusal`) and what finish() answers (:meth:`finished`)."""

    def __init__(self) -> None:
        self.begins: list[tuple[str, str, str]] = []
        self.incoming: list[Incoming] = []
        self.finishes = self.aborts = self.rooms = 0

    def refusal(self, sop: str) -> int | None:
        return None

    def finished(self, incoming: Incoming) -> int:
        return 0

    def begin(self, sop_class: str, sop: str, syntax: str) -> Receiving | int:
        self.begins.append((sop_class, sop, syntax))
        refused = self.refusal(sop)
        if refused is not None:
            return refused
        incoming = Incoming(sop_class, sop, syntax)
        self.incoming.append(incoming)
        return Receiving(self, incoming)

    async def room(self) -> None:
        self.rooms += 1
