"""Rebuild docs/benchmarks.md from the benchmark scripts' stored results (results/*.json).

Nothing is re-run: each ``results/<name>.json`` that a ``scripts/bench_*.py`` wrote becomes one
section, headed by the command, commit, date and machine stored with it (``not recorded``
where an older file lacks one), then the table the script printed (stored as ``table``; a
plain table of its rows for a file without one)::

    python scripts/benchmarks_doc.py                       # writes docs/benchmarks.md
    python scripts/benchmarks_doc.py --out /tmp/b.md       # elsewhere (the test compares)

The output depends only on the JSON files, so running it twice changes nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
COMMAND = "python scripts/benchmarks_doc.py"
NOT_RECORDED = "not recorded"
META_FIELDS = ("command", "commit", "date", "machine")
# What each script measures (one line under its heading); a result of another name gets none.
ABOUT = {
    "bench_distill": "Fine-tuning with distillation from the unpruned model against plain fine-tuning.",
    "bench_latency": "The latency measurement under a training process that pauses for it, and without.",
    "bench_latency_drift": "Paired against unpaired speedups while a disturber process works and rests.",
    "bench_latency_efficiency": "Paired speedup over MACs reduction, per latency backend.",
    "bench_lm": "Language models: the searched sparsity allocation against uniform and OWL allocations.",
    "bench_lm_structure": "Language models: heads, MLP channels and blocks removed (by hand and searched) against "
    "unstructured sparsity, with recovery; paired prefill and decode speedups.",
    "bench_report": "The HTML report of a large synthetic study: time to compute and write it, page size, "
    "load time in headless Chromium.",
    "bench_search": "The search against uniform and global sweeps, at their default budget and at the "
    "search's (equal) budget; each method's point chosen on validation and reported on test; development "
    "and held-out tasks in separate tables.",
    "bench_speedup": "Measured CPU speedup of structured pruning against its MACs reduction.",
    "bench_warmstart": "Sensitivity references against uniform schedules at equal MACs.",
    "bench_workers": "Trials per minute with several worker processes, SQLite and PostgreSQL.",
}


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return str(value) if not math.isfinite(value) else f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    return str(value).replace("|", "\\|").replace("\n", " ")


def plain_table(rows: Any) -> str:
    """A Markdown table of a list of dicts (or a dict of dicts, keyed by its first column)."""
    if isinstance(rows, dict):
        rows = [{"name": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in rows.items()]
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return "(no rows stored)"
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _meta(data: Any) -> dict[str, Any]:
    """The stored run metadata: ``meta`` (the scripts now), else top-level keys (older files)."""
    if not isinstance(data, dict):
        return {}
    meta = data.get("meta")
    return dict(meta) if isinstance(meta, dict) else {k: data[k] for k in META_FIELDS if k in data}


def section(name: str, data: Any) -> list[str]:
    meta = _meta(data)
    command, commit, date, machine = (str(meta[k]) if meta.get(k) else NOT_RECORDED for k in META_FIELDS)
    lines = [f"## {name}", ""]
    if name in ABOUT:
        lines += [ABOUT[name], ""]
    shown = f"`{command}`" if command != NOT_RECORDED else NOT_RECORDED
    lines += [f"Command: {shown}; commit: {commit}; date: {date}; machine: {machine}.", ""]
    if isinstance(data, dict) and isinstance(data.get("header"), str):
        lines += [f"As the script headed it: {data['header']}", ""]
    table = data.get("table") if isinstance(data, dict) else None
    rows = data.get("rows", data) if isinstance(data, dict) else data
    lines += [table.strip("\n") if isinstance(table, str) and table.strip() else plain_table(rows), ""]
    lines += [f"Stored in `results/{name}.json`.", ""]
    return lines


def build(results: Path) -> str:
    """The whole of docs/benchmarks.md from the JSON files in ``results``."""
    files = sorted(results.glob("*.json"))
    names = [f.stem for f in files]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{COMMAND}` from `results/*.json`; do not edit by hand.",
        "Each benchmark script (`scripts/bench_*.py`) writes its numbers there with the command,",
        "commit, date and machine of the run; rerun a script, then this command, and commit both.",
        "A commit followed by `+changes`: the checkout had uncommitted edits under `autoprune/` or",
        "`scripts/` when the benchmark ran. Results written before the scripts stored all four say",
        f"`{NOT_RECORDED}` where they lack one.",
        "",
    ]
    if names:
        lines += ["Contents: " + ", ".join(f"[{n}](#{n})" for n in names) + ".", ""]
    else:
        lines += ["No results are stored yet.", ""]
    for f in files:
        lines += section(f.stem, json.loads(f.read_text()))
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="folder of the JSON results")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="the page to write")
    args = parser.parse_args(argv)
    text = build(args.results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} from {len(list(args.results.glob('*.json')))} result files in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
