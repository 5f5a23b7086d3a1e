"""The figures of a run as rows (figure, gateway, baseline, ratio, target, met), a Markdown
table and a JSON document; the README's Performance table replaced between two markers."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

README_START = "<!-- bench:table:start -->"
README_END = "<!-- bench:table:end -->"


@dataclass(frozen=True)
class Row:
    key: str  # stable id, e.g. "wado.throughput"
    section: int  # the measurement 1..6
    figure: str
    gateway: str  # the gateway's figure, formatted
    baseline: str  # the baseline's (the PACS direct, pynetdicom, getscu), formatted
    value: float | None  # the figure the target is about
    target: str  # as the issue words it; "" when it sets none
    met: bool | None  # None: no target
    is_ratio: bool = True  # value is a ratio (shown in the Ratio column); else a count, MB...

    @property
    def verdict(self) -> str:
        return "—" if self.met is None else ("met" if self.met else "**missed**")


def _ratio(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"


def at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None or math.isnan(value) else value >= bound


def at_most(value: float | None, bound: float) -> bool | None:
    return None if value is None or math.isnan(value) else value <= bound


def table(rows: list[Row]) -> str:
    lines = [
        "| # | Figure | Gateway | Direct / baseline | Ratio | Target | Met |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.section} | {row.figure} | {row.gateway} | {row.baseline} | "
            f"{_ratio(row.value) if row.is_ratio else '—'} | {row.target or '—'} | "
            f"{row.verdict} |"
        )
    return "\n".join(lines)


def markdown(rows: list[Row], meta: dict[str, Any], notes: list[str]) -> str:
    met = sum(1 for r in rows if r.met)
    missed = [r for r in rows if r.met is False]
    head = [
        f"# Benchmark {meta['date']}",
        "",
        f"Command: `{meta['command']}` ({meta['seconds']:.0f} s). Machine: {meta['machine']}.",
        f"Load average at the start {meta['loadavg_start']}, at the end {meta['loadavg_end']}.",
        f"Targets met: {met} of {met + len(missed)}"
        + (f"; missed: {', '.join(r.key for r in missed)}." if missed else "."),
        "",
        "Ratios are gateway / direct of the same run: of throughput or speed (higher is better)",
        "or of time (lower is better), as each figure says.",
        "",
        table(rows),
        "",
    ]
    if notes:
        head += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(head)


def write(
    results: Path, rows: list[Row], meta: dict[str, Any], raw: dict[str, Any], notes: list[str]
) -> tuple[Path, Path]:
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"bench-{meta['date']}{meta.get('variant', '')}"
    md, js = stem.with_suffix(".md"), stem.with_suffix(".json")
    md.write_text(markdown(rows, meta, notes))
    document = {"meta": meta, "rows": [asdict(r) for r in rows], "notes": notes, "raw": raw}
    js.write_text(json.dumps(document, indent=1) + "\n")
    return md, js


def update_readme(readme: Path, rows: list[Row], meta: dict[str, Any]) -> bool:
    """Replace the table between the markers of README's Performance section; False if the
    markers are not there."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        return False
    before, rest = text.split(README_START, 1)
    _old, after = rest.split(README_END, 1)
    block = (
        f"{README_START}\n{meta['date']}, `{meta['command']}` on {meta['machine']}:\n\n"
        f"{table(rows)}\n{README_END}"
    )
    readme.write_text(before + block + after)
    return True
