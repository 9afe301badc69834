"""Print the trials of a study in the columns `autoprune search` ends with (trial, kind,
state, validation and test drop, speedup with its 95% interval, size), one line each within
100 columns, the recommended trials marked; --pareto: only the front; --recommend: the strict
front and the recommendations with their commands, as the search printed them; --csv FILE:
every column of the trials table (objective values, metrics, schedule summary, error)."""

from __future__ import annotations

import argparse

from autoprune.config import DEFAULT_STORAGE


def _points(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"invalid tolerance {text!r}; allowed: a number of points >= 0")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help=f"Optuna storage URL (default {DEFAULT_STORAGE})")
    p.add_argument("--pareto", action="store_true", help="only the trials on the study's front (feasible, fully run)")
    p.add_argument(
        "--tolerance",
        type=_points,
        metavar="POINTS",
        help="with --pareto: a trial leaves the front only when another, no worse anywhere, is this many points "
        "more accurate on validation (default: the study's front_tolerance; 0: the strict Pareto front)",
    )
    p.add_argument(
        "--recommend",
        action="store_true",
        help="the strict front and the recommended trials with the commands that apply them, as `autoprune search` "
        "ends",
    )
    p.add_argument("--csv", metavar="FILE", help="also write the full table (every column) as CSV")


def run(args: argparse.Namespace) -> int:
    from autoprune._errors import ConfigError
    from autoprune.study import load_study
    from autoprune.study._recommend import recommend, trial_lines, trial_row

    results = load_study(args.study, args.storage)
    # --pareto: the same front as StudyResults.pareto(): feasible, complete, fully run
    if args.tolerance is not None and not args.pareto:
        raise ConfigError(f"--tolerance {args.tolerance:g} applies to --pareto only; add --pareto")
    if args.recommend and (args.pareto or args.csv):
        raise ConfigError("--recommend prints the strict front and the picks; drop --pareto and --csv")
    from autoprune.lm._summary import is_lm_study, lm_summary_lines, lm_trial_lines

    if is_lm_study(results.study):  # a perplexity study (the allocation search)
        if args.pareto or args.tolerance is not None:
            raise ConfigError("--pareto applies to accuracy studies; a perplexity study lists every trial "
                              "(--recommend: the per-level summary)")  # fmt: skip
        if args.csv:
            results._table(results.study.get_trials(deepcopy=False)).reset_index().to_csv(args.csv, index=False)
        lines = lm_summary_lines(results.study, args.storage) if args.recommend else lm_trial_lines(results.study.trials)
        print("\n".join(lines))
        return 0
    if args.recommend:
        from autoprune.commands.search import summary_lines

        print("\n".join(summary_lines(results.study, args.storage)))
        return 0
    trials = results.pareto_trials(args.tolerance) if args.pareto else results.study.get_trials(deepcopy=False)
    if args.csv:
        results._table(trials).reset_index().to_csv(args.csv, index=False)
    picks = {p.number: p.label for p in recommend(results.study).picks}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        row = trial_row(t, results.unpruned)
        if t.number in picks:
            row = row._replace(note=picks[t.number] + (f"; {row.note}" if row.note else ""))
        rows.append(row)
    print("\n".join(trial_lines(rows)) if rows else "(no trials)")
    return 0
