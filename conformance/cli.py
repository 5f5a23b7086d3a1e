"""``ncpeh-dicomweb conformance`` / ``python -m conformance``: run the checks against an endpoint.

Exit codes: 0 every MUST check passed (or was skipped); 1 a MUST check failed or errored;
2 a usage error (bad option, no check selected, the token command failed, a report that
cannot be written); 3 every MUST passed but ``--check-status`` found the conformance statement
drifting from this run; 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["add_arguments", "main", "run_args"]

DESCRIPTION = "Check a DICOMweb (PS3.18) and NCPeH FHIR endpoint; report per check."
EXIT_USAGE = 2
EXIT_DRIFT = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The harness's options, on ``parser`` (ours, or the gateway CLI's subcommand)."""
    parser.add_argument("--base-url", required=True, metavar="URL", help="the DICOMweb root")
    parser.add_argument(
        "--fhir-url", metavar="URL", help="the FHIR base (FHIR checks skip without)"
    )
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", metavar="TOKEN", help="bearer token sent with every request")
    token.add_argument(
        "--token-command",
        metavar="CMD",
        help="shell command printing the bearer token on stdout (e.g. fetching one from an IdP)",
    )
    parser.add_argument("--study", metavar="UID", help="the test study (default: found by QIDO)")
    parser.add_argument("--patient", metavar="ID", help="its PatientID (default: read from it)")
    parser.add_argument(
        "--timeout", type=_positive, default=30.0, metavar="S", help="seconds per request (30)"
    )
    parser.add_argument(
        "--check-timeout",
        type=_positive,
        metavar="S",
        help="seconds per check, all its requests (default: 4 x --timeout)",
    )
    parser.add_argument(
        "--max-body",
        type=_byte_count,
        default=512 * 1024 * 1024,
        metavar="BYTES",
        help="bytes read from one answer before giving up (512 MiB)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        default=[],
        metavar="GLOB",
        help="run only these checks: an area (qido), an id glob (wado.*) or an id prefix",
    )
    parser.add_argument(
        "--skip", nargs="+", action="extend", default=[], metavar="GLOB", help="leave these out"
    )
    parser.add_argument(
        "--report-dir", metavar="DIR", help="write report.md, junit.xml and results.json here"
    )
    status = parser.add_mutually_exclusive_group()
    status.add_argument(
        "--write-status", metavar="PATH", help="write the conformance statement (STATUS.md)"
    )
    status.add_argument(
        "--check-status",
        metavar="PATH",
        help=f"exit {EXIT_DRIFT} when this conformance statement differs from the run",
    )
    parser.add_argument(
        "--concurrency", type=int, default=4, metavar="N", help="checks run at once (4)"
    )
    parser.add_argument("--list", action="store_true", help="list the selected checks and exit")
    parser.add_argument("--quiet", action="store_true", help="print only failures and the summary")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: must be more than 0")
    return value


def _byte_count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def _token(args: argparse.Namespace) -> str | None:
    """The bearer token: given, or printed by ``--token-command`` (ValueError if it fails)."""
    if args.token_command is None:
        return str(args.token) if args.token else None
    try:
        done = subprocess.run(
            args.token_command, shell=True, capture_output=True, text=True, timeout=120, check=False
        )
    except subprocess.TimeoutExpired:
        raise ValueError("--token-command did not finish within 120 s") from None
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        raise ValueError(f"--token-command exited {done.returncode}: {last[0]}")
    token = done.stdout.strip()
    if not token:
        raise ValueError("--token-command printed no token")
    return token


def run_args(args: argparse.Namespace) -> int:
    """Run the harness with parsed options (see the module docstring for the exit codes)."""
    # Imported here: `ncpeh-dicomweb --help` need not load aiohttp and the checks.
    from . import report, status
    from .context import Target
    from .runner import load_registry, run_checks, select

    checks = select(load_registry(), args.only, args.skip)
    if not checks:
        print("conformance: no check matches --only/--skip", file=sys.stderr)
        return EXIT_USAGE
    if args.list:
        for c in checks:
            print(f"{c.id:<50} {c.level.value:<6} {c.section}")
        return 0
    try:
        token = _token(args)
    except ValueError as exc:
        print(f"conformance: {exc}", file=sys.stderr)
        return EXIT_USAGE
    target = Target(
        base_url=args.base_url.rstrip("/"),
        fhir_url=args.fhir_url.rstrip("/") if args.fhir_url else None,
        token=token,
        study=args.study,
        patient=args.patient,
        timeout=args.timeout,
        max_body=args.max_body,
    )
    console = report.Console(len(checks), quiet=args.quiet)
    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    try:
        results = asyncio.run(
            run_checks(
                target,
                checks,
                concurrency=args.concurrency,
                check_timeout=args.check_timeout,
                on_result=console.result,
            )
        )
    except KeyboardInterrupt:
        print("\nconformance: interrupted", file=sys.stderr)
        return 130
    info = report.RunInfo(target=target, started=started, seconds=time.monotonic() - t0)
    console.finish(results, info)
    code = report.exit_code(results)
    text = status.statement([report.result_dict(r) for r in results])
    try:
        if args.report_dir:
            folder = Path(args.report_dir)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "report.md").write_text(report.markdown(results, info), encoding="utf-8")
            (folder / "junit.xml").write_bytes(report.junit_xml(results, info))
            (folder / "results.json").write_bytes(report.results_json(results, info))
            print(f"reports in {folder}/ (report.md, junit.xml, results.json)")
        if args.write_status:
            Path(args.write_status).write_text(text, encoding="utf-8")
            print(f"conformance statement written to {args.write_status}")
    except OSError as exc:
        print(f"conformance: cannot write a report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.check_status:
        drift = status.drift(Path(args.check_status), text)
        if drift:
            print(drift, file=sys.stderr)
            return code or EXIT_DRIFT
        print(f"{args.check_status} matches this run")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="conformance", description=DESCRIPTION)
    add_arguments(parser)
    return run_args(parser.parse_args(argv))
