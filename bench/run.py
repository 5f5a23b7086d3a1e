#!/usr/bin/env python3
"""``make bench``: the gateway against the PACS reached directly, in one run, as ratios.

    python bench/run.py [--pacs-env var/orthanc/env] [--quick] [--only wado,qido,...]
                        [--workers N] [--results bench/results] [--update-readme]

Starts an Orthanc of its own (scripts/orthanc.sh, state in var/bench-orthanc, kept between
runs) with the ``large`` study (263 MB) and an ``xl`` one (526 MB; 1.05 GB with
``BENCH_LARGE=1``), unless ``--pacs-env`` names a running one. Then, each against the PACS
direct in the same run (the issue's list):

1. ``wado``: WADO-RS study retrieve of the xl study, one stream, through a DICOMweb site;
   gateway CPU seconds per GB (wado.py);
2. ``qido``: study, series and instance search latency with 1 and 32 clients, rate (qido.py);
3. ``metadata``: study metadata of the large study, cold and warm (metadata.py);
4. ``dimse``: the large study through a C-GET and a C-MOVE site, cold and warm, against a bare
   pynetdicom C-GET, dcmtk's getscu and Orthanc's DICOMweb (dimse.py);
5. ``wado`` too: peak gateway RSS streaming the large and the xl study (wado.py);
6. ``load``: 32 concurrent retrieves of the large study plus searches, with 1 and N workers
   (load.py).

Writes bench/results/bench-<date>.md and .json, prints the table; ``--update-readme`` puts it
in README.md's Performance section. Exit status 0 whether targets are met or not (the table
says); 1 if a measurement could not be made.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import dimse
import load
import metadata
import pacs as pacs_mod
import qido
import report
import wado
from common import (
    ROOT,
    Gateway,
    StudyRef,
    curl_get,
    dicomweb_site,
    env_file,
    free_port,
    fresh_dir,
    gateway_config,
    log,
    running,
)
from report import Row, at_least, at_most

MEASUREMENTS = ("wado", "qido", "metadata", "dimse", "load")
RSS_LIMIT_MB = 200.0  # the bound for the 1 GB study
RSS_FLAT_MB = 16.0  # "flat": the big study's peak at most this much above the large one's


@dataclasses.dataclass(frozen=True)
class Plan:
    """How many of each: the defaults keep a run near 5 minutes on 2 cores (repeats enough
    that the machine's noise, ±0.05 on a ratio, does not decide a target alone)."""

    wado_pairs: int = 11
    rss_trials: int = 2
    qido_rounds: int = 2
    qido_single: int = 500  # requests per search and target, 1 client...
    qido_single_seconds: float = 10.0  # ...or fewer if these seconds are over (instance search)
    qido_concurrent: int = 32
    qido_seconds: float = 4.0  # per search and target, 32 clients
    metadata_trials: int = 3  # cold: a fresh gateway each
    metadata_warm: int = 10
    metadata_direct: int = 3  # per trial
    dimse_trials: int = 3
    dimse_warm: int = 2
    load_clients: int = 32
    load_searchers: int = 4


QUICK = Plan(
    wado_pairs=1,
    rss_trials=1,
    qido_rounds=1,
    qido_single=20,
    qido_single_seconds=2.0,
    qido_seconds=1.0,
    metadata_trials=1,
    metadata_warm=3,
    metadata_direct=2,
    dimse_trials=1,
    dimse_warm=1,
    load_clients=8,
    load_searchers=2,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pacs-env", type=Path, help="env file of a running Orthanc (orthanc.sh)")
    p.add_argument("--state-dir", type=Path, default=ROOT / "var" / "bench-orthanc")
    p.add_argument("--work", type=Path, default=ROOT / "var" / "bench", help="gateways' dirs")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--quick", action="store_true", help="one trial of each (a smoke test)")
    p.add_argument("--only", default=",".join(MEASUREMENTS), help="comma-separated subset")
    p.add_argument("--workers", type=int, default=max(2, os.cpu_count() or 2))
    p.add_argument(
        "--xl-instances",
        type=int,
        default=2000 if os.environ.get("BENCH_LARGE") == "1" else 1000,
        help="slices of the xl study (512x512): 1000 = 526 MB; BENCH_LARGE=1: 2000 = 1.05 GB",
    )
    p.add_argument("--load-missing", action="store_true", help="load studies into --pacs-env's")
    p.add_argument(
        "--profile", type=Path, help="run the gateways under bench/sampler.py, reports here"
    )
    p.add_argument("--update-readme", action="store_true")
    args = p.parse_args(argv)
    args.only = [m for m in args.only.split(",") if m]
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown:
        p.error(f"--only: unknown {sorted(unknown)} (of {', '.join(MEASUREMENTS)})")
    return args


class Gateways:
    """Gateway processes for the measurements, each in a fresh dir under ``work``."""

    def __init__(self, work: Path, direct_root: str, profile: Path | None) -> None:
        self.work, self.direct_root, self.profile = work, direct_root, profile
        self.started = 0

    def _dir(self, label: str) -> Path:
        self.started += 1
        return fresh_dir(self.work / f"{self.started:02d}-{label}")

    def web(self, label: str, workers: int = 1) -> Gateway:
        work, port = self._dir(label), free_port()
        sites = dicomweb_site("web", self.direct_root)
        config = gateway_config(work, port, sites, default_site="web", workers=workers)
        return Gateway(work, config, port, workers, profile=self._profile(label))

    def dimse(self, label: str, env: dict[str, str], store_port: int) -> Gateway:
        work, port = self._dir(label), free_port()
        host, dicom_port, aet = "127.0.0.1", int(env["ORTHANC_DICOM_PORT"]), env["ORTHANC_AET"]
        config = dimse.dimse_config(work, port, host, dicom_port, aet, store_port)
        return Gateway(work, config, port, 1, profile=self._profile(label))

    def _profile(self, label: str) -> Path | None:
        if self.profile is None:
            return None
        self.profile.mkdir(parents=True, exist_ok=True)
        return self.profile / f"{self.started:02d}-{label}.txt"


def _mb(n: float) -> str:
    return f"{n:.0f} MB/s"


def rows_of(raw: dict[str, Any], workers: int) -> list[Row]:
    rows: list[Row] = []
    if "wado" in raw:
        w = raw["wado"]
        size = w["study_bytes"] / 1e6
        rows.append(
            Row(
                "wado.throughput",
                1,
                f"WADO-RS study retrieve, one stream, DICOMweb site ({size:.0f} MB): "
                "throughput gateway / direct",
                _mb(w["gateway_median_mb_s"]),
                _mb(w["direct_median_mb_s"]),
                w["ratio"],
                "≥ 0.95",
                at_least(w["ratio"], 0.95),
            )
        )
        orthanc = w["orthanc_cpu_s_per_gb"]
        rows.append(
            Row(
                "wado.cpu_per_gb",
                1,
                "Gateway CPU seconds per GB streamed (baseline: Orthanc's own, direct)",
                f"{w['gateway_cpu_s_per_gb']:.2f} s/GB (user {w['gateway_user_s_per_gb']:.2f}, "
                f"system {w['gateway_system_s_per_gb']:.2f})",
                f"{orthanc:.2f} s/GB" if orthanc is not None else "—",
                None,
                "",
                None,
            )
        )
    if "qido" in raw:
        q = raw["qido"]
        for search in ("study", "series", "instance"):
            one, many = q[search]["c1"], q[search][f"c{q['concurrent']}"]
            g1, d1, gm, dm = one["gateway"], one["direct"], many["gateway"], many["direct"]
            rows.append(
                Row(
                    f"qido.{search}.p50",
                    2,
                    f"QIDO {search} search, 1 client: p50 time gateway / direct (p99 ratio "
                    f"{one['ratio_p99']:.2f}"
                    + (
                        f"; gateway CPU {g1['server_cpu_ms_per_request']:.1f} ms a search)"
                        if g1.get("server_cpu_ms_per_request")
                        else ")"
                    ),
                    f"{g1['p50_ms']:.1f} ms (p99 {g1['p99_ms']:.1f})",
                    f"{d1['p50_ms']:.1f} ms (p99 {d1['p99_ms']:.1f})",
                    one["ratio_p50"],
                    "≤ 1.1",
                    at_most(one["ratio_p50"], 1.1),
                )
            )
            rows.append(
                Row(
                    f"qido.{search}.rate",
                    2,
                    f"QIDO {search} search, {q['concurrent']} clients: request rate "
                    f"gateway / direct (p50 ratio {many['ratio_p50']:.2f}, "
                    f"p99 {many['ratio_p99']:.2f})",
                    f"{gm['rate_per_s']:.0f}/s (p50 {gm['p50_ms']:.0f}, p99 {gm['p99_ms']:.0f} ms)",
                    f"{dm['rate_per_s']:.0f}/s (p50 {dm['p50_ms']:.0f}, p99 {dm['p99_ms']:.0f} ms)",
                    many.get("ratio_rate"),
                    "≥ 0.9",
                    at_least(many.get("ratio_rate"), 0.9),
                )
            )
            rows.append(
                Row(
                    f"qido.{search}.errors",
                    2,
                    f"QIDO {search} search, {q['concurrent']} clients: errors "
                    f"(of {gm['requests']} requests)",
                    str(gm["errors"]),
                    str(dm["errors"]),
                    float(gm["errors"]),
                    "0",
                    gm["errors"] == 0,
                    is_ratio=False,
                )
            )
    if "metadata" in raw:
        m = raw["metadata"]
        rows.append(
            Row(
                "metadata.cold",
                3,
                f"WADO-RS study metadata ({m['instances']} instances), cold: "
                "speed gateway / direct",
                f"{m['cold_ms']:.0f} ms",
                f"{m['direct_ms']:.0f} ms",
                m["cold_speedup"],
                "",
                None,
            )
        )
        rows.append(
            Row(
                "metadata.warm",
                3,
                "WADO-RS study metadata, warm (cached): speed gateway / direct",
                f"{m['warm_ms']:.1f} ms",
                f"{m['direct_ms']:.0f} ms",
                m["warm_speedup"],
                "≥ 5",
                at_least(m["warm_speedup"], 5.0),
            )
        )
    if "dimse" in raw:
        d = raw["dimse"]
        s, r = d["mb_s"], d["ratio"]
        size = d["study_bytes"] / 1e6
        for method, label in (("get", "C-GET"), ("move", "C-MOVE")):
            for base, base_label, bound in (
                ("pynetdicom", "a bare pynetdicom C-GET", 1.0),
                ("getscu", "dcmtk getscu (to disk)", 0.5),
            ):
                ratio = r[f"{method}_vs_{base}"]
                cpu = d.get("cpu_s_per_gb", {})
                spent = ""
                if base == "pynetdicom" and method in cpu and base in cpu:
                    g, p = cpu[method], cpu[base]
                    spent = (
                        f" (CPU s/GB: gateway {g['user'] + g['system']:.1f}, "
                        f"pynetdicom {p['user'] + p['system']:.1f})"
                    )
                rows.append(
                    Row(
                        f"dimse.{method}.cold_vs_{base}",
                        4,
                        f"DIMSE {label} site, cold ({size:.0f} MB): throughput / {base_label}"
                        + spent,
                        _mb(s[method]),
                        _mb(s[base]),
                        ratio,
                        f"≥ {bound:g}",
                        at_least(ratio, bound),
                    )
                )
        for method, label in (("get", "C-GET"), ("move", "C-MOVE")):
            fraction = d["first_part_fraction"].get(method)
            rows.append(
                Row(
                    f"dimse.{method}.first_part",
                    4,
                    f"DIMSE {label} site, cold: time to first part / total",
                    f"{d['first_part_s'][method] * 1000:.0f} ms of {d['median_s'][method]:.2f} s",
                    "",
                    fraction,
                    "< 0.05",
                    None if fraction is None else fraction < 0.05,
                )
            )
        rows.append(
            Row(
                "dimse.warm",
                4,
                "DIMSE site, warm (from the cache): throughput / Orthanc's DICOMweb direct"
                + (
                    f" (gateway {sum(d['cpu_s_per_gb']['warm'].values()):.1f} CPU s/GB)"
                    if "warm" in d.get("cpu_s_per_gb", {})
                    else ""
                ),
                _mb(s["warm"]),
                _mb(s["dicomweb"]),
                r["warm_vs_dicomweb"],
                "≥ 0.95",
                at_least(r["warm_vs_dicomweb"], 0.95),
            )
        )
    if "rss" in raw:
        rss = raw["rss"]
        large, big = rss["large"], rss["xl"]
        big_mb = big["study_bytes"] / 1e6
        rows.append(
            Row(
                "rss.peak",
                5,
                f"Peak gateway RSS streaming the {big_mb:.0f} MB study"
                + (" (the target is for 1 GB: BENCH_LARGE=1)" if big_mb < 1000 else ""),
                f"{big['peak_rss_mb']:.0f} MB",
                "",
                big["peak_rss_mb"],
                f"< {RSS_LIMIT_MB:.0f} MB",
                big["peak_rss_mb"] < RSS_LIMIT_MB,
                is_ratio=False,
            )
        )
        growth = big["peak_rss_mb"] - large["peak_rss_mb"]
        same = big["study_bytes"] == large["study_bytes"]
        rows.append(
            Row(
                "rss.growth",
                5,
                f"Peak RSS growth from the {large['study_bytes'] / 1e6:.0f} MB study to the "
                f"{big_mb:.0f} MB one (baseline: the peak with the smaller study)",
                f"{growth:+.1f} MB (peak {big['peak_rss_mb']:.0f} MB)",
                f"{large['peak_rss_mb']:.0f} MB",
                None if same else round(growth, 1),
                f"flat (≤ +{RSS_FLAT_MB:.0f} MB)",
                None if same else growth <= RSS_FLAT_MB,
                is_ratio=False,
            )
        )
    if "load" in raw:
        lo = raw["load"]
        direct = lo["direct"]
        for key, label in (("w1", "1 worker"), (f"w{workers}", f"{workers} workers")):
            if key not in lo:
                continue
            g = lo[key]
            ratio = g["mb_s"] / direct["mb_s"]
            rows.append(
                Row(
                    f"load.{key}.throughput",
                    6,
                    f"{lo['clients']} concurrent study retrieves + searches, {label}: "
                    f"aggregate throughput gateway / direct ({g['gateway_cpu_s_per_gb']:.2f} "
                    f"CPU s/GB, peak RSS {g['peak_rss_mb']:.0f} MB per process)",
                    _mb(g["mb_s"]),
                    _mb(direct["mb_s"]),
                    round(ratio, 3),
                    "",
                    None,
                )
            )
            rows.append(
                Row(
                    f"load.{key}.errors",
                    6,
                    f"{lo['clients']} concurrent retrieves + searches, {label}: errors "
                    f"(searches: {g['search_rate_per_s']:.0f}/s, direct "
                    f"{direct['search_rate_per_s']:.0f}/s)",
                    str(g["errors"]),
                    str(direct["errors"]),
                    float(g["errors"]),
                    "0",
                    g["errors"] == 0,
                    is_ratio=False,
                )
            )
    return rows


def _sized(root: str, study: StudyRef) -> StudyRef:
    got = curl_get(study.url(root))
    if not got.ok:
        raise RuntimeError(f"retrieve of {study.uid} from {root} failed: {got}")
    return dataclasses.replace(study, size=got.size)


def _phase(timings: dict[str, float], name: str, work: Callable[[], Any]) -> Any:
    log(f"--- {name}")
    started = time.perf_counter()
    try:
        return work()
    finally:
        timings[name] = round(time.perf_counter() - started, 1)
        log(f"--- {name}: {timings[name]} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else Plan()
    started = time.perf_counter()
    started_at = dt.datetime.now().isoformat(timespec="seconds")
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed (apt-get install curl)")
    if args.pacs_env:
        the_pacs = pacs_mod.Pacs(env_file(args.pacs_env), None)
    else:
        the_pacs = pacs_mod.start(args.state_dir)
    raw: dict[str, Any] = {}
    timings: dict[str, float] = {}
    try:
        found = pacs_mod.studies(
            the_pacs, args.xl_instances, may_load=args.pacs_env is None or args.load_missing
        )
        direct = the_pacs.dicomweb_root
        large, big = _sized(direct, found["large"]), _sized(direct, found["xl"])
        raw["studies"] = {
            name: {"uid": s.uid, "instances": s.instances, "wado_bytes": s.size}
            for name, s in (("large", large), ("xl", big))
        }
        paths = qido.searches(large, pacs_mod.LARGE_PATIENT)
        gateways = Gateways(fresh_dir(args.work), direct, args.profile)
        raw["plan"] = dataclasses.asdict(plan)
        _measure(args, plan, the_pacs, gateways, large, big, paths, raw, timings)
    finally:
        if args.pacs_env is None:
            pacs_mod.stop(the_pacs)
        for cache in args.work.glob("*/cache-*"):  # the DIMSE caches; logs are kept
            shutil.rmtree(cache, ignore_errors=True)
    rows = rows_of(raw, args.workers)
    seconds = time.perf_counter() - started
    command = _command_line(argv)
    if os.environ.get("MAKELEVEL"):  # make bench [BENCH_ARGS=...], as the user typed it
        command = "make bench"
        shown = [a for a in shlex.split(os.environ.get("BENCH_ARGS", "")) if a != "--update-readme"]
        if shown:
            command += f" BENCH_ARGS={shlex.quote(shlex.join(shown))}"
    if os.environ.get("BENCH_LARGE") == "1":
        command = "BENCH_LARGE=1 " + command
    variant = "-1gb" if args.xl_instances >= 2000 else ""
    if args.only != list(MEASUREMENTS):
        variant += "-" + "-".join(args.only)
    meta = {
        "date": dt.date.today().isoformat(),
        "variant": variant + ("-quick" if args.quick else ""),  # of the file names
        "started": started_at,
        "command": command,
        "seconds": round(seconds, 1),
        "phases_s": timings,
        "machine": f"{os.cpu_count()} cores, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"Orthanc {the_pacs.env.get('ORTHANC_VERSION', '?')} "
        f"(DICOMweb {the_pacs.env.get('ORTHANC_DICOMWEB_VERSION', '?')})",
        "loadavg_start": load_start,
        "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "quick": args.quick,
        "xl_instances": args.xl_instances,
        "workers": args.workers,
    }
    notes = _notes(raw, plan, args)
    md, js = report.write(args.results, rows, meta, raw, notes)
    print(report.table(rows))
    log(f"wrote {md} and {js} ({seconds:.0f} s)")
    if args.update_readme and not report.update_readme(ROOT / "README.md", rows, meta):
        log("README.md has no bench table markers: not updated")
    return 0


def _command_line(argv: list[str] | None) -> str:
    words = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "bench/run.py", *words])


def _measure(
    args: argparse.Namespace,
    plan: Plan,
    the_pacs: pacs_mod.Pacs,
    gateways: Gateways,
    large: StudyRef,
    big: StudyRef,
    paths: dict[str, str],
    raw: dict[str, Any],
    timings: dict[str, float],
) -> None:
    direct = the_pacs.dicomweb_root
    if "wado" in args.only or "qido" in args.only:
        with running(gateways.web("web")) as gw:
            if "wado" in args.only:
                raw["wado"] = _phase(
                    timings,
                    "wado",
                    lambda: wado.throughput(direct, gw, the_pacs.pid, big, plan.wado_pairs),
                )
                raw["rss"] = _phase(
                    timings,
                    "rss",
                    lambda: wado.peak_rss(gw, {"large": large, "xl": big}, plan.rss_trials),
                )
            if "qido" in args.only:

                def run_qido() -> dict[str, Any]:
                    out = asyncio.run(
                        qido.measure(
                            {"direct": direct, "gateway": gw.root()},
                            paths,
                            rounds=plan.qido_rounds,
                            single_requests=plan.qido_single,
                            single_seconds=plan.qido_single_seconds,
                            concurrent=plan.qido_concurrent,
                            concurrent_seconds=plan.qido_seconds,
                            gateway_pids=gw.pids(),
                        )
                    )
                    out["concurrent"] = plan.qido_concurrent
                    return out

                raw["qido"] = _phase(timings, "qido", run_qido)
    if "metadata" in args.only:
        raw["metadata"] = _phase(
            timings,
            "metadata",
            lambda: asyncio.run(
                metadata.measure(
                    direct,
                    lambda k: gateways.web(f"metadata-{k}"),
                    large,
                    pacs_mod.LARGE_PATIENT,
                    trials=plan.metadata_trials,
                    warm=plan.metadata_warm,
                    direct_repeat=plan.metadata_direct,
                )
            ),
        )
    if "dimse" in args.only:
        store_port = free_port()
        dimse.register_move_destination(the_pacs.url, store_port)
        try:
            raw["dimse"] = _phase(
                timings,
                "dimse",
                lambda: dimse.measure(
                    the_pacs.env,
                    lambda k: gateways.dimse(f"dimse-{k}", the_pacs.env, store_port),
                    large,
                    pacs_mod.LARGE_PATIENT,
                    trials=plan.dimse_trials,
                    warm=plan.dimse_warm,
                ),
            )
        finally:
            dimse.forget_move_destination(the_pacs.url)
    if "load" in args.only:
        raw["load"] = _phase(timings, "load", lambda: _load(args, plan, direct, gateways, large))


def _load(
    args: argparse.Namespace, plan: Plan, direct: str, gateways: Gateways, study: StudyRef
) -> dict[str, Any]:
    searches = list(qido.searches(study, pacs_mod.LARGE_PATIENT).values())
    clients, searchers = plan.load_clients, plan.load_searchers
    out: dict[str, Any] = {"clients": clients, "searchers": searchers}
    out["direct"] = load.measure(direct, study, searches, clients=clients, searchers=searchers)
    for workers in (1, args.workers):
        with running(gateways.web(f"load-w{workers}", workers)) as gw:
            out[f"w{workers}"] = load.measure(
                gw.root(), study, searches, clients=clients, searchers=searchers, gateway=gw
            )
    return out


def _notes(raw: dict[str, Any], plan: Plan, args: argparse.Namespace) -> list[str]:
    notes = [
        f"Repeats: WADO {plan.wado_pairs} direct/gateway pairs (median of the pair ratios); "
        f"QIDO {plan.qido_single} requests per search and target with 1 client (or as many "
        f"as {plan.qido_single_seconds:g} s allow), "
        f"{plan.qido_seconds:g} s with {plan.qido_concurrent} clients, in {plan.qido_rounds} "
        f"alternating rounds; metadata {plan.metadata_trials} cold trials (a fresh gateway "
        f"each) with {plan.metadata_warm} warm requests each, {plan.metadata_direct} direct "
        f"per trial; DIMSE {plan.dimse_trials} trials (a fresh gateway and cache each, "
        f"{plan.dimse_warm} warm); load: {plan.load_clients} retrieves + "
        f"{plan.load_searchers} search clients, once per configuration.",
    ]
    studies = raw.get("studies", {})
    if studies and studies["large"]["uid"] == studies["xl"]["uid"]:
        notes.append("No xl study in this PACS: the large study stood in for it (no growth).")
    if "qido" in raw:
        notes.append(f"QIDO client CPU seconds (bench process): {raw['qido']['client_cpu_s']}.")
    if args.xl_instances < 2000:
        notes.append("The RSS target names the 1 GB study: `BENCH_LARGE=1 make bench` streams it.")
    return notes


if __name__ == "__main__":
    sys.exit(main())
