"""Apply a chosen trial's schedule to the study's model and export the pruned model.

Pick the trial by number (--trial N) or by rule (--max-accuracy-drop X and/or
--max-latency-ms MS, --max-size-bytes B, then --minimize latency|size|params|macs). The
schedule is applied to the study's task model and fine-tuned as in the trial (plus
--final-fine-tune STEPS); the output folder gets weights.pt (a plain state dict),
schedule.json, metrics.json and architecture.json, and model.onnx with --onnx. Reload it
with autoprune.load_pruned(DIR, model_factory)."""

from __future__ import annotations

import argparse
import math
from typing import Any

from autoprune.config import DEFAULT_STORAGE
from autoprune.study import MINIMIZE_KEYS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    p.add_argument("--trial", type=int, metavar="N", help="pick this trial number")
    p.add_argument(
        "--max-accuracy-drop", type=float, metavar="X", help="keep trials whose accuracy drop is at most X points"
    )
    p.add_argument("--max-latency-ms", type=float, metavar="MS", help="keep trials at most this slow")
    p.add_argument("--max-size-bytes", type=float, metavar="B", help="keep trials at most this large (sparse bytes)")
    p.add_argument(
        "--max-metric-increase",
        type=float,
        metavar="R",
        help="perplexity studies: keep trials whose validation perplexity is at most R above the dense model's (0.10: +10%%)",
    )
    p.add_argument(
        "--minimize",
        choices=sorted({*MINIMIZE_KEYS, "perplexity"}),
        default="latency",
        help="what to minimise among the trials kept (default latency)",
    )
    p.add_argument(
        "--final-fine-tune",
        type=int,
        default=0,
        metavar="STEPS",
        help="a final fine-tune of STEPS steps after the schedule (default 0)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the pruned model to")
    p.add_argument("--onnx", action="store_true", help="also write model.onnx (needs: pip install onnx)")


def _count(model: Any) -> tuple[int, int]:
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int((p != 0).sum()) for p in model.parameters())
    return params, nonzero


def run(args: argparse.Namespace) -> int:
    import importlib.util
    import sys

    from autoprune._errors import ConfigError
    from autoprune.export import ExportError, save_pruned
    from autoprune.study import load_study

    rules = (args.max_accuracy_drop, args.max_latency_ms, args.max_size_bytes, args.max_metric_increase)
    if args.trial is None and all(r is None for r in rules):
        raise ConfigError("pick a trial with --trial N or a rule (--max-accuracy-drop X, --max-latency-ms MS, ...)")
    if args.trial is not None and any(r is not None for r in rules):
        raise ConfigError("give either --trial or rules (--max-accuracy-drop, --max-latency-ms, ...), not both")
    if args.final_fine_tune < 0:
        raise ConfigError(f"--final-fine-tune must be >= 0, but got {args.final_fine_tune}")
    if args.onnx and importlib.util.find_spec("onnx") is None:
        # Before the (possibly long) apply and fine-tune.
        raise ExportError("--onnx needs the onnx package: pip install onnx")

    results = load_study(args.study, args.storage)
    picked = results.pick(
        trial=args.trial,
        max_accuracy_drop=args.max_accuracy_drop,
        max_latency_ms=args.max_latency_ms,
        max_size_bytes=args.max_size_bytes,
        minimize=args.minimize,
        max_metric_increase=args.max_metric_increase,
    )
    print(f"picked {picked.summary()}")
    print(f"  rule: {picked.rule}; role: {picked.role}{'' if picked.feasible else ' (INFEASIBLE)'}")

    task = results.task()
    model = picked.apply(task=task, final_fine_tune_steps=args.final_fine_tune)
    params, nonzero = _count(model)
    recorded = picked.metrics.get("params")
    if isinstance(recorded, (int, float)) and int(recorded) != params:
        print(
            f"autoprune apply: warning: the pruned model has {params} parameters but trial {picked.number} "
            f"recorded {int(recorded)}; is the task's model the one the study searched?",
            file=sys.stderr,
        )
    accuracy = float(task.evaluate(model))
    applied = {
        ("accuracy" if task.higher_is_better else task.metric_name): accuracy,
        "params": params,
        "nonzero_params": nonzero,
        "final_fine_tune_steps": args.final_fine_tune,
    }
    metrics = {
        "study": args.study,
        "trial": picked.number,
        "rule": picked.rule,
        "recorded": picked.metrics,
        "applied": applied,
    }
    out = save_pruned(
        model,
        args.out,
        schedule=picked.schedule,
        metrics=metrics,
        example_inputs=task.example_inputs,
        onnx=args.onnx,
    )
    hf_note = "from_pretrained({!r}) reloads it"
    if callable(getattr(model, "save_pretrained", None)):
        # a Hugging Face model also saves its own way: from_pretrained(out / "hf") reloads it
        from autoprune.lm._hf import needs_autoprune_classes, save_pretrained

        save_pretrained(model, out / "hf")  # blocks of differing widths: with autoprune's classes
        if needs_autoprune_classes(model.config):
            hf_note = "ap.lm.from_pretrained({!r}) or AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)"
    rec_acc = picked.metrics.get("perplexity" if not task.higher_is_better else "accuracy")
    rec_text = f" (trial: {rec_acc:.4g})" if isinstance(rec_acc, (int, float)) and not math.isnan(rec_acc) else ""
    print(f"applied: {task.metric_name}={accuracy:.4g}{rec_text}, params={params}, nonzero_params={nonzero}")
    print(f"wrote {out}/")
    for path in sorted(out.iterdir()):
        if path.is_file():
            print(f"  {path.name}")
        elif path.is_dir():
            print(f"  {path.name}/ (save_pretrained: {hf_note.format(str(path))})")
    return 0
