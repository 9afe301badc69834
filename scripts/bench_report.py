"""Benchmark of the HTML report on a large study: generation time, page size, load time.

It builds a synthetic finished study of ``--trials`` trials (default 1,000: references,
search trials with real schedules on the layers of ``autoprune.testing.models``'s ResNet, ~5% failed,
some infeasible) in a temporary SQLite file, then measures:

- the time to compute each figure's data (the first computations pay one-off imports),
- the wall time of ``autoprune.report`` on a freshly opened study (page + CSV; no PNG),
- the page's size, split into plotly.js (embedded once) and the rest,
- the load time in headless Chromium (navigation to every plot drawn; median of
  ``--loads``), next to a page holding only plotly.js, which bounds what the report can do.

Reproduce (the numbers go to ``results/bench_report.json`` and ``.md``)::

    python scripts/bench_report.py                          # 1,000 trials, 2 and 3 objectives
    python scripts/bench_report.py --trials 200 --objectives 2 --loads 1   # quick check

Needs Chromium (``apt-get install chromium``) and ``pip install playwright`` for the load
time; without them that column says why it is missing.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from _results import run_meta, write_result
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

import autoprune as ap
from autoprune.report import _data, _pattern, trials_table
from autoprune.study import keys as study_keys
from autoprune.testing import models as zoo

OBJECTIVES = {2: ["accuracy", "latency"], 3: ["accuracy", "latency", "size"]}


def build_study(storage: str, name: str, n_trials: int, n_objectives: int, layers: list[ap.LayerInfo]) -> None:
    """A finished study as the search writes it (synthetic metrics, real layer names)."""
    rng = random.Random(0)
    objectives = OBJECTIVES[n_objectives]
    study = optuna.create_study(
        study_name=name, storage=storage, directions=[study_keys.DIRECTIONS[o] for o in objectives]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.set_metric_names(objectives)
    study.set_user_attr("objectives", objectives)
    study.set_user_attr("layers", [i.as_dict() for i in layers])
    total = sum(i.params for i in layers)
    dists: dict[str, Any] = {}
    for i in layers:
        dists[f"{i.name}:method"] = CategoricalDistribution(["none", *i.methods])
        dists[f"{i.name}:amount"] = FloatDistribution(0.0, min(i.max_amount, 0.95), step=0.05)
    trials = []
    for n in range(n_trials):
        role = study_keys.ROLE_UNPRUNED if n == 0 else study_keys.ROLE_UNIFORM if n < 4 else study_keys.ROLE_SEARCH
        plans, params = {}, {}
        for i in layers:
            if role == study_keys.ROLE_SEARCH:
                method = rng.choice(["none", *i.methods])
                amount = round(rng.randrange(0, int(min(i.max_amount, 0.95) * 20) + 1) * 0.05, 2)
            else:
                method, amount = "unstructured", 0.0 if n == 0 else 0.25 * n
            params[f"{i.name}:method"], params[f"{i.name}:amount"] = method, amount
            plans[i.name] = ap.LayerPlan(method, min(amount, 0.95))
        schedule = ap.Schedule(layers=plans)
        active = schedule.active_layers()
        frac = sum(p.amount * i.params for i in layers if (p := active.get(i.name))) / total
        structured = sum(p.amount * i.params for i in layers if (p := active.get(i.name)) and p.method == "structured")
        acc = 95.0 - 40.0 * frac**2 + rng.gauss(0.0, 1.0)
        latency = 2.0 * (1.0 - 0.8 * structured / total) + rng.gauss(0.0, 0.05)
        size = 4.0e6 * (1.0 - frac) + rng.uniform(0.0, 5.0e4)
        drop = 95.0 - acc
        feasible = role != study_keys.ROLE_SEARCH or drop <= 5.0
        attrs = {
            "role": role,
            "schedule": schedule.to_json(),
            "schedule_summary": schedule.summary(),
            "accuracy": acc,
            "latency_ms": latency,
            "sparse_bytes": int(size),
            "macs": int(5.0e7 * (1.0 - structured / total)),
            "accuracy_drop": drop,
            "speedup": 2.0 / latency,
            "compression": 4.0e6 / size,
            "feasible": feasible,
            "early_rejected": False,
        }
        kwargs = {"params": params, "distributions": dists} if role == study_keys.ROLE_SEARCH else {}
        if role == study_keys.ROLE_SEARCH and rng.random() < 0.05:
            trials.append(
                create_trial(state=TrialState.FAIL, user_attrs={**attrs, "error": "RuntimeError: x"}, **kwargs)
            )
            continue
        constraints = {"accuracy_drop": drop - 5.0 if role == study_keys.ROLE_SEARCH else -1.0}
        values = [acc, latency, size][:n_objectives]
        trials.append(create_trial(values=values, user_attrs=attrs, constraints=constraints, **kwargs))
    study.add_trials(trials)


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def _load_times(page: Path, loads: int) -> tuple[float | None, str]:
    try:
        from autoprune.testing.browser import find_chromium, load_page
    except ImportError as exc:
        return None, f"no playwright ({exc})"
    if find_chromium() is None:
        return None, "no Chromium"
    try:
        times, notes = [], ""
        for _ in range(loads):
            result = load_page(page)
            times.append(result.load_ms)
            if result.console_errors or result.rendered != result.plots or len(result.requests) != 1:
                notes = f"errors={len(result.console_errors)} rendered={result.rendered}/{result.plots}"
        return statistics.median(times), notes
    except ImportError as exc:
        return None, f"no playwright ({exc})"


def bench(args: argparse.Namespace, n_objectives: int, work: Path, model: Any, x: Any, layers: Any) -> dict[str, Any]:
    storage = f"sqlite:///{work / 'bench.db'}"
    name = f"bench-{n_objectives}obj-{args.trials}"
    _, t_build = _timed(build_study, storage, name, args.trials, n_objectives, layers)
    study, t_open = _timed(lambda n, s: ap.load_study(n, s).study, name, storage)
    row: dict[str, Any] = {
        "objectives": n_objectives,
        "trials": len(study.trials),
        "build_s": t_build,
        "open_s": t_open,
    }
    row["pareto_trials"] = len(study.best_trials)
    for key, fn in (
        ("pareto_s", _data._get_pareto_info),
        ("hypervolume_s", _data._get_hypervolume_info),
        ("heatmap_s", _data._get_heatmap_info),
        ("importance_s", _data._get_importance_info),
        ("table_s", trials_table),
    ):
        _, row[key] = _timed(fn, study)
    _, row["pattern_s"] = _timed(_pattern._get_pattern_info, study, model=model, example_inputs=x)
    out = work / f"report-{n_objectives}"
    # The whole report on a freshly opened study (trials read from SQLite again).
    start = time.perf_counter()
    page = ap.report(ap.load_study(name, storage).study, out, model=model, example_inputs=x)
    row["report_s"] = time.perf_counter() - start
    from plotly.offline import get_plotlyjs

    row["page_mb"] = page.stat().st_size / 1e6
    row["plotlyjs_mb"] = len(get_plotlyjs().encode()) / 1e6
    row["csv_rows"] = sum(1 for _ in (out / "trials.csv").open()) - 1
    row["load_ms"], row["load_note"] = _load_times(page, args.loads)
    if args.keep:
        print(f"kept {page}", file=sys.stderr)
    return row


def _baseline(work: Path, loads: int) -> float | None:
    """Load time of a page holding only plotly.js and one empty plot."""
    from plotly.offline import get_plotlyjs

    page = work / "plotlyjs-only.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<script>{get_plotlyjs()}</script></head><body><div id='p'></div>"
        "<script>Plotly.newPlot('p', [{x: [1, 2], y: [1, 2]}]);</script></body></html>"
    )
    ms, _ = _load_times(page, loads)
    return ms


def _table(rows: list[dict[str, Any]], baseline_ms: float | None) -> str:
    def f(v: Any, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = [
        "| objectives | trials | Pareto | report (s) | importances (s) | pattern (s) | page (MB) "
        "| plotly.js (MB) | load in Chromium (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        load = f(r["load_ms"], ".0f") + (f" ({r['load_note']})" if r["load_note"] else "")
        lines.append(
            f"| {r['objectives']} | {r['trials']} | {r['pareto_trials']} | {r['report_s']:.2f} | {r['importance_s']:.2f} "
            f"| {r['pattern_s']:.2f} | {r['page_mb']:.2f} | {r['plotlyjs_mb']:.2f} | {load} |"
        )
    lines.append("")
    lines.append(f"Page with plotly.js only (one tiny plot): {f(baseline_ms, '.0f')} ms to load.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--objectives", type=int, nargs="+", default=[2, 3], choices=[2, 3])
    parser.add_argument("--loads", type=int, default=3, help="page loads per report (median)")
    parser.add_argument("--out", type=Path, default=Path("results/bench_report.json"))
    parser.add_argument("--keep", action="store_true", help="keep the generated pages (prints where)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("autoprune").setLevel(logging.ERROR)
    torch.manual_seed(0)
    model, x = zoo.get("resnet")
    layers = ap.prunable_layers(model, x)

    work = Path(tempfile.mkdtemp(prefix="autoprune-bench-report-"))
    rows = [bench(args, n, work, model, x, layers) for n in args.objectives]
    baseline_ms = _baseline(work, args.loads)
    table = _table(rows, baseline_ms)
    command = "python scripts/bench_report.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    print(table)
    print(f"\nReproduce: {command.strip()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        **run_meta(command=command.strip()),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "optuna": optuna.__version__,
        "baseline_plotlyjs_only_ms": baseline_ms,
        "work_dir": str(work) if args.keep else None,
    }
    write_result(args.out, rows, table=table, meta=meta)
    args.out.with_suffix(".md").write_text(table + f"\n\nReproduce: `{command.strip()}`\n")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
