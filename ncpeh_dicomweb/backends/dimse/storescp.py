"""The gateway's Storage SCP: the C-MOVE destination (PS3.4 C.4.2, B.2).

Instances the PACS pushes are routed to the move that asked for them by the C-STORE's Move
Originator AE Title and Message ID (PS3.7 9.1.1.1), so concurrent moves never mix.

It accepts every storage SOP class pynetdicom names, and any other class a retrieve is
about to bring (:meth:`StorageSCP.accept`: a private one, say), each in every transfer syntax
the gateway knows, preferring the stored (compressed) one when the PACS offers it with
uncompressed fallbacks in one context: instances arrive as stored, never transcoded.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterable
from typing import Any

from pynetdicom import AE, build_context, evt
from pynetdicom.transport import ThreadedAssociationServer

from ...config import DimseSite
from .contexts import ACCEPTED_SYNTAXES, KNOWN_STORAGE_CLASSES
from .pool import StoreSink, socket_setup

__all__ = ["StorageSCP"]

log = logging.getLogger(__name__)

_OUT_OF_RESOURCES = 0xA700
_NOT_EXPECTED = 0xC001  # "cannot understand": nobody asked for this instance


class StorageSCP:
    def __init__(self, site: DimseSite) -> None:
        self._site = site
        self._routes: dict[tuple[str, int], StoreSink] = {}
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self._classes: set[str] = set()

    def start(self) -> None:
        ae = AE(ae_title=self._site.calling_aet)
        ae.maximum_pdu_size = 0
        ae.dimse_timeout = self._site.dimse_timeout
        ae.network_timeout = self._site.dimse_timeout
        # Only the PACS we move from may store here: anyone else could plant instances.
        ae.require_calling_aet = [self._site.called_aet]
        for storage in KNOWN_STORAGE_CLASSES:
            ae.add_supported_context(storage, list(ACCEPTED_SYNTAXES))
        self._classes = set(KNOWN_STORAGE_CLASSES)
        self._server = ae.start_server(
            (self._site.store_host, self._site.store_port),
            block=False,
            evt_handlers=[
                (evt.EVT_CONN_OPEN, socket_setup(self._site.dimse_timeout)),
                (evt.EVT_C_STORE, self._on_store),
            ],
        )

    def accept(self, classes: Iterable[str]) -> None:
        """Accept these SOP classes too, from the next association on."""
        with self._lock:
            new = [c for c in dict.fromkeys(classes) if c not in self._classes]
            if not new or self._server is None:
                return
            self._classes.update(new)
            added = [build_context(c, list(ACCEPTED_SYNTAXES)) for c in new]
            # Rebound, not appended: each new association copies the list in its own thread.
            self._server.contexts = [*self._server.contexts, *added]

    def register(self, message_id: int, sink: StoreSink) -> None:
        with self._lock:
            self._routes[(self._site.calling_aet, message_id)] = sink

    def unregister(self, message_id: int) -> None:
        with self._lock:
            self._routes.pop((self._site.calling_aet, message_id), None)

    def _on_store(self, event: Any) -> int:
        request = event.request
        originator = str(getattr(request, "MoveOriginatorApplicationEntityTitle", "") or "").strip()
        message_id = getattr(request, "MoveOriginatorMessageID", None)
        if event.assoc.requestor.address != self._site.host and not _same_host(
            event.assoc.requestor.address, self._site.host
        ):
            log.warning("C-STORE from a host that is not the PACS refused")
            return _NOT_EXPECTED
        with self._lock:
            sink = self._routes.get((originator, int(message_id))) if message_id else None
        if sink is None:
            log.warning(
                "C-STORE for no pending C-MOVE (originator %r, id %r)", originator, message_id
            )
            return _NOT_EXPECTED
        try:
            return sink(event)
        except Exception:
            log.exception("storing a moved instance failed")
            return _OUT_OF_RESOURCES

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _same_host(address: str, host: str) -> bool:
    """True if ``address`` (the peer's IP) is one of ``host``'s addresses."""
    try:
        return address in {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
