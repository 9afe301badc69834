"""``autoprune search`` on a language-model task: the allocation search (autoprune.lm)."""

from __future__ import annotations

import argparse
import math

from autoprune._errors import ConfigError
from autoprune.config import SearchConfig, mask_url
from autoprune.tasks import Task

__all__ = ["add_lm_arguments", "run_lm_search"]

_DEFAULT_LEVELS = (0.5, 0.6, 0.7)


def add_lm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("language-model tasks (perplexity; e.g. --task tinylm)")
    g.add_argument("--sparsity", help="total sparsity of the linear layers, one or comma-separated levels "
                   f"(default {','.join(map(str, _DEFAULT_LEVELS))}; several make size a second objective)")  # fmt: skip
    g.add_argument("--criterion", choices=("magnitude", "wanda", "sparsegpt"), help="default wanda")
    g.add_argument("--granularity", choices=("block", "layer"), help="one amount per decoder block (default) or per layer")
    g.add_argument("--max-metric-increase", type=float, metavar="R",
                   help="constraint: largest relative perplexity increase on validation (0.10: +10%%)")  # fmt: skip


def _levels(text: str | None) -> list[float]:
    if text is None:
        return list(_DEFAULT_LEVELS)
    try:
        levels = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--sparsity must be numbers in (0, 0.95) separated by commas, but got {text!r}") from None
    if not levels or any(not 0 < v < 0.95 for v in levels):
        raise ConfigError(f"--sparsity must be numbers in (0, 0.95) separated by commas, but got {text!r}")
    return sorted(set(levels))


def run_lm_search(args: argparse.Namespace, cfg: SearchConfig, task: Task) -> int:
    import optuna

    from autoprune.lm._search import search_allocation
    from autoprune.lm._summary import lm_summary_lines

    accuracy_only = [o for o in (args.max_accuracy_drop, args.max_latency_ms, args.max_size_bytes) if o is not None]
    if accuracy_only or args.objectives is not None:
        raise ConfigError(
            f"task {task.name!r} scores perplexity (lower is better): use --max-metric-increase R (0.10 is +10%) "
            "and --sparsity; --objectives and --max-accuracy-drop/--max-latency-ms/--max-size-bytes do not apply"
        )
    limit = args.max_metric_increase
    if limit is not None and (not math.isfinite(limit) or limit <= 0):
        raise ConfigError(f"--max-metric-increase must be > 0 (0.10 is +10% perplexity), but got {limit}")
    levels = _levels(args.sparsity)
    criterion = args.criterion or "wanda"
    print(f"autoprune search: study {cfg.study_name!r} in {mask_url(cfg.storage)}, task {task.name}", flush=True)
    print(f"allocation search ({criterion}, per {args.granularity or 'block'}) at sparsity "
          f"{', '.join(f'{v:g}' for v in levels)}, {cfg.trials} trials", flush=True)  # fmt: skip

    def progress(trial: optuna.trial.FrozenTrial) -> None:
        if args.quiet:
            return
        a = trial.user_attrs
        if trial.state.name == "COMPLETE":
            print(f"trial {trial.number:>3} {a.get('role', 'search'):<7} sparsity {a['sparsity']:.1%}  val ppl "
                  f"{a['perplexity']:.3f} ({a['perplexity_increase']:+.1%})", flush=True)  # fmt: skip
        else:
            print(f"trial {trial.number:>3} {trial.state.name}: {a.get('error', '')}", flush=True)

    from autoprune.study._storage import make_storage

    study = search_allocation(
        task,
        sparsity=levels if len(levels) > 1 else levels[0],
        criterion=criterion,
        granularity=args.granularity or "block",
        n_trials=cfg.trials,
        seed=cfg.seed,
        storage=make_storage(cfg),  # SQLite folders created, as the accuracy search does
        study_name=cfg.study_name,
        max_metric_increase=limit,
        target=cfg.target if isinstance(cfg.target, str) else "cpu",
        progress=progress,
    )
    print()
    for line in lm_summary_lines(study, cfg.storage):
        print(line)
    if cfg.report:
        from autoprune.report import default_out_dir, report

        try:
            print(f"report:  {report(study, default_out_dir(cfg.study_name, cfg.storage))}")
        except Exception as exc:  # noqa: BLE001 - the search is stored; a report failure must not hide that
            print(f"report:  not written ({type(exc).__name__}: {exc})")
    return 0
