#!/usr/bin/env python3
"""The NCPeH page's three FHIR searches through the gateway against the same searches' QIDO
pushed down alone (to the PACS directly), in the same run: p50 latency and the ratio; and what
each FHIR interaction costs in PACS requests (counted by the gateway: /health/stats), the first
time (cold: no metadata cached) and again (warm).

    python bench/fhir_bench.py --pacs-env var/orthanc/env [--repeat 30]

Needs the `core` sample set (the Czech patient 456789123). The gateway runs with one DICOMweb
site in front of the Orthanc of the env file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from common import env_file, free_port

SEARCHES = {
    "started-2024": (
        "patient.identifier=|456789123&started=ge2024-01-01&started=le2024-12-31",
        "PatientID=456789123&StudyDate=20240101-20241231",
    ),
    "reason-90708001": (
        "patient.identifier=|456789123&reasonCode=|90708001",
        "PatientID=456789123",
    ),
    "modality-MR": (
        "patient.identifier=|456789123&modality=MR",
        "PatientID=456789123&ModalitiesInStudy=MR",
    ),
}


# Further FHIR interactions whose PACS cost is counted (no QIDO twin to compare with).
OTHERS = {
    "read-imaging-study": "ImagingStudy/{study}",
    "selection-by-patient": "ImagingSelection?patient={patient}",
    "selection-by-study": "ImagingSelection?study-uid={study}",
    "read-patient": "{patient}",
}


def _pacs_requests(base: str, session: requests.Session) -> int:
    stats = session.get(f"{base}/health/stats", timeout=10).json()
    return int(stats["sites"]["main"]["pacs_requests"])


def _cost(base: str, url: str, session: requests.Session) -> int:
    before = _pacs_requests(base, session)
    session.get(url, timeout=60).raise_for_status()
    return _pacs_requests(base, session) - before


def _p50(url: str, repeat: int, session: requests.Session) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = session.get(url, timeout=60)
        answer.raise_for_status()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pacs-env", type=Path, default=Path("var/orthanc/env"))
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    direct = env_file(args.pacs_env)["DICOMWEB_ROOT"]
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="fhir-bench-"))
    config = work / "gateway.toml"
    config.write_text(
        f'[server]\nport = {port}\n[[sites]]\nid = "main"\nurl = "{direct}"\n'
        f'[state]\nsqlite = "{work / "state.sqlite3"}"\n'
    )
    gateway = subprocess.Popen(
        [sys.executable, "-m", "ncpeh_dicomweb.cli", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        result: dict[str, dict[str, object]] = {}
        base = f"http://127.0.0.1:{port}"
        with requests.Session() as session:
            for name, (fhir, qido) in SEARCHES.items():
                fhir_url = f"{base}/fhir/ImagingStudy?{fhir}"
                qido_url = f"{direct}/studies?{qido}"
                cold = _cost(base, fhir_url, session)
                warm = _cost(base, fhir_url, session)
                _p50(fhir_url, 2, session)  # warm both
                _p50(qido_url, 2, session)
                gw, pacs = (
                    _p50(fhir_url, args.repeat, session),
                    _p50(qido_url, args.repeat, session),
                )
                total = session.get(fhir_url, timeout=60).json()["total"]
                result[name] = {
                    "matches": total,
                    "fhir_p50_ms": round(gw, 1),
                    "qido_direct_p50_ms": round(pacs, 1),
                    "ratio": round(gw / pacs, 1),
                    "pacs_requests_cold": cold,
                    "pacs_requests_warm": warm,
                }
            found = session.get(f"{base}/fhir/ImagingStudy?{SEARCHES['modality-MR'][0]}").json()
            study = found["entry"][0]["resource"]
            names = {"study": study["id"], "patient": study["subject"]["reference"]}
            for name, path in OTHERS.items():
                url = f"{base}/fhir/{path.format(**names)}"
                cold = _cost(base, url, session)
                warm = _cost(base, url, session)
                result[name] = {
                    "fhir_p50_ms": round(_p50(url, args.repeat, session), 1),
                    "pacs_requests_cold": cold,
                    "pacs_requests_warm": warm,
                }
    finally:
        gateway.terminate()
        gateway.wait(10)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
