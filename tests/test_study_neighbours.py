"""The local search: neighbours of the fastest feasible trial (``neighbour_share``)."""

from __future__ import annotations

import random
from pathlib import Path

import optuna
import pytest

import autoprune as ap
from autoprune._lock import machine_lock
from autoprune.config import SearchConfig
from autoprune.study import counted_trials, run_search
from autoprune.study._neighbours import NEIGHBOUR_OF, WINDOW, incumbents, neighbour_amounts, stalled
from autoprune.study._objective import SearchSetup
from autoprune.study.keys import FIDELITY_FULL, FIDELITY_REPEAT, ROLE_SEARCH, ROLE_UNPRUNED, is_feasible, sure_speedup

TINY = {"width": 8, "batch_size": 16}


@pytest.fixture(scope="module")
def tiny_task() -> ap.Task:
    return ap.tasks.get("digits", **TINY)


def _cfg(tmp_path: Path, **kw: object) -> SearchConfig:
    data: dict[str, object] = {
        "task": "digits",
        "task_options": dict(TINY),
        "trials": 12,
        "storage": f"sqlite:///{tmp_path}/s.db",
        "study": "t",
        "latency_budget_s": 0.05,
        "reference_amounts": [0.3, 0.6],
        "warm_start_targets": [0.5],
        "global_reference_amounts": [],
        "reference_refinements": 0,
        "constraints": {"max_accuracy_drop": 5.0},  # a 10-step fine-tune of a width-8 model: room for feasible trials
        "report": False,
        "space": {"fine_tune_steps": [10], "steps": [1, 2]},
    }
    data.update(kw)
    return SearchConfig.from_dict(data)


# ---------------------------------------------------------------------------- one move
def test_a_move_pushes_units_by_one_or_two_steps_and_may_trade() -> None:
    amounts = {"a": 0.3, "b": 0.0, "c": 0.9, "d": 0.5}
    caps = {"a": 0.9, "b": 0.9, "c": 0.9, "d": 0.9}
    savings = {"a": 0.1, "b": 0.2, "c": 0.0, "d": 0.05}
    trades = 0
    for seed in range(200):
        changed = neighbour_amounts(amounts, caps, savings, 0.05, random.Random(seed))
        assert changed == neighbour_amounts(amounts, caps, savings, 0.05, random.Random(seed))  # seeded
        ups = {u: a for u, a in changed.items() if a > amounts[u]}
        downs = {u: a for u, a in changed.items() if a < amounts[u]}
        assert len(ups) == 1  # four units: one pushed per move
        assert "c" not in ups  # at its cap
        (unit, amount), = ups.items()
        k = round((amount - amounts[unit]) / 0.05)
        assert k in (1, 2)
        assert len(downs) <= 1 and set(downs) <= {"a", "c", "d"} - {unit}  # only another pruned unit gives back
        for u, a in downs.items():
            assert a == pytest.approx(amounts[u] - k * 0.05)
        trades += bool(downs)
    assert 60 < trades < 140  # about half the moves trade
    # a unit that saves nothing is never pushed while others save something
    never = {"a": 0.0, "b": 0.2, "c": 0.0, "d": 0.0}
    assert all(
        next(u for u, a in neighbour_amounts(amounts, caps, never, 0.05, random.Random(s)).items() if a > amounts[u]) == "b"
        for s in range(50)
    )


def test_larger_models_move_more_units_at_once() -> None:
    amounts = {f"u{i}": 0.2 for i in range(36)}
    caps = dict.fromkeys(amounts, 0.9)
    changed = neighbour_amounts(amounts, caps, {}, 0.05, random.Random(0))  # no savings known: uniform
    assert sum(a > 0.2 for a in changed.values()) == 3  # round(sqrt(36) / 2)
    # nothing can move up: no move
    assert neighbour_amounts({"a": 0.9}, {"a": 0.9}, {}, 0.05, random.Random(0)) == {}


# ---------------------------------------------------------------------------- in a search
@pytest.mark.slow
def test_a_share_of_the_search_trials_are_neighbours_of_the_fastest_feasible_one(
    tmp_path: Path, tiny_task: ap.Task
) -> None:
    cfg = _cfg(tmp_path)
    study = run_search(cfg, tiny_task)
    S = optuna.trial.TrialState
    assert len(counted_trials(study)) == 12
    assert not [t for t in study.trials if t.state == S.WAITING]  # nothing left for a later search
    by_number = {t.number: t for t in study.trials}
    neighbours = [t for t in study.trials if NEIGHBOUR_OF in t.user_attrs]
    searched = [t for t in study.trials if t.user_attrs.get("role") == ROLE_SEARCH and t.user_attrs.get("fidelity") != FIDELITY_REPEAT]
    assert len(neighbours) >= 2
    assert len(neighbours) <= 0.5 * len(searched) + 1  # the share
    refs = [t.number for t in study.trials if t.user_attrs.get("role") not in (ROLE_SEARCH, ROLE_UNPRUNED)]
    space = SearchSetup.build(tiny_task, cfg, machine_lock()).search_space(study)
    for t in neighbours:
        assert t.user_attrs["role"] == ROLE_SEARCH and t.number > max(refs)  # after every reference
        incumbent = by_number[t.user_attrs[NEIGHBOUR_OF]]
        assert incumbent.number < t.number
        assert incumbent.user_attrs["fidelity"] == FIDELITY_FULL and is_feasible(incumbent)
        assert incumbent.user_attrs["role"] != ROLE_UNPRUNED
        # the same schedule but for a few units' structured amounts, each moved by k grid steps
        mine, theirs = ap.Schedule.from_json(t.user_attrs["schedule"]), ap.Schedule.from_json(incumbent.user_attrs["schedule"])
        assert (mine.steps, mine.shape, mine.importance, mine.round_to, mine.fine_tune_steps) == (
            theirs.steps, theirs.shape, theirs.importance, theirs.round_to, theirs.fine_tune_steps
        )  # fmt: skip
        a, b = space.unit_amounts(mine), space.unit_amounts(theirs)
        moved = {u: round((a.get(u, ("", 0.0))[1] - b.get(u, ("", 0.0))[1]) / 0.05) for u in set(a) | set(b)}
        moved = {u: k for u, k in moved.items() if k}
        assert 1 <= len(moved) <= 2 and len({abs(k) for k in moved.values()}) == 1 and max(moved.values()) > 0
    # the first neighbour is around the fastest feasible full trial at that moment
    first = min(neighbours, key=lambda t: t.number)
    before = [t for t in study.trials if t.number < first.number and t.state == S.COMPLETE
              and t.user_attrs.get("fidelity") == FIDELITY_FULL and t.user_attrs.get("role") != ROLE_UNPRUNED
              and is_feasible(t)]  # fmt: skip
    fastest = max(before, key=lambda t: (sure_speedup(t.user_attrs), -t.number))
    assert first.user_attrs[NEIGHBOUR_OF] == fastest.number
    assert [t.number for t in incumbents(study, True)][:1] == [max(
        (t for t in study.trials if t.state == S.COMPLETE and t.user_attrs.get("fidelity") == FIDELITY_FULL
         and t.user_attrs.get("role") != ROLE_UNPRUNED and is_feasible(t)),
        key=lambda t: (sure_speedup(t.user_attrs), -t.number)).number]  # fmt: skip


@pytest.mark.slow
def test_no_neighbours_at_share_zero(tmp_path: Path, tiny_task: ap.Task) -> None:
    study = run_search(_cfg(tmp_path, trials=8, neighbour_share=0), tiny_task)
    assert len(counted_trials(study)) == 8
    assert not [t for t in study.trials if NEIGHBOUR_OF in t.user_attrs]


@pytest.mark.parametrize("bad", [-0.1, 1, 1.5, True, "half"])
def test_neighbour_share_is_checked(bad: object) -> None:
    with pytest.raises(ap.ConfigError, match=r"neighbour_share = .*; allowed: a number with 0 <= neighbour_share < 1"):
        SearchConfig.from_dict({"neighbour_share": bad})


def _finished(study: optuna.Study, number_of: int | None, *, feasible: bool, fidelity: str = FIDELITY_FULL) -> None:
    attrs: dict[str, object] = {"role": ROLE_SEARCH, "fidelity": fidelity, "feasible": feasible}
    if number_of is not None:
        attrs[NEIGHBOUR_OF] = number_of
    state = optuna.trial.TrialState.COMPLETE if fidelity == FIDELITY_FULL else optuna.trial.TrialState.PRUNED
    study.add_trial(optuna.trial.create_trial(state=state, values=[90.0, 1.0] if state.name == "COMPLETE" else None,
                                              user_attrs=attrs))  # fmt: skip


def test_the_local_search_pauses_after_a_window_of_misses_until_a_new_centre() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    _finished(study, None, feasible=True)  # trial 0: the centre
    centre = study.trials[0]
    for _ in range(WINDOW - 1):
        _finished(study, 0, feasible=False)
    assert not stalled(study, centre)  # not yet a full window
    _finished(study, 0, feasible=True, fidelity="screen")  # screened out: a miss too
    assert stalled(study, centre)
    _finished(study, None, feasible=True)  # TPE finds a new fastest feasible trial: a new centre
    assert not stalled(study, study.trials[-1])
    _finished(study, 0, feasible=True)  # a neighbour that met the constraints resets the window
    assert not stalled(study, centre)
