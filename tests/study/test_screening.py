"""The search's cheap stages: sensitivity scan and warm starts, screening, the local search
(neighbours), and the test split kept away from the sampler."""

from __future__ import annotations

import dataclasses
import random
import statistics
from pathlib import Path

import optuna
import pytest

import autoprune as ap
from autoprune._lock import machine_lock
from autoprune.config import SearchConfig
from autoprune.sensitivity import Sensitivity, macs_meter, sensitivity_allocations
from autoprune.study import counted_trials, run_search, sure_speedup
from autoprune.study._neighbours import NEIGHBOUR_OF, WINDOW, incumbents, neighbour_amounts, stalled
from autoprune.study._objective import SearchSetup
from autoprune.study._references import REFERENCE_FAMILIES
from autoprune.study._refine import bracket
from autoprune.study._screening import Screening, screening_pays
from autoprune.study.keys import (
    FIDELITY_FULL,
    FIDELITY_REPEAT,
    FIDELITY_SCREEN,
    ROLE_GLOBAL,
    ROLE_SEARCH,
    ROLE_SENSITIVITY,
    ROLE_UNIFORM,
    ROLE_UNPRUNED,
    is_feasible,
)

TINY = {"width": 8, "batch_size": 16}


def _cfg(tmp_path: Path, **kw: object) -> SearchConfig:
    data: dict[str, object] = {
        "task": "digits",
        "task_options": dict(TINY),
        "trials": 8,
        "storage": f"sqlite:///{tmp_path}/s.db",
        "study": "t",
        "latency_budget_s": 0.05,
        "reference_amounts": [0.5],
        "sensitivity_targets": [0.4, 0.8],
        "global_reference_amounts": [],
        "report": False,
        "space": {"fine_tune_steps": [10], "steps": [1, 2]},
    }
    data.update(kw)
    return SearchConfig.from_dict(data)


# ---------------------------------------------------------------------------- the promotion rule
def _rule(pairs: list[tuple[float, float]], front: list[tuple[int, float, float]] | None = None) -> Screening:
    return Screening(pairs=pairs, front=front or [], unpruned_accuracy=99.0, max_drop=1.0, margin=0.5)


def test_without_calibration_pairs_everything_is_promoted() -> None:
    decision = _rule([(90.0, 98.0)]).decide(10.0, 5.0)
    assert decision.promote and "fewer than 2" in decision.reason


def test_the_credit_is_bounded_by_the_pairs_at_or_above() -> None:
    # (cheap, full): a 97 became 98.2, a 91 became 95, a 60 became 80
    rule = _rule([(97.0, 98.2), (91.0, 95.0), (60.0, 80.0)])
    # 85: the nearest pair at or above 85.5 is the 91 one; pairs up to 91 reached at most 95
    reachable, why = rule.reachable(85.0)
    assert reachable == pytest.approx(95.5) and "pairs up to 91.00 reached at most 95.00" in why
    decision = rule.decide(85.0, 2.0)
    assert not decision.promote and "constraint needs 98.00" in decision.reason and "95.50" in decision.reason
    # 93 sits in the gap below the 97 pair: credited what it reached, 98.2 + 0.5 -> promoted
    assert rule.reachable(93.0)[0] == pytest.approx(98.7) and rule.decide(93.0, 2.0).promote
    # within the margin of the best pair or above it: unknown territory, the unpruned 99 + 0.5
    assert rule.reachable(96.6)[0] == pytest.approx(99.5) and rule.decide(96.6, 2.0).promote
    # worse than every pair: bounded by the worst pair
    reachable, why = rule.reachable(30.0)
    assert reachable == pytest.approx(80.5) and "pairs up to 60.00" in why
    # monotone: a better cheap score is never credited less
    credits = [rule.reachable(c)[0] for c in range(20, 100)]
    assert credits == sorted(credits)
    # a pair that did better from a worse cheap score raises the bound above it too
    assert _rule([(97.0, 98.2), (91.0, 98.9)]).reachable(93.0)[0] == pytest.approx(99.4)


def test_without_a_constraint_only_the_front_screens() -> None:
    rule = dataclasses.replace(_rule([(95.0, 98.2), (91.0, 95.0)], front=[(3, 97.0, 3.0)]), max_drop=None)
    assert rule.decide(85.0, 2.0).promote is False  # 95.5 reachable, trial 3 is better and faster
    assert rule.decide(85.0, 3.5).promote  # faster than the front: not dominated


def test_a_trial_dominated_by_the_front_is_screened_out() -> None:
    rule = _rule([(95.0, 98.0), (91.0, 95.0)], front=[(3, 99.4, 2.5)])
    decision = rule.decide(90.0, 2.0)  # at most 95.5 < 99.4, and slower
    assert not decision.promote
    decision = dataclasses.replace(rule, max_drop=None).decide(90.0, 2.0)
    assert not decision.promote and "trial 3" in decision.reason
    assert dataclasses.replace(rule, max_drop=None).decide(90.0, 2.5).promote  # as fast: not dominated
    assert rule.decide(95.0, 2.0).promote  # as good as every pair: 99.5 reachable, could beat the front


def test_the_front_dominates_with_the_slow_end_of_its_speedup_interval() -> None:
    _sure_speedup = sure_speedup

    assert _sure_speedup({"speedup": 1.6, "speedup_low": 0.2}) == 0.2  # a loaded machine's scatter
    assert _sure_speedup({"speedup": 1.3}) == 1.3  # no interval stored: the speedup
    assert _sure_speedup({"speedup": 1.3, "speedup_low": 1.4}) == 1.3
    # a front trial at 1.6x that is only sure of 0.2x screens nothing out that runs at 1.2x
    rule = _rule([(95.0, 98.0), (91.0, 95.0)], front=[(3, 99.4, _sure_speedup({"speedup": 1.6, "speedup_low": 0.2}))])
    assert dataclasses.replace(rule, max_drop=None).decide(90.0, 1.2).promote


def test_the_constraint_check_allows_the_splits_noise() -> None:
    rule = _rule([(97.0, 98.2), (91.0, 95.0), (60.0, 80.0)])
    assert not rule.decide(85.0, 2.0).promote  # 95.5 reachable, the constraint needs 98
    decision = dataclasses.replace(rule, drop_allowance=2.0).decide(85.0, 2.0)
    assert not decision.promote and "needs 96.00 (with 2.00 points of validation noise)" in decision.reason
    assert dataclasses.replace(rule, drop_allowance=2.6).decide(85.0, 2.0).promote  # needs 95.4


# ---------------------------------------------------------------------------- in a search
@pytest.mark.slow
def test_scan_warm_starts_and_screening_in_a_search(tmp_path: Path, tiny_task: ap.Task) -> None:
    study = run_search(_cfg(tmp_path, trials=10, sensitivity_resource="latency"), tiny_task)
    assert len(counted_trials(study)) == 10
    sens = study.user_attrs["sensitivity"]
    assert sens["calibrated"] is True and sens["curves"]
    # latency is an objective: every structured point was timed, and the warm starts follow
    # the latency path, each the first allocation on it that removes its share of the MACs
    structured = [c for c in sens["curves"] if c["method"] == "structured"]
    assert structured and all(len(c["speedups"]) == len(c["amounts"]) and min(c["speedups"]) > 0 for c in structured)
    scan = Sensitivity.from_dict(sens)
    assert scan.path_resource == "latency"
    warm = [t for t in sorted(study.trials, key=lambda t: t.number) if t.user_attrs.get("role") == ROLE_SENSITIVITY]
    cfg = _cfg(tmp_path, trials=10, sensitivity_resource="latency")
    searched = SearchSetup.build(tiny_task, cfg, machine_lock()).search_space(study)
    meter = macs_meter(tiny_task.model, tiny_task.example_inputs, searched)
    first = [t for t in warm if not t.user_attrs.get("refined")]
    assert first
    for t in first:
        expected = sensitivity_allocations(searched, scan, [t.user_attrs["sensitivity_target"]], resource="latency", measure=meter)
        assert t.params == expected[0]
    roles = [t.user_attrs.get("role") for t in sorted(study.trials, key=lambda t: t.number)]
    assert roles[0] == ROLE_UNPRUNED and roles[1] == ROLE_UNIFORM
    assert ROLE_SENSITIVITY in roles[2:4]
    S = optuna.trial.TrialState
    # digits has a test split: each full trial's model scored on it, the unpruned one as is
    unpruned = study.user_attrs["unpruned"]
    assert unpruned["test_accuracy"] == tiny_task.test(tiny_task.model) != unpruned["accuracy"]  # type: ignore[misc]
    tests = [t.user_attrs["test_accuracy"] for t in study.trials if t.state == S.COMPLETE]
    assert len(set(tests)) >= 2, tests  # it follows the model
    for t in study.trials:
        if t.state == S.COMPLETE:
            assert t.user_attrs["fidelity"] == FIDELITY_FULL
            drop = unpruned["test_accuracy"] - t.user_attrs["test_accuracy"]
            assert t.user_attrs["test_accuracy_drop"] == pytest.approx(drop)
            assert t.user_attrs["speedup"] > 0 and "speedup_low" in t.user_attrs
            if t.user_attrs["role"] != ROLE_UNPRUNED:
                assert "screen_accuracy" in t.user_attrs  # every reference is screened too
                # one measurement per trial: the screen timed the same architecture, and its
                # timing stands when its interval is within latency_rel_tol (timed again if not)
                ratio, low, high = (t.user_attrs[f"screen_speedup{e}"] for e in ("", "_low", "_high"))
                within = max(high / ratio - 1.0, 1.0 - low / ratio) <= cfg.latency_rel_tol
                assert t.user_attrs.get("latency_from_screen", False) is within
                assert (t.user_attrs["speedup"] == ratio) or not within
                schedule = ap.Schedule.from_json(t.user_attrs["schedule"])
                assert schedule.fine_tune_steps == 10 // schedule.steps  # one budget per trial
                assert t.user_attrs["fine_tune_steps_spent"] == (
                    t.user_attrs["screen_fine_tune_steps"] + schedule.fine_tune_steps * schedule.steps
                )
        elif t.state == S.PRUNED and "duplicate_of" not in t.user_attrs:
            assert t.user_attrs["fidelity"] == FIDELITY_SCREEN and t.user_attrs["screen_reason"].startswith("screened")
    front = ap.load_study("t", f"sqlite:///{tmp_path}/s.db").pareto_trials()
    assert front and all(t.user_attrs["fidelity"] == FIDELITY_FULL for t in front)
    # the screening's constraint check allows the split's noise: the median error of full trials
    errors = sorted(t.user_attrs["accuracy_drop_se"] for t in study.trials
                    if t.state == S.COMPLETE and t.user_attrs["accuracy_drop_se"] > 0)  # fmt: skip
    rule = Screening.from_study(study, _cfg(tmp_path), study.user_attrs["unpruned"])
    assert rule.drop_allowance == (pytest.approx(statistics.median(errors)) if errors else 0.0)


@pytest.mark.slow
def test_the_test_split_never_reaches_the_sampler(tmp_path: Path, tiny_task: ap.Task) -> None:
    """Same seed with and without a test split: the same parameters and values, trial by
    trial, so nothing the sampler saw depended on the test score."""
    cfg = _cfg(tmp_path, objectives=["accuracy", "macs"], trials=6)
    calls: list[float] = []
    assert tiny_task.test is not None
    test = tiny_task.test

    def spy(model: object) -> float:
        calls.append(1.0)
        return test(model)  # type: ignore[arg-type]

    with_test = run_search(cfg, dataclasses.replace(tiny_task, test=spy))
    without = run_search(cfg.merged(study="u"), dataclasses.replace(tiny_task, test=None))
    assert [(t.params, t.values) for t in with_test.trials] == [(t.params, t.values) for t in without.trials]
    complete = [t for t in with_test.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(calls) == len(complete)  # once per full-fidelity trial, after its validation
    assert all("test_accuracy" not in t.user_attrs for t in without.trials)


def _loader_task(distill: tuple[float, float] | None) -> ap.Task:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    return ap.Task.from_loaders(model.eval(), train=loader, val=loader, distill=distill, name="toy")


@pytest.mark.slow
def test_distillation_is_searched_where_the_task_can_distill(tmp_path: Path) -> None:
    space = {"fine_tune_steps": [2], "steps": [1, 1], "distill": [False, True], "round_to": None}
    cfg = SearchConfig.from_dict(
        {"task": "toy", "trials": 6, "storage": f"sqlite:///{tmp_path}/d.db", "study": "d", "report": False,
         "latency_budget_s": 0.05, "reference_amounts": [], "sensitivity": False, "screening": False,
         "space": space, "sampler": "random"}
    )
    study = run_search(cfg, _loader_task((1.0, 2.0)))
    searched = [t for t in study.trials if t.user_attrs.get("role") == "search"]
    assert {t.params["distill"] for t in searched} == {False, True}
    assert all(ap.Schedule.from_json(t.user_attrs["schedule"]).distill is t.params["distill"] for t in searched)
    with pytest.raises(ap.ConfigError, match=r"space.distill = \[False, True\]; allowed for task 'toy': \[false\]"):
        run_search(cfg.merged(study="e"), _loader_task(None))


# ---------------------------------------------------------------------------- repeats and paying methods
def test_unstructured_is_searched_only_where_it_can_pay() -> None:
    from autoprune.study import paying_space

    cfg = ap.SearchConfig(objectives=["accuracy", "latency"])
    space, notice = paying_space(cfg)
    assert space.methods == ["structured", "none"]
    assert notice is not None and "unstructured pruning is left out" in notice and "'dense'" in notice
    for kept in (ap.SearchConfig(objectives=["accuracy", "size"]), ap.SearchConfig(objectives=["accuracy", "params"]),
                 ap.SearchConfig(objectives=["accuracy", "latency"], constraints={"max_size_bytes": 1000.0}),
                 ap.SearchConfig(space=ap.SpaceConfig(methods=["unstructured", "none"]))):  # fmt: skip
        assert paying_space(kept) == (kept.space, None)

    @ap.evaluation.register_backend("test-sparse-kernels")
    class _Sparse(ap.evaluation.DenseBackend):
        sparse_kernels = True

    sparse = ap.SearchConfig(target="cpu:backend=test-sparse-kernels")
    assert paying_space(sparse) == (sparse.space, None)


@pytest.mark.slow
def test_repeated_schedules_are_not_run(tmp_path: Path, tiny_task: ap.Task) -> None:
    # one unit, amount 0 or 50%: every search trial repeats the unpruned or the uniform reference
    cfg = _cfg(tmp_path, trials=9).merged(
        space={"granularity": "global", "methods": ["structured"], "max_amount": 0.5, "amount_step": 0.5,
               "steps": [1, 1], "importance": ["magnitude"], "norms": [1], "round_to": 1, "fine_tune_steps": [10]},
        reference_amounts=[0.5], sensitivity=False,
    )  # fmt: skip
    study = run_search(cfg, tiny_task)
    S = optuna.trial.TrialState
    done = [t for t in study.trials if t.state == S.COMPLETE]
    assert [t.user_attrs["role"] for t in done] == [ROLE_UNPRUNED, ROLE_UNIFORM]  # only these two ran
    repeats = [t for t in study.trials if "duplicate_of" in t.user_attrs]
    assert len(repeats) == len(study.trials) - 2
    # Repeats do not use up the budget, up to max(9 asked, 20) replaced: the 9 asked (8 repeats
    # and the reference), then rounds of 8, 8 and 4 more (the last round's 8 replace only 4).
    assert len(repeats) == 8 + 8 + 8 + 4 and counted_trials(study) == [done[1]]
    for t in repeats:
        first = study.trials[t.user_attrs["duplicate_of"]]
        assert t.state == S.PRUNED and t.user_attrs["fidelity"] == FIDELITY_REPEAT
        assert t.user_attrs["fine_tune_steps_spent"] == 0 and "accuracy" not in t.user_attrs
        if ap.Schedule.from_json(t.user_attrs["schedule"]).active_layers():
            assert first.user_attrs["role"] == ROLE_UNIFORM and "schedule is the one of" in t.user_attrs["repeat_reason"]
        else:
            assert first.user_attrs["role"] == ROLE_UNPRUNED and "prunes nothing" in t.user_attrs["repeat_reason"]


@pytest.mark.slow
def test_a_search_in_the_sensitivity_parametrization(tmp_path: Path, tiny_task: ap.Task) -> None:
    # MACs-ranked sensitivity: the references' allocations do not hang on timings of a loaded machine
    cfg = _cfg(tmp_path, trials=8, sensitivity_resource="macs").merged(
        space={"parametrization": "sensitivity", "fine_tune_steps": [10]}
    )
    study = run_search(cfg, tiny_task)
    assert len(counted_trials(study)) == 8
    by_role: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in study.trials:
        by_role.setdefault(t.user_attrs.get("role", ""), []).append(t)
    assert by_role[ROLE_UNPRUNED][0].params == {}  # run before the scan: no parameters
    (uniform,) = [t for t in by_role[ROLE_UNIFORM] if not t.user_attrs.get("refined")]
    assert uniform.params["level"] == 0.5 and uniform.params["spread"] == 0.0
    schedule = ap.Schedule.from_json(uniform.user_attrs["schedule"])
    assert {p.amount for p in schedule.layers.values()} == {0.5}  # exactly the uniform schedule
    assert all(t.params["spread"] > 0 for t in by_role[ROLE_SENSITIVITY])
    for t in study.trials:
        if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("role") != ROLE_UNPRUNED:
            assert set(t.params) >= {"level", "spread"}


def test_the_sensitivity_parametrization_needs_the_scan() -> None:
    with pytest.raises(ap.ConfigError, match="invalid sensitivity = False; allowed: true with space.parametrization"):
        SearchConfig.from_dict({"sensitivity": False, "space": {"parametrization": "sensitivity"}})


@pytest.mark.slow  # a sensitivity scan of latency
def test_layers_command_shows_the_space_the_search_samples(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from autoprune.cli import main

    (tmp_path / "s.toml").write_text(
        'task_options = {width = 8, batch_size = 16}\nsensitivity_resource = "latency"\nlatency_budget_s = 0.05\n'
        '[space]\nparametrization = "sensitivity"\n'
    )
    assert main(["layers", str(tmp_path / "s.toml")]) == 0
    out = capsys.readouterr().out
    assert "unstructured pruning is left out of the search" in out
    assert "in the per-unit parametrization" in out and "--sensitivity" in out
    assert main(["layers", str(tmp_path / "s.toml"), "--sensitivity"]) == 0
    out = capsys.readouterr().out
    assert "search space (sensitivity parametrization): at most" in out
    assert "features.0 structured" in out
    header = next(line for line in out.splitlines() if line.lstrip().startswith("unit"))
    assert header.split() == ["unit", "method", "amount", "score", "drop", "macs_fraction", "speedup"]
    row = next(line for line in out.splitlines() if line.lstrip().startswith("features.0 structured"))
    assert float(row.split()[-1]) > 0  # timed on the target (latency is an objective by default)
    (tmp_path / "m.toml").write_text('task_options = {width = 8, batch_size = 16}\nsensitivity_resource = "macs"\n')
    assert main(["layers", str(tmp_path / "m.toml"), "--sensitivity"]) == 0
    header = next(line for line in capsys.readouterr().out.splitlines() if line.lstrip().startswith("unit"))
    assert "speedup" not in header.split()  # ranked by MACs: not timed


# ---------------------------------------------------------------------------- refined references
def test_bracket_lands_between_the_last_feasible_and_the_first_infeasible_value() -> None:
    family = [(0.25, True), (0.5, True), (0.75, True), (0.9, False)]
    assert bracket(family, 2, 0.05) == [0.8, 0.85]
    assert bracket(family, 1, 0.05) == [0.8]  # the midpoint 0.825, on the 0.05 grid
    # nothing feasible: between 0 and the smallest value
    assert bracket([(0.25, False), (0.5, False)], 2, 0.05) == [0.1, 0.15]
    # the largest feasible value counts, even past an infeasible one (noise)
    assert bracket([(0.25, True), (0.5, False), (0.75, True), (0.9, False)], 2, 0.05) == [0.8, 0.85]
    assert bracket([(0.25, True), (0.9, True)], 2, 0.05) == []  # feasible at its largest: nothing to bracket
    assert bracket([(0.5, True), (0.55, False)], 2, 0.05) == []  # no grid value strictly inside
    assert bracket(family, 0, 0.05) == [] and bracket([], 2, 0.05) == []
    assert bracket([(0.5, True), (0.95, False)], 2, 0.01) == [0.65, 0.8]


@pytest.mark.slow
def test_references_are_refined_where_each_family_turns_infeasible(tmp_path: Path, tiny_task: ap.Task) -> None:
    cfg = _cfg(tmp_path, trials=15, reference_amounts=[0.3, 0.9], sensitivity_targets=[0.5, 0.95],
               global_reference_amounts=[0.3, 0.9])  # fmt: skip
    study = run_search(cfg, tiny_task)
    assert len(counted_trials(study)) == 15
    S = optuna.trial.TrialState
    refs = [t for t in study.trials if t.user_attrs.get("role") in REFERENCE_FAMILIES]
    first = [t for t in refs if not t.user_attrs.get("refined")]
    assert {t.user_attrs["role"] for t in first} == {ROLE_UNIFORM, ROLE_SENSITIVITY, ROLE_GLOBAL}
    refined = [t for t in refs if t.user_attrs.get("refined")]
    assert all(t.state == S.COMPLETE for t in first)
    # The refinements come right after the first references, before any searched trial.
    assert min(t.number for t in refined) > max(t.number for t in first)
    searched = [t.number for t in study.trials if t.user_attrs.get("role") == "search"]
    assert not searched or min(searched) > max(t.number for t in refined)
    step = cfg.space.amount_step
    uniform = [(t.user_attrs["uniform_amount"], t.user_attrs["feasible"]) for t in first if t.user_attrs["role"] == ROLE_UNIFORM]
    expected = bracket(uniform, 2, step)
    assert expected  # 90% of a width-8 model after 10 steps is beyond 1 point of drop
    assert sorted(t.user_attrs["uniform_amount"] for t in refined if t.user_attrs["role"] == ROLE_UNIFORM) == expected
    for t in refined:
        if t.user_attrs["role"] == ROLE_UNIFORM and t.state == S.COMPLETE:
            schedule = ap.Schedule.from_json(t.user_attrs["schedule"])
            assert {p.amount for p in schedule.layers.values()} == {t.user_attrs["uniform_amount"]}
    warm = [(t.user_attrs["sensitivity_target"], t.user_attrs["feasible"]) for t in first if t.user_attrs["role"] == ROLE_SENSITIVITY]
    targets = sorted(t.user_attrs["sensitivity_target"] for t in refined if t.user_attrs["role"] == ROLE_SENSITIVITY)
    assert set(targets) <= set(bracket(warm, 2, 0.01))  # an allocation that repeats a reference is left out
    ratios = [(t.user_attrs["global_amount"], t.user_attrs["feasible"]) for t in first if t.user_attrs["role"] == ROLE_GLOBAL]
    refined_ratios = sorted(t.user_attrs["global_amount"] for t in refined if t.user_attrs["role"] == ROLE_GLOBAL)
    assert refined_ratios and set(refined_ratios) <= set(bracket(ratios, 2, step))
    assert study.user_attrs["references_refined"] == [
        {k: t.user_attrs[k] for k in ("role", *REFERENCE_FAMILIES.values()) if k in t.user_attrs}
        for t in sorted(refined, key=lambda t: t.number)
    ]


@pytest.mark.slow
def test_refinements_fit_in_the_trial_budget(tmp_path: Path, tiny_task: ap.Task) -> None:
    # 2 uniform references and 2 warm starts count 4 of the 5 trials: room for one refinement
    cfg = _cfg(tmp_path, trials=5, reference_amounts=[0.3, 0.9], sensitivity_targets=[0.5, 0.95])
    study = run_search(cfg, tiny_task)
    S = optuna.trial.TrialState
    assert not [t for t in study.trials if t.state == S.WAITING]  # nothing enqueued is left unrun
    ran = [t for t in study.trials if t.user_attrs.get("fidelity") != "repeat"]
    assert len(counted_trials(study)) == 5 and len(ran) == 6
    refined = [t for t in study.trials if t.user_attrs.get("refined")]
    assert len(refined) == 1 and refined[0].user_attrs["role"] == ROLE_UNIFORM  # the families in turn: uniform first
    assert len(study.user_attrs["references_refined"]) == 1


@pytest.mark.slow
def test_global_references_run_torch_prunings_global_allocation(tmp_path: Path, tiny_task: ap.Task) -> None:
    from autoprune.executor import global_amounts

    cfg = _cfg(tmp_path, trials=4, reference_amounts=[0.5], sensitivity_targets=[], global_reference_amounts=[0.3, 0.6],
               reference_refinements=0)  # fmt: skip
    study = run_search(cfg, tiny_task)
    S = optuna.trial.TrialState
    glob = sorted((t for t in study.trials if t.user_attrs.get("role") == ROLE_GLOBAL), key=lambda t: t.number)
    assert [t.user_attrs["global_amount"] for t in glob] == [0.3, 0.6]
    assert all(t.state == S.COMPLETE and t.user_attrs["fidelity"] == FIDELITY_FULL for t in glob)
    space = SearchSetup.build(tiny_task, cfg, machine_lock()).space
    units = {u.key: [i.name for i in u.layers] for u in space.units if u.supports("structured")}
    for t in glob:
        amounts = global_amounts(tiny_task.model, tiny_task.example_inputs, t.user_attrs["global_amount"], units)
        assert t.params == space.params_for({u: a for u, a in amounts.items() if a > 0})
        # the schedule run is those amounts on the space's grid, one step, the full fine-tune
        schedule = ap.Schedule.from_json(t.user_attrs["schedule"])
        assert schedule.steps == 1 and schedule.fine_tune_steps == 10
        for key, plan in schedule.layers.items():
            assert plan.method == "structured"
            assert plan.amount == pytest.approx(round(amounts[key] / 0.05) * 0.05)
    planned = [{k: p.amount for k, p in ap.Schedule.from_json(t.user_attrs["schedule"]).layers.items()} for t in glob]
    assert len(set(planned[0].values())) > 1 or len(set(planned[1].values())) > 1  # not one uniform ratio
    assert sum(planned[1].values()) > sum(planned[0].values())


@pytest.mark.slow
def test_references_beyond_the_budget_are_not_enqueued(tmp_path: Path, tiny_task: ap.Task) -> None:
    # 1 uniform, 2 warm starts and 1 global reference for a budget of 3: one of each family
    # in turn, and nothing left waiting for a later search of the study
    study = run_search(_cfg(tmp_path, trials=3, reference_refinements=0, global_reference_amounts=[0.5]), tiny_task)
    S = optuna.trial.TrialState
    assert not [t for t in study.trials if t.state == S.WAITING]
    roles = [t.user_attrs.get("role") for t in sorted(study.trials, key=lambda t: t.number)]
    assert roles == [ROLE_UNPRUNED, ROLE_UNIFORM, ROLE_SENSITIVITY, ROLE_GLOBAL]
    assert len(counted_trials(study)) == 3

@pytest.mark.slow
def test_global_references_can_be_left_out_or_fail_without_stopping_the_search(
    tmp_path: Path, tiny_task: ap.Task, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = _cfg(tmp_path, trials=3, sensitivity_targets=[], reference_refinements=0)  # none by default
    study = run_search(cfg, tiny_task)
    assert not [t for t in study.trials if t.user_attrs.get("role") == ROLE_GLOBAL]

    def broken(*_: object, **__: object) -> dict[str, float]:
        raise RuntimeError("no global ranking for this graph")

    monkeypatch.setattr("autoprune.executor.global_amounts", broken)
    cfg = _cfg(tmp_path, study="v", trials=3, sensitivity_targets=[], global_reference_amounts=[0.5],
               reference_refinements=0)  # fmt: skip
    with caplog.at_level("WARNING"):
        study = run_search(cfg, tiny_task)
    assert "global references left out: Torch-Pruning's global pruning failed (no global ranking" in caplog.text
    assert not [t for t in study.trials if t.user_attrs.get("role") == ROLE_GLOBAL]
    assert len(counted_trials(study)) == 3  # the search went on with its other trials
    with pytest.raises(ap.ConfigError, match=r"global_reference_amounts.*\[1.5\].*a list of numbers in \(0, 1\)"):
        SearchConfig.from_dict({"global_reference_amounts": [1.5]})


# ---------------------------------------------------------------------------- screening pays for itself
def _ran(study: optuna.Study, fidelity: str, *, feasible: bool = True, skipped: bool = False,
         within_noise: bool = False, role: str = "search") -> None:  # fmt: skip
    attrs: dict[str, object] = {"role": role, "fidelity": fidelity}
    if fidelity == FIDELITY_FULL:
        attrs.update(feasible=feasible, within_noise=within_noise)
    if skipped:
        attrs["screen_skipped"] = "not screened"
    state = optuna.trial.TrialState.COMPLETE if fidelity == FIDELITY_FULL else optuna.trial.TrialState.PRUNED
    study.add_trial(
        optuna.trial.create_trial(
            state=state, values=[1.0, 1.0] if state == optuna.trial.TrialState.COMPLETE else None, user_attrs=attrs
        )
    )


def _pays_study() -> optuna.Study:
    return optuna.create_study(directions=["maximize", "minimize"])


def test_screening_runs_until_its_window_is_full(tmp_path: Path) -> None:
    cfg, study = _cfg(tmp_path, screen_window=4), _pays_study()
    for _ in range(3):
        _ran(study, FIDELITY_FULL)
    for role in (ROLE_UNIFORM, ROLE_SENSITIVITY):  # references do not count
        _ran(study, FIDELITY_FULL, role=role)
    _ran(study, FIDELITY_REPEAT)  # nor repeats
    decision = screening_pays(study, cfg)
    assert decision.promote and decision.reason == "screened: 3 of the first 4 search trials have run"
    _ran(study, FIDELITY_FULL)
    decision = screening_pays(study, cfg)
    assert not decision.promote
    assert decision.reason.startswith("not screened: 0 of the last 4 search trials were screened out")
    # only earlier trials count
    assert screening_pays(study, cfg, before=study.trials[-1].number).promote


def test_screening_pays_when_more_than_its_fraction_is_screened_out(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, screen_window=10, screen_fraction=0.2)
    study = _pays_study()
    for _ in range(3):
        _ran(study, FIDELITY_SCREEN)
    for _ in range(7):
        _ran(study, FIDELITY_FULL)
    decision = screening_pays(study, cfg)
    assert decision.promote and "3 of the last 10" in decision.reason and "(30%;" in decision.reason
    _ran(study, FIDELITY_FULL)  # the oldest screened-out trial leaves the window: 2 of 10 is break-even
    assert not screening_pays(study, cfg).promote
    assert screening_pays(study, _cfg(tmp_path, screen_window=10, screen_fraction=0.1)).promote
    assert screening_pays(study, _cfg(tmp_path, screen_window=0)).promote  # 0: always


def test_unscreened_trials_over_the_limit_count_as_what_a_screen_would_save(tmp_path: Path) -> None:
    cfg, study = _cfg(tmp_path, screen_window=5), _pays_study()
    _ran(study, FIDELITY_FULL, feasible=False)  # screened, promoted, then infeasible: the screen missed it
    _ran(study, FIDELITY_FULL, feasible=False, skipped=True, within_noise=True)  # on the front: no saving
    _ran(study, FIDELITY_FULL, skipped=True)
    _ran(study, FIDELITY_FULL, feasible=False, skipped=True)  # a screen could have caught it
    _ran(study, FIDELITY_FULL, skipped=True)
    decision = screening_pays(study, cfg)
    assert not decision.promote and "1 of the last 5" in decision.reason
    _ran(study, FIDELITY_FULL, feasible=False, skipped=True)
    decision = screening_pays(study, cfg)
    assert decision.promote and "2 of the last 5" in decision.reason  # 40% > 20%: screening resumes


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", 1001])
def test_screen_window_is_checked(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ap.ConfigError, match=r"screen_window = .*an integer from 0 to 1000"):
        _cfg(tmp_path, screen_window=bad)


@pytest.mark.slow
def test_a_search_stops_screening_where_it_does_not_pay(tmp_path: Path, tiny_task: ap.Task) -> None:
    cfg = _cfg(tmp_path, trials=12, screen_window=2, screen_fraction=0.6, constraints={"max_accuracy_drop": 100.0})
    study = run_search(cfg, tiny_task)
    S = optuna.trial.TrialState
    searched = [t for t in sorted(study.trials, key=lambda t: t.number)
                if t.user_attrs.get("role") == "search" and t.state in (S.COMPLETE, S.PRUNED)
                and t.user_attrs.get("fidelity") != FIDELITY_REPEAT]  # fmt: skip
    assert len(searched) >= 4
    skipped = [t for t in searched if "screen_skipped" in t.user_attrs]
    assert skipped, "nothing is screened out under a 100-point limit, so screening stops after 2 trials"
    for t in searched:
        expected = screening_pays(study, cfg, before=t.number)  # one worker: the same trials it saw
        assert ("screen_skipped" not in t.user_attrs) == expected.promote
        if not expected.promote:
            assert t.user_attrs["screen_skipped"] == expected.reason
            assert "screen_accuracy" not in t.user_attrs and t.user_attrs["fidelity"] == FIDELITY_FULL
            schedule = ap.Schedule.from_json(t.user_attrs["schedule"])
            assert t.user_attrs["fine_tune_steps_spent"] == schedule.fine_tune_steps * schedule.steps
            assert t.user_attrs["speedup"] > 0 and "latency_from_screen" not in t.user_attrs


@pytest.mark.parametrize("bad", ["flops", 1, None])
def test_sensitivity_resource_is_checked(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ap.ConfigError, match=r"sensitivity_resource = .*one of \['latency', 'macs'\]"):
        _cfg(tmp_path, sensitivity_resource=bad)


@pytest.mark.slow
def test_a_macs_ranked_scan_is_not_timed(tmp_path: Path, tiny_task: ap.Task) -> None:
    assert _cfg(tmp_path).sensitivity_resource == "latency"  # the default
    cfg = _cfg(tmp_path, trials=4, sensitivity_resource="macs")
    study = run_search(cfg, tiny_task)
    scan = Sensitivity.from_dict(study.user_attrs["sensitivity"])
    assert all(c.speedups is None for c in scan.curves) and scan.path_resource == "macs"
    searched = SearchSetup.build(tiny_task, cfg, machine_lock()).search_space(study)
    meter = macs_meter(tiny_task.model, tiny_task.example_inputs, searched)
    warm = [t for t in study.trials if t.user_attrs.get("role") == ROLE_SENSITIVITY and not t.user_attrs.get("refined")]
    assert warm
    for t in warm:
        assert t.params == sensitivity_allocations(searched, scan, [t.user_attrs["sensitivity_target"]], measure=meter)[0]


def test_a_global_ratio_that_prunes_nothing_is_not_a_reference(
    tmp_path: Path, tiny_task: ap.Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoprune import executor
    from autoprune.study._references import _global_references

    real = executor.global_amounts

    def tiny_first(model: object, x: object, ratio: float, units: dict[str, list[str]], **kw: object) -> dict[str, float]:
        if ratio < 0.1:  # below every unit's first step on the 5% grid: nothing to prune
            return dict.fromkeys(units, 0.02)
        return real(model, x, ratio, units, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(executor, "global_amounts", tiny_first)
    cfg = _cfg(tmp_path, sensitivity=False)
    setup = SearchSetup.build(tiny_task, cfg, machine_lock())
    study = optuna.create_study(storage=cfg.storage, study_name="g", directions=["maximize", "minimize"])
    refs = _global_references(setup, study, [0.05, 0.5], [])
    assert [ratio for ratio, _ in refs] == [0.5]
    assert setup.space.schedule_from_params(refs[0][1]).active_layers()


# ---------------------------------------------------------------------------- the local search (neighbours)
def _neighbour_cfg(tmp_path: Path, **kw: object) -> SearchConfig:
    # a 10-step fine-tune of a width-8 model: a 5-point limit leaves room for feasible trials
    options: dict[str, object] = {"trials": 12, "reference_amounts": [0.3, 0.6], "sensitivity_targets": [0.5],
                                  "reference_refinements": 0, "constraints": {"max_accuracy_drop": 5.0}}  # fmt: skip
    return _cfg(tmp_path, **{**options, **kw})


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


@pytest.mark.slow
def test_a_share_of_the_search_trials_are_neighbours_of_the_fastest_feasible_one(
    tmp_path: Path, tiny_task: ap.Task
) -> None:
    cfg = _neighbour_cfg(tmp_path)
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
        ups = {u: k for u, k in moved.items() if k > 0}
        downs = {u: k for u, k in moved.items() if k < 0}
        assert len(ups) == 1 and len(downs) <= 1
        (k,) = ups.values()
        assert k in (1, 2)
        for u, d in downs.items():  # as many steps less, or down to not pruned
            assert d == -k or (d > -k and u not in a)
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
    study = run_search(_neighbour_cfg(tmp_path, trials=8, neighbour_share=0), tiny_task)
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
