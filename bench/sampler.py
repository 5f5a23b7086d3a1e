#!/usr/bin/env python3
"""A sampling profiler of every thread of a Python program, for ``run.py --profile DIR``.

    python bench/sampler.py OUT.txt -- -m ncpeh_dicomweb.cli serve --config FILE

Runs the module as ``python -m`` would, and every few milliseconds records the Python stack of
each of its threads (``sys._current_frames``); cProfile sees the main thread only, and the
gateway's DIMSE side runs in pynetdicom's threads. At exit it writes OUT.txt: the CPU seconds
of each kind of thread (/proc/self/task), then per kind the share of samples by innermost
function and line (self: a thread blocked shows the call it waits in, e.g. selectors.select)
and by function anywhere on the stack (cumulative); and OUT.txt.folded, the stacks in the
folded format of flamegraph.pl. Samples are of wall time, not CPU, and taken when a thread
lets the GIL go (a blocking call, or the switch interval): they show where threads wait, and
over-count the calls that release the GIL. So the main thread (the event loop) is also run
under cProfile: OUT.txt.prof, and its top functions by own time at the end of OUT.txt.
"""

from __future__ import annotations

import atexit
import collections
import cProfile
import io
import os
import pstats
import runpy
import sys
import threading
import time
from pathlib import Path
from types import FrameType

INTERVAL = 0.005  # seconds between samples
TOP = 25


def _where(frame: FrameType, line: int | None = None) -> str:
    """The function; with ``line``, the line it is at (a leaf: which call it waits in)."""
    code = frame.f_code
    path = code.co_filename
    for marker in ("site-packages/", "lib/python3", "ncpeh_dicomweb/"):
        if marker in path:
            path = path[path.index(marker) :].removeprefix("site-packages/")
            break
    return f"{code.co_name} ({path}:{code.co_firstlineno if line is None else line})"


def _thread_cpu() -> dict[int, float]:
    """CPU seconds (utime + stime) of each thread of this process, by native id."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _kind(name: str) -> str:
    """A thread's kind from its name: numbers dropped (asyncio_3, Thread-12 (...))."""
    return name.split(" (")[0].split("-")[0].rstrip("0123456789_ ") or "?"


def main() -> None:
    if len(sys.argv) < 5 or sys.argv[2] != "--" or sys.argv[3] != "-m":
        raise SystemExit("usage: sampler.py OUT -- -m MODULE [ARGS...]")
    out = Path(sys.argv[1])
    module, args = sys.argv[4], sys.argv[5:]
    stacks: collections.Counter[tuple[str, tuple[str, ...]]] = collections.Counter()
    stop = threading.Event()
    started = time.perf_counter()

    cpu: dict[int, tuple[str, float]] = {}  # native id: (kind, CPU seconds last seen)

    def account() -> None:
        kinds = {t.native_id: _kind(t.name) for t in threading.enumerate()}
        for tid, seconds in _thread_cpu().items():
            kind = kinds.get(tid) or cpu.get(tid, ("?", 0.0))[0]
            cpu[tid] = (kind, seconds)

    def sample() -> None:
        me = threading.get_ident()
        k = 0
        while not stop.wait(INTERVAL):
            k += 1
            if k % 20 == 0:
                account()
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                stack: list[str] = [_where(frame, frame.f_lineno)]
                f: FrameType | None = frame.f_back
                while f is not None:
                    stack.append(_where(f))
                    f = f.f_back
                stacks[_kind(names.get(ident, "?")), tuple(reversed(stack))] += 1

    def dump() -> None:
        stop.set()
        account()
        seconds = time.perf_counter() - started
        by_kind: dict[str, float] = collections.defaultdict(float)
        for kind, used in cpu.values():
            by_kind[kind] += used
        lines = [f"{seconds:.1f} s sampled every {INTERVAL * 1000:g} ms; CPU seconds by thread:"]
        lines += [f"{u:8.2f}  {k}" for k, u in sorted(by_kind.items(), key=lambda kv: -kv[1])]
        by_thread: dict[str, collections.Counter[tuple[str, ...]]] = {}
        for (thread, stack), n in stacks.items():
            by_thread.setdefault(thread, collections.Counter())[stack] += n
        for thread, counter in sorted(by_thread.items(), key=lambda kv: -sum(kv[1].values())):
            total = sum(counter.values())
            own: collections.Counter[str] = collections.Counter()
            cumulative: collections.Counter[str] = collections.Counter()
            for stack, n in counter.items():
                own[stack[-1]] += n
                for where in set(stack):
                    cumulative[where] += n
            lines += ["", f"== thread {thread}: {total} samples", "-- self:"]
            lines += [f"{100 * n / total:6.1f}%  {w}" for w, n in own.most_common(TOP)]
            lines += ["-- cumulative:"]
            lines += [f"{100 * n / total:6.1f}%  {w}" for w, n in cumulative.most_common(TOP)]
        out.write_text("\n".join(lines) + "\n")
        folded = Path(str(out) + ".folded")
        folded.write_text(
            "".join(f"{t};{';'.join(s)} {n}\n" for (t, s), n in stacks.items()),
        )

    profile = cProfile.Profile()

    def dump_profile() -> None:
        profile.disable()
        profile.dump_stats(str(out) + ".prof")
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(TOP * 2)
        with out.open("a") as f:
            f.write("\n== cProfile of the main thread (the event loop), by own time:\n")
            f.write(text.getvalue())

    atexit.register(dump_profile)  # atexit runs it after dump()
    atexit.register(dump)
    threading.Thread(target=sample, name="sampler", daemon=True).start()
    sys.argv = [module, *args]
    profile.enable()
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
