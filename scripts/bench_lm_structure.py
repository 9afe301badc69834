"""Benchmark: structural pruning of a language model (heads, MLP channels, blocks) and what it
buys in measured speed, against unstructured sparsity.

On the built-in ``tinylm`` task (a ~1M-parameter Llama-style decoder, 6 blocks, 4 query and 2
key/value heads; a DEVELOPMENT task: autoprune's defaults may be tuned on it), in ONE run:
  - dense, and dense + the same recovery budget (--steps distillation steps): what the
    fine-tuning alone does to this (under-trained) model, so the pruned rows are read against
    an equal budget;
  - width: every block's heads and MLP cut uniformly (heads 50%, the MLP share that brings
    the removed parameters closest to --width of the model), without and with recovery; and
    the MLP alone cut to remove --width of the model, with recovery;
  - depth: ShortGPT's choice (the blocks of least block influence), 1 and 2 of the 6 blocks
    (one block in four is 1.5 here), with recovery;
  - unstructured Wanda at 50% of every linear layer, with recovery;
  - autoprune's structural search (``search_structure``, --trials trials of --search-steps
    recovery steps each, unstructured Wanda 50% a choice so unstructured trials share the
    front): the fastest trial (prefill) whose VALIDATION perplexity increase is at most
    15% is the point a user would take; its test perplexity is what is reported.
Speedups are paired: each model and the dense model timed in alternation on one thread,
median of per-round ratios with its 95% interval; prefill = a batch of 4 full windows of 128
tokens, decode = 32 tokens generated with the KV cache after a 32-token prompt.

Reproduce:  python scripts/bench_lm_structure.py                  (about 30 min here)
            python scripts/bench_lm_structure.py --trials 8 --steps 50 --search-steps 20   (quick check)
Numbers are written to results/bench_lm_structure.json and results/bench_lm_structure.md.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from _results import run_meta, write_result

import autoprune as ap
from autoprune.decoder import decoder_layout, removal_order, structure_scores
from autoprune.lm._latency import RegimeMeters
from autoprune.lm._structured import structure_schedule


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def width_plan(task: ap.Task, target: float, heads: float = 0.5) -> tuple[dict[int, float], dict[int, float]]:
    """``heads`` of every block's heads and the uniform MLP share (multiples of 1/64) whose
    removed parameters come closest to ``target`` of the model."""
    n = len(decoder_layout(task.model).block_names(task.model))
    dense = _params(task.model)
    heads_plan = dict.fromkeys(range(n), heads)
    best: tuple[float, float] | None = None
    for k in range(0, 49):
        mlp = k / 64
        schedule = structure_schedule(task, heads=heads_plan, mlp=dict.fromkeys(range(n), mlp))
        pruned = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs)
        gap = abs(1 - _params(pruned) / dense - target)
        if best is None or gap < best[0]:
            best = (gap, mlp)
    assert best is not None
    return heads_plan, dict.fromkeys(range(n), best[1])


def measure(task: ap.Task, meters: RegimeMeters, model: torch.nn.Module, dense_params: int, base: dict[str, float],
            budget_s: float) -> dict[str, Any]:  # fmt: skip
    with torch.inference_mode():
        val, test = float(task.evaluate(model)), float(task.test(model))  # type: ignore[misc]
    s = meters.measure(model, budget_s)
    return {
        "val": val,
        "test": test,
        "test_increase": test / base["test"] - 1,
        "params_removed": 1 - _params(model) / dense_params,
        **{f"{r}": [v.ratio, v.low, v.high] for r, v in s.items()},
    }


def run(width: float, steps: int, trials: int, search_steps: int, budget_s: float) -> dict[str, Any]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    task = ap.tasks.get("tinylm")
    meters = RegimeMeters(task, ("prefill", "decode"), "cpu:threads=1")
    dense_params = _params(task.model)
    with torch.inference_mode():
        base = {"val": float(task.evaluate(task.model)), "test": float(task.test(task.model))}  # type: ignore[misc]
    rows: dict[str, Any] = {}

    def row(name: str, schedule: ap.Schedule | None, recover: int) -> None:
        t0 = time.perf_counter()
        if schedule is None:
            model = copy.deepcopy(task.model)
        else:
            model = ap.apply_schedule(task.model, schedule, example_inputs=task.example_inputs,
                                      calibration=task.calibration_inputs)  # fmt: skip
        if recover:
            assert task.distill_fine_tune is not None
            task.distill_fine_tune(model, recover)
        rows[name] = {**measure(task, meters, model, dense_params, base, budget_s), "steps": recover,
                      "schedule": schedule.to_json() if schedule else None}  # fmt: skip
        shown = {k: v for k, v in rows[name].items() if k != "schedule"}
        print(f"{name}: {shown} ({time.perf_counter() - t0:.0f} s)", flush=True)

    row("dense", None, 0)
    row(f"dense + {steps} steps", None, steps)
    heads, mlp = width_plan(task, width)
    width_schedule = structure_schedule(task, heads=heads, mlp=mlp)
    row("width (heads 50%, MLP uniform)", width_schedule, 0)
    row(f"width (heads 50%, MLP uniform) + {steps} steps", width_schedule, steps)
    _, mlp_only = width_plan(task, width, heads=0.0)
    row(f"width (MLP uniform) + {steps} steps", structure_schedule(task, mlp=mlp_only), steps)
    order = removal_order(structure_scores(task.model, task.calibration_inputs))
    for k in (1, 2):
        row(f"depth: {k} of 6 blocks (ShortGPT) + {steps} steps", structure_schedule(task, remove=order[:k]), steps)
    row(f"unstructured Wanda 50% + {steps} steps", structure_schedule(task, sparsity=0.5), steps)
    t0 = time.perf_counter()
    study = ap.lm.search_structure(task, n_trials=trials, fine_tune_steps=search_steps, sparsity=[0.5],
                                   latency="prefill", budget_s=budget_s)  # fmt: skip
    search_s = time.perf_counter() - t0
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ok = [t for t in done if t.user_attrs["perplexity_increase"] <= 0.15]
    pick = max(ok, key=lambda t: (t.user_attrs["prefill_speedup"], -t.number)) if ok else None
    unstructured = [t for t in done if t.user_attrs["kind"] == "unstructured"]
    others = [t for t in done if t.user_attrs["kind"] != "unstructured"]

    def dominates(a: Any, b: Any, ppl: str) -> bool:
        pa, pb = a.user_attrs[ppl], b.user_attrs[ppl]
        sa, sb = a.user_attrs["prefill_speedup"], b.user_attrs["prefill_speedup"]
        return pa <= pb and sa >= sb and (pa < pb or sa > sb)

    dominant = {ppl: [t.number for t in others if unstructured and all(dominates(t, u, ppl) for u in unstructured)]
                for ppl in ("perplexity", "test_perplexity")}  # fmt: skip
    trials_out = [
        {"number": t.number, "role": t.user_attrs.get("role"), "kind": t.user_attrs["kind"],
         "params_removed": t.user_attrs["params_removed"], "val": t.user_attrs["perplexity"],
         "test": t.user_attrs.get("test_perplexity"), "prefill": t.user_attrs["prefill_speedup"],
         "decode": t.user_attrs["decode_speedup"], "schedule": t.user_attrs["schedule_summary"]}
        for t in done
    ]  # fmt: skip
    return {
        "base": base,
        "rows": rows,
        "search": {
            "trials": len(study.trials),
            "complete": len(done),
            "failed": len(study.trials) - len(done),
            "seconds": round(search_s),
            "pick": None if pick is None else trials_out[done.index(pick)],
            "unstructured_trials": [t.number for t in unstructured],
            "dominating_every_unstructured": dominant,
            "trials_table": trials_out,
        },
    }


def table(result: dict[str, Any]) -> str:
    base = result["base"]
    lines = [
        f"Dense: validation perplexity {base['val']:.3f}, test {base['test']:.3f}.",
        "",
        "| model | params removed | val ppl | test ppl | test increase | prefill speedup | decode speedup |",
        "|---|---:|---:|---:|---:|---|---|",
    ]

    def fmt(s: list[float]) -> str:
        return f"{s[0]:.2f}x [{s[1]:.2f}, {s[2]:.2f}]"

    for name, r in result["rows"].items():
        lines.append(f"| {name} | {r['params_removed']:.1%} | {r['val']:.3f} | {r['test']:.3f} | "
                     f"{r['test_increase']:+.1%} | {fmt(r['prefill'])} | {fmt(r['decode'])} |")  # fmt: skip
    s = result["search"]
    lines += ["", f"Search: {s['trials']} trials ({s['failed']} failed), {s['seconds']} s."]
    p = s["pick"]
    if p is not None:
        lines.append(
            f"Picked on validation (fastest prefill with validation increase <= 15%): trial {p['number']} ({p['kind']}, "
            f"{p['schedule']}): params removed {p['params_removed']:.1%}, val {p['val']:.3f}, test {p['test']:.3f} "
            f"({p['test'] / base['test'] - 1:+.1%}), prefill {p['prefill']:.2f}x, decode {p['decode']:.2f}x."
        )
    d = s["dominating_every_unstructured"]
    lines.append(
        f"Trials (structured or depth) dominating every unstructured trial {s['unstructured_trials']} on "
        f"(validation perplexity, prefill speedup): {d['perplexity']}; on (test perplexity, prefill speedup): "
        f"{d['test_perplexity']}."
    )
    lines += [
        "",
        "| trial | role | kind | params removed | val | test | prefill | decode |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for t in s["trials_table"]:
        lines.append(f"| {t['number']} | {t['role']} | {t['kind']} | {t['params_removed']:.1%} | {t['val']:.3f} | "
                     f"{t['test']:.3f} | {t['prefill']:.2f}x | {t['decode']:.2f}x |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=0.25, help="share of parameters the width rows remove")
    parser.add_argument("--steps", type=int, default=200, help="recovery steps of the fixed rows")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--search-steps", type=int, default=50, help="recovery steps of every search trial")
    parser.add_argument("--budget-s", type=float, default=2.0, help="timing budget per regime and model")
    parser.add_argument("--out", default="results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    result = run(args.width, args.steps, args.trials, args.search_steps, args.budget_s)
    command = (f"python scripts/bench_lm_structure.py --width {args.width} --steps {args.steps} --trials {args.trials} "
               f"--search-steps {args.search_steps} --budget-s {args.budget_s}")  # fmt: skip
    meta = run_meta(command=command)
    header = (
        f"`{command}` at {meta['commit']}, {meta['date']}, {meta['machine']}, {time.perf_counter() - started:.0f} s"
    )
    text = f"{header}\n\n{table(result)}\n"
    print("\n" + text)
    write_result(Path(args.out) / "bench_lm_structure.json", result, table=table(result), meta=meta)
    (Path(args.out) / "bench_lm_structure.md").write_text(text)


if __name__ == "__main__":
    main()
