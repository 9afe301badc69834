"""Benchmark: per-layer sparsity allocation for a language model, one-shot (no fine-tune).

On the built-in ``tinylm`` task (a ~1M-parameter Llama-style decoder; a development task:
the allocation search's defaults may be tuned on it), for each calibration seed, in ONE run:
  - uniform magnitude, uniform Wanda, uniform SparseGPT: every linear layer of the decoder
    at the same sparsity (magnitude needs no calibration, so its seeds agree);
  - OWL (Wanda scores; M = 5, lambda = 0.08, per block);
  - autoprune's searched allocation: ``search_allocation`` (Wanda, per block, at most
    --trials trials and --minutes minutes), the trial with the best VALIDATION perplexity is
    the point a user would take; its test perplexity is what is reported;
at 50% and 70% total sparsity of the decoder's linear weights, and at 2:4 (uniform only: every
layer is 50% under 2:4, so there is nothing to allocate).
Budgets differ by design, as in the OWL and EvoPress papers: the one-shot baselines evaluate
nothing; the search evaluates each trial on validation (its trial count is printed).

Reported: validation and test perplexity, mean and spread (max - min) over calibration seeds.

Reproduce:  python scripts/bench_lm.py                           (3 seeds, 100 trials, 15 min cap)
            python scripts/bench_lm.py --seeds 0 --trials 20     (quick check)
Numbers are written to results/bench_lm.json and results/bench_lm.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from _results import run_meta, write_result

import autoprune as ap
from autoprune.lm._allocation import owl_allocation
from autoprune.lm._search import AllocationContext, search_allocation
from autoprune.oneshot import prunable_linears


def uniform_schedule(task: ap.Task, criterion: str, amount: float, pattern: str | None = None) -> ap.Schedule:
    layers = {n: ap.LayerPlan("unstructured", amount, pattern=pattern) for n in prunable_linears(task.model)}
    return ap.Schedule(layers=layers, criterion=criterion)


def score(task: ap.Task, schedule: ap.Schedule) -> tuple[float, float]:
    model = ap.apply_schedule(task.model, schedule, example_inputs=None, calibration=task.calibration_inputs)
    assert task.test is not None
    return float(task.evaluate(model)), float(task.test(model))


def run(seeds: list[int], levels: list[float], trials: int, minutes: float, granularity: str = "block",
        nm: bool = True, criterion: str = "wanda") -> dict[str, Any]:  # fmt: skip
    rows: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, list[int]] = {}

    def add(name: str, val: float, test: float) -> None:
        entry = rows.setdefault(name, {"val": [], "test": []})
        entry["val"].append(val)
        entry["test"].append(test)
        print(f"  {name:<32} val {val:8.3f}  test {test:8.3f}", flush=True)

    dense = None
    for seed in seeds:
        task = ap.tasks.get("tinylm", calibration_seed=seed)
        assert task.test is not None
        if dense is None:
            dense = (float(task.evaluate(task.model)), float(task.test(task.model)))
        print(f"calibration seed {seed}: dense val {dense[0]:.3f} test {dense[1]:.3f}", flush=True)
        blocks = AllocationContext(task, "wanda", "block")  # OWL allocates per decoder block
        ctx = (
            blocks
            if (granularity, criterion) == ("block", "wanda")
            else AllocationContext(task, criterion, granularity)
        )
        for level in levels:
            for method in ("magnitude", "wanda", "sparsegpt"):
                add(f"{level:.0%} uniform {method}", *score(task, uniform_schedule(task, method, level)))
            owl = owl_allocation(task.model, blocks.stats, blocks.units, level)
            add(f"{level:.0%} OWL (wanda)", *score(task, blocks.schedule(owl)))
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                study = search_allocation(
                    task, sparsity=level, criterion=criterion, n_trials=trials, timeout_s=minutes * 60, seed=seed,
                    storage=f"sqlite:///{tmp}/lm.db", study_name="bench", context=ctx, measure_latency=False,
                    record_test=False,
                )  # fmt: skip
                done = [t for t in study.trials if t.state.name == "COMPLETE"]
                best = min(done, key=lambda t: (t.user_attrs["perplexity"], t.number))  # chosen on validation
                counts.setdefault(f"{level:.0%}", []).append(len(done))
                # re-applied from its stored JSON, as a user would
                schedule = ap.Schedule.from_json(best.user_attrs["schedule"])
                val, test = score(task, schedule)
                assert abs(val - best.user_attrs["perplexity"]) < 1e-6 * val, (val, best.user_attrs["perplexity"])
                add(f"{level:.0%} searched ({criterion}, per {granularity})", val, test)
                print(f"    search: {len(done)} trials in {time.perf_counter() - t0:.0f} s, best trial {best.number} "
                      f"({best.user_attrs.get('role', 'search')}), amounts {best.user_attrs['amounts']}", flush=True)  # fmt: skip
        for method in ("magnitude", "wanda", "sparsegpt") if nm else ():
            add(f"2:4 uniform {method}", *score(task, uniform_schedule(task, method, 0.5, "2:4")))
    assert dense is not None
    return {"dense": {"val": dense[0], "test": dense[1]}, "rows": rows, "search_trials": counts, "seeds": seeds}


def table(result: dict[str, Any]) -> str:
    lines = [
        "| method | val ppl (mean) | test ppl (mean) | test spread over seeds (max-min) |",
        "|---|---:|---:|---:|",
        f"| dense | {result['dense']['val']:.3f} | {result['dense']['test']:.3f} | 0 |",
    ]
    for name, r in result["rows"].items():
        spread = max(r["test"]) - min(r["test"])
        lines.append(f"| {name} | {statistics.mean(r['val']):.3f} | {statistics.mean(r['test']):.3f} | {spread:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.5, 0.7])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--granularity", choices=("block", "layer"), default="block")
    parser.add_argument("--no-nm", action="store_true", help="skip the 2:4 rows")
    parser.add_argument("--criterion", choices=("magnitude", "wanda", "sparsegpt"), default="wanda",
                        help="the searched allocation's criterion")  # fmt: skip
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    # One thread: on this shared 2-core machine two threads made a validation pass 10x slower
    # (54 s against 5 s, measured beside other work); perplexities do not depend on it.
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    result = run(args.seeds, args.levels, args.trials, args.minutes, args.granularity, not args.no_nm, args.criterion)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    parts = []
    for key, value in vars(args).items():
        flag = "--" + key.replace("_", "-")
        if key == "out" or value is False:
            continue
        parts.append(
            flag if value is True else f"{flag} {' '.join(map(str, value)) if isinstance(value, list) else value}"
        )
    command = "python scripts/bench_lm.py " + " ".join(parts)
    header = (
        f"`{command}` at {commit}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} "
        f"{torch.get_num_threads()} threads, {time.perf_counter() - started:.0f} s; search trials per run: "
        f"{result['search_trials']}"
    )
    text = f"{header}\n\n{table(result)}\n"
    print("\n" + text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = run_meta(command=command)
    rest = {k: v for k, v in result.items() if k != "rows"}
    write_result(out / "bench_lm.json", result["rows"], table=table(result), meta=meta, **rest, header=header)
    (out / "bench_lm.md").write_text(text)


if __name__ == "__main__":
    main()
