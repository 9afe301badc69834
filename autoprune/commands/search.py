"""Run a multi-objective pruning search. With no arguments: the built-in digits task with
sensible defaults (about two minutes on 2 cores). Running the same command again resumes the
study and runs only the trials still missing; Ctrl-C leaves a resumable study."""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import TYPE_CHECKING, Any

from autoprune._errors import ConfigError
from autoprune.commands._lm import add_lm_arguments, check_structure_arguments, refuse_accuracy_options, run_lm_search
from autoprune.config import DEFAULT_STORAGE, SAMPLERS, SearchConfig, load_toml, mask_url
from autoprune.tasks import task_metric

if TYPE_CHECKING:
    import optuna



def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", metavar="STUDY.toml", help="study config (see studies/digits.toml)")
    p.add_argument("--task", help="built-in task name (digits) or 'package.module:factory'")
    p.add_argument(
        "--objectives",
        help="2 or 3 comma-separated objectives from accuracy, latency, size, params, macs (default accuracy,latency)",
    )
    p.add_argument("--trials", type=int, help="total trials in the study (default 40)")
    p.add_argument("--worker-trials", type=int, help="run exactly this many trials in this process (distributed workers)")
    p.add_argument("--workers", type=int, help="parallel worker processes on this machine (default 1)")
    p.add_argument("--target", help="latency target: cpu, cuda, cuda:N, with options e.g. 'cpu:threads=2,batch=32'")
    p.add_argument("--storage", help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    p.add_argument("--study", help="study name (default: the task name)")
    p.add_argument("--seed", type=int, help="seed of the sampler and the schedules (default 0)")
    p.add_argument("--sampler", choices=SAMPLERS, help="Optuna sampler (default tpe)")
    p.add_argument("--max-accuracy-drop", type=float, help="constraint: largest accuracy drop in points (default 1.0)")
    p.add_argument("--max-latency-ms", type=float, help="constraint: latency budget in ms")
    p.add_argument("--max-size-bytes", type=float, help="constraint: size budget in bytes (sparse encoding)")
    p.add_argument("--heartbeat", type=int, metavar="SECONDS", help="Optuna heartbeat interval (fail and retry trials of dead workers)")
    p.add_argument(
        "--join",
        type=float,
        nargs="?",
        const=600.0,
        metavar="SECONDS",
        help="join an existing --study only: wait up to SECONDS (default 600) for another worker to create it, "
        "never create it here",
    )
    p.add_argument("--no-report", action="store_true", help="do not write the HTML report at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="log every finished trial (Optuna's INFO lines)")
    add_lm_arguments(p)


def _config_from_args(args: argparse.Namespace) -> SearchConfig:
    from autoprune.study import stored_config

    cfg = load_toml(args.config) if args.config else None
    overrides: dict[str, Any] = {
        "task": args.task,
        "trials": args.trials,
        "worker_trials": args.worker_trials,
        "workers": args.workers,
        "target": args.target,
        "storage": args.storage,
        "study": args.study,
        "seed": args.seed,
        "sampler": args.sampler,
        "heartbeat_interval": args.heartbeat,
    }
    if args.objectives is not None:
        overrides["objectives"] = [o.strip() for o in args.objectives.split(",") if o.strip()]
    if args.no_report:
        overrides["report"] = False
    if args.join is not None:
        if not args.study:
            raise ConfigError("--join needs --study NAME (the study to join)")
        if args.join < 0 or not math.isfinite(args.join):
            raise ConfigError(f"--join {args.join} is not allowed: a number of seconds >= 0")
        stored = _wait_for_study(args.study, args.storage or DEFAULT_STORAGE, args.join)
        cfg = cfg or stored
    elif cfg is None and args.study and not args.task:
        # Joining an existing study with just --study/--storage: take its saved config.
        cfg = stored_config(args.study, args.storage or DEFAULT_STORAGE)
    base = cfg or SearchConfig()
    constraints = dict(base.constraints)
    for key in ("max_accuracy_drop", "max_latency_ms", "max_size_bytes"):
        value = getattr(args, key)
        if value is not None:
            constraints[key] = value
    overrides["constraints"] = constraints
    return base.merged(**overrides)


def _wait_for_study(name: str, storage: str, seconds: float) -> SearchConfig:
    """The config stored in study ``name``, waiting up to ``seconds`` for its creator."""
    from autoprune.study import stored_config

    deadline = time.monotonic() + seconds
    while True:
        cfg = stored_config(name, storage)
        if cfg is not None:
            return cfg
        if time.monotonic() >= deadline:
            raise ConfigError(
                f"study {name!r} does not exist in {mask_url(storage)} after waiting {seconds:g} s; "
                "start the first worker with the study config (it creates the study), or drop --join"
            )
        time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))


def summary_lines(study: optuna.Study, storage: str) -> list[str]:
    """What a search ends with, and ``autoprune trials --pareto`` prints again: the strict
    front in 100 columns, then at most three picks with the commands that apply them."""
    from autoprune.study._recommend import front_lines, pick_lines, recommend

    rec = recommend(study)
    limit = ", ".join(f"{k} = {v:g}" for k, v in rec.constraints.items()) or "no constraint"
    head = f"Pareto front (strict; {limit} on validation): {len(rec.rows)} of {rec.full_trials} fully fine-tuned trials"
    body = front_lines(rec) if rec.rows else ["  (no trial meets the constraints yet)"]
    return [head, *body, "", *pick_lines(rec, storage)]


def _refuse_language_model_options(args: argparse.Namespace, task_name: str, metric: str) -> None:
    lm_only = {"--sparsity": args.sparsity, "--criterion": args.criterion, "--granularity": args.granularity,
               "--max-metric-increase": args.max_metric_increase, "--structure": args.structure or None,
               "--latency": args.latency, "--fine-tune-steps": args.fine_tune_steps}  # fmt: skip
    given = [k for k, v in lm_only.items() if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to language-model tasks (e.g. --task tinylm); task {task_name!r} "
                          f"scores {metric}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import optuna

    from autoprune.study import build_task, check_joinable, run_search

    # Failed trials are recorded with their error (`autoprune trials` shows it); Optuna's own
    # warning would print a traceback per failed trial.
    optuna.logging.set_verbosity(optuna.logging.INFO if args.verbose else optuna.logging.ERROR)
    check_structure_arguments(args)
    cfg = _config_from_args(args)
    # A built-in task's metric is known before it is built (trained or loaded): options of the
    # other kind of search are refused at once; a user's task is checked once built.
    known = task_metric(cfg.task)
    if known == "perplexity":
        refuse_accuracy_options(args, cfg.task)
    elif known is not None:
        _refuse_language_model_options(args, cfg.task, known)
    task = build_task(cfg)
    if not task.higher_is_better:  # a perplexity task: the allocation search (autoprune.lm)
        return run_lm_search(args, cfg, task)
    _refuse_language_model_options(args, task.name, task.metric_name)
    check_joinable(cfg)  # refuses a contradicting config before anything is printed
    print(
        f"autoprune search: study {cfg.study_name!r} in {mask_url(cfg.storage)}, task {cfg.task}, "
        f"objectives {','.join(cfg.objectives)}, {cfg.trials} trials, sampler {cfg.sampler}",
        flush=True,
    )
    study = run_search(cfg, task, progress=not args.quiet)
    from autoprune.report import default_out_dir

    out_dir = default_out_dir(cfg.study_name, cfg.storage)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")
    print()
    for line in summary_lines(study, cfg.storage):
        print(line)
    print()
    if cfg.report:
        try:
            from autoprune.report import report

            page = report(study, out_dir)
            print(f"report:  {page}")
        except Exception as exc:  # noqa: BLE001 - the search is stored; a report failure must not hide that
            print(f"report:  not written ({type(exc).__name__}: {exc})")
    failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
    if failed:
        print(f"failed:  {len(failed)} trial(s), e.g. #{failed[-1].number}: {failed[-1].user_attrs.get('error', '?')}")
    storage = "" if cfg.storage == DEFAULT_STORAGE else f" --storage {mask_url(cfg.storage)}"
    print(f"trials:  autoprune trials --study {cfg.study_name}{storage}    (every trial; --csv FILE: every column)")
    return 0
