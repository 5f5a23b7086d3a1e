"""What any process between client and PACS costs on this machine: the floor under figure 1.

A one-connection-at-a-time TCP relay in front of Orthanc's HTTP port, in two modes, against
Orthanc reached directly, alternating, by curl (the same study retrieve as the bench):

- ``splice``: bytes move from one socket to the other inside the kernel (``os.splice``
  through a pipe): no HTTP parsing, no copy into Python. No gateway can be cheaper.
- ``copy``: the same relay with ``recv_into`` / ``send`` of a 4 MiB buffer: the cheapest
  a process that looks at the bytes can be.

    python bench/relay_floor.py --pacs-env var/orthanc/env --study UID [--pairs 7]

Prints the median throughput ratio relay / direct of each mode, and the relay's CPU
seconds per GB (its process's user + system time around the relayed transfers). A gateway
must parse the multipart answer, relabel its parts and frame its own response, so it can
only be slower than ``copy``; the ratio ``splice`` reaches says what a 3-process, 2-core
machine allows.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import threading
from pathlib import Path

from common import AS_STORED, curl_get

_PIPE = 1 << 20
_BUFFER = 4 << 20


def _env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition("=")
        out[key.strip()] = value.strip().strip('"')
    return out


def _splice_all(source: socket.socket, sink: socket.socket) -> None:
    read_end, write_end = os.pipe()
    try:
        while True:
            moved = os.splice(source.fileno(), write_end, _PIPE)
            if moved == 0:
                return
            while moved:
                moved -= os.splice(read_end, sink.fileno(), moved)
    finally:
        os.close(read_end)
        os.close(write_end)


def _copy_all(source: socket.socket, sink: socket.socket) -> None:
    buffer = bytearray(_BUFFER)
    view = memoryview(buffer)
    while n := source.recv_into(buffer):
        sink.sendall(view[:n])


def _relay(client: socket.socket, upstream: tuple[str, int], mode: str) -> None:
    with client, socket.create_connection(upstream) as pacs:
        for s in (client, pacs):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The request is small: wait for its head, pass it on, then the answer until close
        # (Orthanc closes the connection after a DICOMweb retrieve).
        request = b""
        while b"\r\n\r\n" not in request:
            select.select([client], [], [])
            chunk = client.recv(65536)
            if not chunk:
                return
            request += chunk
        request = request.replace(b"Connection: keep-alive", b"Connection: close")
        pacs.sendall(request)
        (_splice_all if mode == "splice" else _copy_all)(pacs, client)


def _serve(listener: socket.socket, upstream: tuple[str, int], mode: list[str]) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        _relay(client, upstream, mode[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pacs-env", type=Path, default=Path("var/orthanc/env"))
    parser.add_argument("--study", required=True)
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    env = _env(args.pacs_env)
    host, port = env["ORTHANC_HOST"], int(env["ORTHANC_HTTP_PORT"])
    listener = socket.create_server(("127.0.0.1", 0))
    mode = ["splice"]
    threading.Thread(target=_serve, args=(listener, (host, port), mode), daemon=True).start()
    relay_port = listener.getsockname()[1]
    path = f"/dicom-web/studies/{args.study}"
    for name in ("splice", "copy"):
        mode[0] = name
        ratios = []
        cpu = relayed_bytes = 0.0
        for _ in range(args.pairs):
            direct = curl_get(f"http://{host}:{port}{path}", AS_STORED)
            before = os.times()
            relayed = curl_get(f"http://127.0.0.1:{relay_port}{path}", AS_STORED)
            after = os.times()
            cpu += (after.user - before.user) + (after.system - before.system)
            relayed_bytes += relayed.size
            assert relayed.size == direct.size, (relayed.size, direct.size)
            ratios.append(direct.seconds / relayed.seconds)
        print(
            f"{name}: relay / direct throughput, median of {args.pairs}: "
            f"{statistics.median(ratios):.2f} ({', '.join(f'{r:.2f}' for r in ratios)}); "
            f"relay CPU {cpu / (relayed_bytes / 1e9):.2f} s/GB"
        )
    listener.close()


if __name__ == "__main__":
    main()
