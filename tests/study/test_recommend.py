"""What a search ends with: the strict front in 100 columns, the picks with the commands that
apply them, and the progress lines on a pipe. Studies are built with Optuna directly, following
the contract in autoprune.study.keys."""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import optuna
import pytest

import autoprune as ap
from autoprune.cli import build_parser
from autoprune.commands.search import summary_lines
from autoprune.study import keys as study_keys
from autoprune.study._progress import progress_bar, trial_line
from autoprune.study._recommend import TrialRow, front_lines, knee, pick_lines, recommend, trial_lines
from autoprune.testing.cli import CliRun, run_cli

SCHEDULE = ap.Schedule(layers={"a": ap.LayerPlan("structured", 0.5)}, fine_tune_steps=10)
BASE = {"accuracy": 99.0, "test_accuracy": 98.0, "latency_ms": 10.0, "dense_bytes": 1_000_000, "sparse_bytes": 1_000_000}


def _study(storage: str, name: str, objectives: list[str], limit: float = 1.0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=storage, directions=[study_keys.DIRECTIONS[o] for o in objectives]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(objectives)
    study.set_user_attr("objectives", objectives)
    study.set_user_attr("unpruned", BASE)
    study.set_user_attr("config", {"constraints": {"max_accuracy_drop": limit}, "front_tolerance": 0.5})
    study.set_user_attr("task", {"name": "digits", "width": 16, "batch_size": 32})
    return study


def _add(
    study: optuna.Study,
    val_drop: float,
    speedup: float,
    size: float,
    *,
    test_drop: float | None = None,
    role: str = study_keys.ROLE_SEARCH,
    state: optuna.trial.TrialState = optuna.trial.TrialState.COMPLETE,
    **extra: Any,
) -> None:
    limit = study.user_attrs["config"]["constraints"]["max_accuracy_drop"]
    attrs: dict[str, Any] = {
        "role": role,
        "schedule": SCHEDULE.to_json(),
        "accuracy": BASE["accuracy"] - val_drop,
        "accuracy_drop": val_drop,
        "test_accuracy": BASE["test_accuracy"] - (val_drop if test_drop is None else test_drop),
        "test_accuracy_drop": val_drop if test_drop is None else test_drop,
        "latency_ms": BASE["latency_ms"] / speedup,
        "speedup": speedup,
        "speedup_low": speedup * 0.98,
        "speedup_high": speedup * 1.02,
        "sparse_bytes": size,
        "nonzero_params": size / 4,
        "compression": BASE["dense_bytes"] / size,
        "feasible": val_drop <= limit,
        "fidelity": study_keys.FIDELITY_FULL,
        **extra,
    }
    names = study_keys.objective_names(study)
    complete = state == optuna.trial.TrialState.COMPLETE
    values = [float(attrs[study_keys.OBJECTIVES[o][0]]) for o in names] if complete else None
    study.add_trial(optuna.trial.create_trial(state=state, values=values, user_attrs=attrs))


def _digits_like(storage: str, name: str = "demo", objectives: tuple[str, ...] = ("accuracy", "latency")) -> optuna.Study:
    """A front bent at trial 3, a faster trial over the limit, one screened out, one failed."""
    study = _study(storage, name, list(objectives))
    _add(study, 0.0, 1.0, 1_000_000, role=study_keys.ROLE_UNPRUNED)  # 0
    _add(study, 0.0, 1.8, 650_000, role=study_keys.ROLE_UNIFORM, uniform_amount=0.25)  # 1
    _add(study, 0.2, 2.0, 700_000)  # 2: dominated by 1? no: faster; on the front
    _add(study, 0.3, 4.0, 120_000, test_drop=0.9, neighbour_of=2)  # 3: the knee (a local move)
    _add(study, 0.9, 4.4, 90_000, test_drop=1.3)  # 4: the fastest within 1 point
    _add(study, 2.5, 6.0, 50_000)  # 5: over the limit
    _add(study, 0.5, 3.0, 40_000)  # 6: the smallest within the limit, slower than 3
    _add(
        study, 0.0, 1.0, 1_000_000, state=optuna.trial.TrialState.PRUNED,
        fidelity=study_keys.FIDELITY_SCREEN, screen_reason="cannot meet the constraint",
    )  # 7
    study.add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"error": "RuntimeError: boom"})
    )  # 8
    return study


def _row(number: int, val_drop: float, speedup: float) -> TrialRow:
    nan = math.nan
    return TrialRow(number, "search", "ok", val_drop, nan, speedup, nan, nan, nan, nan, nan, "")


# ---------------------------------------------------------------------------- knee
def test_knee_is_the_point_farthest_above_the_chord() -> None:
    rows = [_row(0, 0.0, 1.0), _row(1, 0.2, 2.0), _row(2, 0.3, 4.0), _row(3, 0.9, 4.3)]
    # scaled: (0, 0), (0.22, 0.30), (0.33, 0.91), (1, 1): trial 2 is farthest above y = x
    assert knee(rows).number == 2  # type: ignore[union-attr]
    assert knee(list(reversed(rows))).number == 2  # type: ignore[union-attr]  # order does not matter
    # a dominated point is not a candidate, however far it is from the chord
    assert knee([*rows, _row(9, 0.3, 3.9)]).number == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "rows",
    [
        [_row(0, 0.0, 1.0), _row(1, 1.0, 2.0)],  # two points: no interior
        [_row(0, 0.0, 1.0), _row(1, 0.5, 1.5), _row(2, 1.0, 2.0)],  # straight
        [_row(0, 0.0, 1.0), _row(1, 0.5, 1.2), _row(2, 1.0, 2.0)],  # sagging
    ],
)
def test_no_knee_without_a_bend(rows: list[TrialRow]) -> None:
    assert knee(rows) is None


# ---------------------------------------------------------------------------- recommend
def test_recommend_strict_front_and_picks(tmp_path: Any) -> None:
    study = _digits_like(f"sqlite:///{tmp_path}/r.db")
    rec = recommend(study)
    # strict, feasible, fully run; sorted from the least validation drop to the most
    assert [r.number for r in rec.rows] == [1, 2, 3, 4]  # 6 is slower than 3 and drops more
    assert rec.full_trials == 7 and rec.constraints == {"max_accuracy_drop": 1.0}
    assert [(p.label, p.number) for p in rec.picks] == [("fastest", 4), ("knee", 3)]
    assert rec.picks[1].why == "the knee; the fastest is 10% faster for 0.60 more val drop"
    assert rec.row(3).kind == "local" and rec.row(1).kind == "uniform 25%"
    assert rec.row(3).test_drop == pytest.approx(0.9) and rec.row(3).val_drop == pytest.approx(0.3)
    assert [p.number for p in rec.selection_effect()] == [4, 3]  # both lost more on test


def test_recommend_smallest_when_size_is_an_objective(tmp_path: Any) -> None:
    study = _digits_like(f"sqlite:///{tmp_path}/r.db", objectives=("accuracy", "latency", "size"))
    rec = recommend(study)
    assert [(p.label, p.number, p.minimize) for p in rec.picks] == [
        ("fastest", 4, "latency"), ("knee", 3, "latency"), ("smallest", 6, "size")
    ]
    assert rec.picks[2].why == "the smallest with drop <= 1 on validation"
    # the picks are what pick() chooses by rule
    results = ap.load_study("demo", f"sqlite:///{tmp_path}/r.db")
    assert results.pick(max_accuracy_drop=1.0, minimize="latency").number == 4
    assert results.pick(max_accuracy_drop=1.0, minimize="size").number == 6


def test_a_pick_that_is_also_the_smallest_says_so(tmp_path: Any) -> None:
    study = _study(f"sqlite:///{tmp_path}/r.db", "s", ["accuracy", "latency", "size"])
    _add(study, 0.0, 1.0, 1_000_000, role=study_keys.ROLE_UNPRUNED)
    _add(study, 0.5, 3.0, 10_000)
    rec = recommend(study)
    assert [(p.label, p.number) for p in rec.picks] == [("fastest", 1)]
    assert rec.picks[0].why.endswith("; also the smallest")


def test_no_feasible_trial_recommends_nothing(tmp_path: Any) -> None:
    study = _study(f"sqlite:///{tmp_path}/r.db", "none", ["accuracy", "latency"], limit=0.1)
    _add(study, 0.5, 3.0, 10_000)
    rec = recommend(study)
    assert rec.rows == [] and rec.picks == []
    assert pick_lines(rec) == ["No trial meets drop <= 0.1 yet: nothing to recommend."]


# ---------------------------------------------------------------------------- lines
def test_front_and_pick_lines_fit_100_columns_and_name_exact_commands(tmp_path: Any) -> None:
    storage = f"sqlite:///{tmp_path}/r.db"
    rec = recommend(_digits_like(storage, "digits", ("accuracy", "latency", "size")))
    front = front_lines(rec)
    assert front[0].split() == ["trial", "kind", "val", "drop", "test", "drop", "speedup", "(95%", "CI)", "size",
                                "(ratio)", "pick"]
    assert front[3].split() == ["3", "local", "0.30", "0.90", "4.00x", "(3.92-4.08)", "120", "kB", "(8.3x)", "knee"]
    assert front[5].split()[-1] == "fastest"
    picks = pick_lines(rec, storage)
    assert all(len(line) <= 100 for line in [*front, *pick_lines(rec)])  # a long storage URL may not
    assert picks[1] == "  fastest   trial 4 (test drop 1.30): the fastest with drop <= 1 on validation"
    assert picks[2].strip() == f"autoprune apply --study digits --storage {storage} --trial 4 --out pruned-4"
    assert picks[3].strip() == f'model = ap.load_study("digits", "{storage}").pick(trial=4).apply()'
    assert picks[-1] == "Selection effect: validation picked trials 3, 4 from 7, which flatters them: expect the test drop."
    # the command parses to the trial; the Python call (without .apply()) picks it
    args = build_parser().parse_args(picks[2].split()[1:])
    assert (args.study, args.storage, args.trial, args.out) == ("digits", storage, 4, "pruned-4")
    call = picks[3].strip().removeprefix("model = ").removesuffix(".apply()")
    assert eval(call, {"ap": ap}).number == 4  # noqa: S307 - our own printed line
    # the default storage is left out of both
    default = pick_lines(rec)
    assert default[2].strip() == "autoprune apply --study digits --trial 4 --out pruned-4"
    assert default[3].strip() == 'model = ap.load_study("digits").pick(trial=4).apply()'


def test_passwords_are_masked_in_the_commands(tmp_path: Any) -> None:
    rec = recommend(_digits_like(f"sqlite:///{tmp_path}/r.db"))
    lines = pick_lines(rec, "postgresql://u:secret@db/ap")
    assert "secret" not in "\n".join(lines) and "--storage postgresql://u:***@db/ap" in lines[2]


def test_trial_lines_show_every_state(tmp_path: Any) -> None:
    study = _digits_like(f"sqlite:///{tmp_path}/r.db")
    rows = [recommend(study).rows[0]]
    from autoprune.study._recommend import trial_row

    rows = [trial_row(t, BASE) for t in study.get_trials()]
    lines = trial_lines(rows)
    assert all(len(line) <= 100 for line in lines)
    states = {line.split()[0]: line for line in lines[1:]}
    assert states["0"].split()[1:3] == ["unpruned", "ok"]
    assert states["5"].split()[2:5] == ["infeasible", "2.50", "2.50"]
    assert states["7"].split()[2] == "screened" and states["7"].endswith(" cannot meet the c...")  # cut at 100
    assert states["8"].split()[1:] == ["search", "failed", "RuntimeError:", "boom"]  # nothing measured: the note


def test_cli_trials_prints_the_narrow_table_and_recommend_the_search_summary(tmp_path: Any) -> None:
    storage = f"sqlite:///{tmp_path}/r.db"
    study = _digits_like(storage)

    def trials(*flags: str) -> CliRun:
        return run_cli("trials", "--study", "demo", "--storage", storage, *flags)

    every = trials()
    assert every.returncode == 0, every.stderr
    lines = every.stdout.splitlines()
    assert [int(line.split()[0]) for line in lines[1:]] == list(range(9))
    assert all(len(line) <= 100 for line in lines)
    assert lines[4].split()[-1] == "fastest" or lines[5].split()[-1] == "fastest"
    assert lines[5].split()[-1] == "fastest" and lines[4].split()[-1] == "knee"
    recommended = trials("--recommend")
    assert recommended.returncode == 0, recommended.stderr
    assert recommended.stdout.splitlines() == summary_lines(study, storage)
    bad = trials("--recommend", "--pareto")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- progress
def test_progress_on_a_pipe_is_one_line_per_finished_trial(tmp_path: Any) -> None:
    study = _study(f"sqlite:///{tmp_path}/p.db", "p", ["accuracy", "latency"])
    _add(study, 0.0, 1.0, 1_000_000, role=study_keys.ROLE_UNPRUNED)  # before: not counted, not shown
    cfg = ap.SearchConfig(study="p")
    out = io.StringIO()  # not a terminal
    with progress_bar(study, cfg, 3, stream=out, poll_s=0.05):
        _add(study, 0.4, 2.5, 100_000, role=study_keys.ROLE_UNIFORM, uniform_amount=0.5)
        _add(study, 2.0, 3.0, 50_000)
        _add(
            study, 0.0, 1.0, 1, state=optuna.trial.TrialState.PRUNED,
            fidelity=study_keys.FIDELITY_SCREEN, screen_reason="x",
        )
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert lines[0].startswith("[1/3 0:00] trial 1   uniform 50%")
    assert lines[0].endswith("val drop 0.40  2.50x faster")
    assert lines[1].endswith("val drop 2.00  3.00x faster  (misses a constraint)")
    assert lines[2].endswith("screened out (cheap fine-tune)") and lines[2].startswith("[3/3")


def test_progress_on_a_terminal_is_a_live_bar(tmp_path: Any) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    study = _study(f"sqlite:///{tmp_path}/p.db", "p", ["accuracy", "latency"])
    out = Terminal()
    with progress_bar(study, ap.SearchConfig(study="p"), 2, stream=out, poll_s=0.05):
        _add(study, 0.4, 2.5, 100_000)
        _add(study, 0.5, 2.0, 100_000)
    text = out.getvalue()
    assert "\r" in text and "search p" in text and "2/2" in text
    assert "trial 0" not in text  # no per-trial lines


def test_trial_line_counts_and_times(tmp_path: Any) -> None:
    study = _study(f"sqlite:///{tmp_path}/p.db", "p", ["accuracy", "latency"])
    _add(study, 0.37, 5.0, 100_000, role=study_keys.ROLE_GLOBAL, global_amount=0.5)
    line = trial_line(study.get_trials()[0], BASE, done=7, total=40, elapsed_s=83.4)
    assert line == "[ 7/40 1:23] trial 0   global 50%      val drop 0.37  5.00x faster"


def test_wide_trials_tables_narrow_their_columns_before_cutting_a_pick() -> None:
    wide = TrialRow(32, "sensitivity 50%", "infeasible", 23.33, 22.44, 12.74, 12.23, 13.41, 13_000, 89.5, math.nan,
                    "")
    picked = TrialRow(33, "local", "ok", 0.0, 1.11, 9.9, 9.61, 10.23, 55_000, 21.1, math.nan, "fastest")
    lines = trial_lines([wide, picked])
    assert max(len(line) for line in lines) <= 100
    assert lines[2].endswith(" fastest")
    assert lines[1].split() == ["32", "sensitivity", "50%", "infeasible", "23.33", "22.44", "12.74x", "(12.23-13.41)",
                                "13", "kB", "(89.5x)"]


def test_reference_value_reads_each_family_and_the_older_sensitivity_name() -> None:
    """The value a reference family varies, by role; sensitivity references stored it as
    ``warm_target`` before they had their name, and both read the same."""
    from autoprune.study.keys import ROLE_GLOBAL, ROLE_SEARCH, ROLE_SENSITIVITY, ROLE_UNIFORM, reference_value

    def trial(role: str, **attrs: object) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(values=[1.0], user_attrs={"role": role, **attrs})

    assert reference_value(trial(ROLE_UNIFORM, uniform_amount=0.5)) == 0.5
    assert reference_value(trial(ROLE_SENSITIVITY, sensitivity_target=0.75)) == 0.75
    assert reference_value(trial(ROLE_SENSITIVITY, warm_target=0.9)) == 0.9
    assert reference_value(trial(ROLE_GLOBAL, global_amount=0.3)) == 0.3
    assert reference_value(trial(ROLE_SEARCH, uniform_amount=0.5)) is None
    assert reference_value(trial(ROLE_UNIFORM)) is None
