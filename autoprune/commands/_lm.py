"""``autoprune search`` on a language-model task: the allocation search, or with
``--structure`` the structural search (heads, MLP channels, blocks; autoprune.lm)."""

from __future__ import annotations

import argparse
import math

from autoprune._errors import ConfigError
from autoprune.config import SearchConfig, mask_url
from autoprune.tasks import Task

__all__ = ["add_lm_arguments", "check_structure_arguments", "refuse_accuracy_options", "run_lm_search"]

_DEFAULT_LEVELS = (0.5, 0.6, 0.7)


def add_lm_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("language-model tasks (perplexity; e.g. --task tinylm)")
    g.add_argument("--sparsity", help="total sparsity of the linear layers, one or comma-separated levels "
                   f"(default {','.join(map(str, _DEFAULT_LEVELS))}; several make size a second objective); with "
                   "--structure: Wanda amounts or N:M patterns a trial may add (e.g. 0.5,2:4), size an objective")  # fmt: skip
    g.add_argument("--criterion", choices=("magnitude", "wanda", "sparsegpt"), help="default wanda")
    g.add_argument(
        "--granularity", choices=("block", "layer"), help="one amount per decoder block (default) or per layer"
    )
    g.add_argument("--max-metric-increase", type=float, metavar="R",
                   help="constraint: largest relative perplexity increase on validation (0.10: +10%%)")  # fmt: skip
    g.add_argument("--structure", action="store_true",
                   help="search heads, MLP channels and blocks to remove (faster models) instead of sparsity")  # fmt: skip
    g.add_argument("--latency", choices=("prefill", "decode"),
                   help="with --structure: the speedup maximised (default prefill; both are measured)")  # fmt: skip
    g.add_argument("--fine-tune-steps", type=int, metavar="N",
                   help="with --structure: recovery steps of every trial (default 50; distillation)")  # fmt: skip


def check_structure_arguments(args: argparse.Namespace) -> None:
    """The structural search's options, checked before any task is built."""
    if not args.structure:
        given = [f for f, v in (("--latency", args.latency), ("--fine-tune-steps", args.fine_tune_steps)) if v is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} apply to the structural search: add --structure")
        return
    if args.criterion is not None or args.granularity is not None:
        raise ConfigError("--criterion and --granularity apply to the allocation search; --structure cuts heads, "
                          "MLP channels and blocks (--sparsity adds Wanda on top)")  # fmt: skip
    if args.fine_tune_steps is not None and args.fine_tune_steps < 0:
        raise ConfigError(f"--fine-tune-steps must be >= 0, but got {args.fine_tune_steps}")


def refuse_accuracy_options(args: argparse.Namespace, task_name: str) -> None:
    """The accuracy search's options on a perplexity task: refused, saying what to use."""
    accuracy_only = [o for o in (args.max_accuracy_drop, args.max_latency_ms, args.max_size_bytes) if o is not None]
    if accuracy_only or args.objectives is not None:
        raise ConfigError(
            f"task {task_name!r} scores perplexity (lower is better): use --max-metric-increase R (0.10 is +10%) "
            "and --sparsity; --objectives and --max-accuracy-drop/--max-latency-ms/--max-size-bytes do not apply"
        )


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

    refuse_accuracy_options(args, task.name)
    limit = args.max_metric_increase
    if limit is not None and (not math.isfinite(limit) or limit <= 0):
        raise ConfigError(f"--max-metric-increase must be > 0 (0.10 is +10% perplexity), but got {limit}")
    if args.structure:
        return _run_structure(args, cfg, task, limit)
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


def _run_structure(args: argparse.Namespace, cfg: SearchConfig, task: Task, limit: float | None) -> int:
    import optuna

    from autoprune.lm._structured import search_structure
    from autoprune.lm._summary import lm_summary_lines
    from autoprune.study._storage import make_storage

    steps = 50 if args.fine_tune_steps is None else args.fine_tune_steps
    levels: list[float | str] = []
    for token in (args.sparsity or "").split(","):
        token = token.strip()
        if token:
            levels.append(token if ":" in token else _levels(token)[0])
    latency = args.latency or "prefill"
    target = cfg.target if isinstance(cfg.target, str) else "cpu:threads=1"
    print(f"autoprune search: study {cfg.study_name!r} in {mask_url(cfg.storage)}, task {task.name}", flush=True)
    print(f"structural search (heads, MLP channels, blocks{', Wanda at ' + ','.join(map(str, levels)) if levels else ''})"
          f", {cfg.trials} trials of {steps} recovery steps, objective {latency} speedup on {target}", flush=True)  # fmt: skip

    def progress(trial: optuna.trial.FrozenTrial) -> None:
        if args.quiet:
            return
        a = trial.user_attrs
        if trial.state.name == "COMPLETE":
            print(f"trial {trial.number:>3} {a.get('role', 'search')[:17]:<17} params -{a['params_removed']:.1%}  val ppl "
                  f"{a['perplexity']:.3f} ({a['perplexity_increase']:+.1%})  prefill {a['prefill_speedup']:.2f}x  "
                  f"decode {a['decode_speedup']:.2f}x", flush=True)  # fmt: skip
        else:
            print(f"trial {trial.number:>3} {trial.state.name}: {a.get('error', '')}", flush=True)

    study = search_structure(task, n_trials=cfg.trials, latency=latency, fine_tune_steps=steps, sparsity=levels,
                             seed=cfg.seed, storage=make_storage(cfg), study_name=cfg.study_name,
                             max_metric_increase=limit, target=target, budget_s=cfg.latency_budget_s,
                             progress=progress)  # fmt: skip
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
