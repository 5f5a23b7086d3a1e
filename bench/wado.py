"""(1) WADO-RS study retrieve, one stream: gateway (DICOMweb site) / Orthanc direct, and the
gateway's CPU seconds per GB streamed; (5) the gateway's peak RSS while streaming, for the
``large`` study and the big one.

Each trial is a pair, direct then gateway, one curl each (the client writes to /dev/null):
pairs cancel the drift of a shared machine, and the ratio is the median of the pairs' ratios.
CPU is utime + stime from /proc/PID/stat of the gateway's processes, read around the gateway's
transfers only; Orthanc's is read the same way around the direct ones.
"""

from __future__ import annotations

from typing import Any

from common import (
    Gateway,
    StudyRef,
    Transfer,
    cpu_seconds,
    cpu_split,
    curl_get,
    log,
    median,
    reset_peak,
    status_kb,
)


def _check(transfer: Transfer, what: str, want: int | None) -> int:
    """1 if the transfer failed or its size is not the one seen before (a cut stream)."""
    if not transfer.ok or (want is not None and abs(transfer.size - want) > want // 100):
        log(f"{what}: failed ({transfer})")
        return 1
    return 0


def throughput(
    direct_root: str, gateway: Gateway, orthanc_pid: int | None, study: StudyRef, pairs: int
) -> dict[str, Any]:
    direct_url, gateway_url = study.url(direct_root), study.url(gateway.root())
    # Warm both: Orthanc's files in the page cache, the gateway's connections and allocator.
    reference = curl_get(direct_url)
    gw_reference = curl_get(gateway_url)
    errors = _check(reference, "direct retrieve", None) + _check(gw_reference, "gateway", None)
    direct: list[Transfer] = []
    through: list[Transfer] = []
    gw_user = gw_sys = pacs_cpu = 0.0
    for _ in range(pairs):
        before = cpu_seconds([orthanc_pid]) if orthanc_pid else 0.0
        direct.append(curl_get(direct_url))
        pacs_cpu += (cpu_seconds([orthanc_pid]) - before) if orthanc_pid else 0.0
        errors += _check(direct[-1], "direct retrieve", reference.size)
        pids = gateway.pids()
        user, system = cpu_split(pids)
        through.append(curl_get(gateway_url))
        after = cpu_split(pids)
        gw_user += after[0] - user
        gw_sys += after[1] - system
        errors += _check(through[-1], "gateway retrieve", gw_reference.size)
    gw_cpu = gw_user + gw_sys
    gw_bytes = sum(t.size for t in through)
    direct_bytes = sum(t.size for t in direct)
    ratios = [d.seconds / g.seconds for d, g in zip(direct, through, strict=True)]
    return {
        "study_bytes": reference.size,
        "pairs": pairs,
        "direct_mb_s": [round(t.size / t.seconds / 1e6, 1) for t in direct],
        "gateway_mb_s": [round(t.size / t.seconds / 1e6, 1) for t in through],
        "direct_median_mb_s": round(median([t.size / t.seconds / 1e6 for t in direct]), 1),
        "gateway_median_mb_s": round(median([t.size / t.seconds / 1e6 for t in through]), 1),
        "ratio": round(median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "gateway_cpu_s_per_gb": round(gw_cpu / (gw_bytes / 1e9), 3) if gw_bytes else None,
        # user: Python (parsing, the event loop); system: the kernel (socket copies)
        "gateway_user_s_per_gb": round(gw_user / (gw_bytes / 1e9), 3) if gw_bytes else None,
        "gateway_system_s_per_gb": round(gw_sys / (gw_bytes / 1e9), 3) if gw_bytes else None,
        "orthanc_cpu_s_per_gb": (
            round(pacs_cpu / (direct_bytes / 1e9), 3) if orthanc_pid and direct_bytes else None
        ),
        "errors": errors,
    }


def peak_rss(gateway: Gateway, studies: dict[str, StudyRef], trials: int) -> dict[str, Any]:
    """Peak RSS (VmHWM after clear_refs) of the serving process while streaming each study."""
    out: dict[str, Any] = {}
    for name, study in studies.items():
        peaks, bases = [], []
        for _ in range(trials):
            pids = gateway.serving_pids()
            reset_peak(pids)
            bases.append(max(status_kb(p, "VmRSS") for p in pids) / 1024)
            transfer = curl_get(study.url(gateway.root()))
            if not transfer.ok:
                log(f"rss: retrieve of {name} failed ({transfer})")
            peaks.append(max(status_kb(p, "VmHWM") for p in pids) / 1024)
        out[name] = {
            "study_bytes": study.size,
            "rss_before_mb": round(max(bases), 1),
            "peak_rss_mb": round(max(peaks), 1),
        }
    return out
