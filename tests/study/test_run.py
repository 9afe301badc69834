"""Search: trial counts, objectives, constraints, resume, workers, failures, seeds (the CLI:
tests/cli/test_search.py). Whole searches are marked slow."""

from __future__ import annotations

import socket
from pathlib import Path

import optuna
import pytest

import autoprune as ap
from autoprune.config import SearchConfig
from autoprune.space import SearchSpace
from autoprune.study import check_joinable, counted_trials, run_search
from autoprune.study.keys import ROLE_SEARCH, ROLE_UNIFORM, ROLE_UNPRUNED, is_feasible

TINY = {"width": 8, "batch_size": 16}
FAST_SPACE = {"fine_tune_steps": [0, 10], "steps": [1, 2], "round_to": None}


def _cfg(tmp_path: Path, **kw: object) -> SearchConfig:
    data: dict[str, object] = {
        "task": "digits",
        "task_options": dict(TINY),
        "trials": 6,
        "storage": f"sqlite:///{tmp_path}/s.db",
        "study": "t",
        "latency_budget_s": 0.05,
        "reference_amounts": [0.5],
        "report": False,
        # the loop itself; the sensitivity scan, warm starts, global references, refinements,
        # neighbours and screening have tests of their own
        "sensitivity": False,
        "screening": False,
        "global_reference_amounts": [],
        "reference_refinements": 0,
        "neighbour_share": 0,
        "space": dict(FAST_SPACE),
    }
    data.update(kw)
    return SearchConfig.from_dict(data)


def _run(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that ran (repeats end at once, without running, and do not count)."""
    return [t for t in study.trials if t.user_attrs.get("fidelity") != "repeat"]


def _schedules(study: optuna.Study) -> list[str]:
    return [t.user_attrs["schedule"] for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.mark.slow
def test_trial_count_objectives_and_records(tmp_path: Path, tiny_task: ap.Task) -> None:
    cfg = _cfg(tmp_path, objectives=["accuracy", "latency", "size"])
    study = run_search(cfg, tiny_task)
    # the unpruned reference does not count toward the budget
    assert len(counted_trials(study)) == 6
    assert len(_run(study)) == 7
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    assert study.metric_names == ["accuracy", "latency", "size"]
    first = study.trials[0]
    assert first.user_attrs["role"] == ROLE_UNPRUNED
    assert first.user_attrs["accuracy_drop"] == 0.0
    assert ap.Schedule.from_json(first.user_attrs["schedule"]).active_layers() == {}
    assert study.trials[1].user_attrs["role"] == ROLE_UNIFORM
    assert {t.user_attrs["role"] for t in study.trials[2:]} == {ROLE_SEARCH}
    base = study.user_attrs["unpruned"]
    assert base["params"] == sum(p.numel() for p in tiny_task.model.parameters())
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        a = t.user_attrs
        for key in (
            "accuracy",
            "params",
            "nonzero_params",
            "dense_bytes",
            "sparse_bytes",
            "macs",
            "latency_ms",
            "latency_spread",
            "accuracy_drop",
            "speedup",
            "compression",
            "time_prune_s",
            "time_finetune_s",
            "time_eval_s",
            "time_latency_s",
        ):
            assert key in a, key
        assert t.values == [a["accuracy"], a["latency_ms"], a["sparse_bytes"]]
        sched = ap.Schedule.from_json(a["schedule"])
        assert a["schedule_summary"] == sched.summary()
        assert a["accuracy_drop"] == pytest.approx(base["accuracy"] - a["accuracy"])
    uniform = study.trials[1]
    sched = ap.Schedule.from_json(uniform.user_attrs["schedule"])
    assert {p.amount for p in sched.layers.values()} == {0.5}
    assert uniform.user_attrs["params"] < base["params"] / 2.5
    assert study.user_attrs["task"]["name"] == "digits"
    assert study.user_attrs["config"]["trials"] == 6


@pytest.mark.slow
def test_constraints_keep_infeasible_trials_off_the_front(tmp_path: Path, tiny_task: ap.Task) -> None:
    cfg = _cfg(
        tmp_path,
        trials=8,
        constraints={"max_accuracy_drop": 0.5, "max_latency_ms": 1e9},
        space={**FAST_SPACE, "methods": ["structured"], "max_amount": 0.9},
    )
    study = run_search(cfg, tiny_task)
    front = study.best_trials
    assert front, "the unpruned model is always feasible"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    for t in done:
        a = t.user_attrs
        # per-example scores on digits' 270 validation images: the drop's standard error
        assert a["accuracy_drop_se"] >= 0
        if a["accuracy_drop"] != 0:  # examples on which the two models disagree: an error above 0
            assert a["accuracy_drop_se"] > 0
        # the sampler sees the drop as measured; within_noise: over the limit by at most one
        # standard error (drop_noise_se = 1 by default)
        assert t.constraints["accuracy_drop"] == pytest.approx(a["accuracy_drop"] - 0.5)
        assert a["feasible"] == (t.constraints["accuracy_drop"] <= 0 and t.constraints["latency_ms"] <= 0)
        assert a["within_noise"] == (not a["feasible"] and a["accuracy_drop"] <= 0.5 + a["accuracy_drop_se"])
    for t in front:
        assert t.user_attrs["accuracy_drop"] <= 0.5
        assert t.constraints["accuracy_drop"] <= 0
        assert is_feasible(t)
    infeasible = [t for t in study.trials if t.user_attrs.get("feasible") is False]
    assert infeasible, "digits pruned up to 90% loses more than 0.5 points somewhere"
    for t in infeasible:
        assert t.user_attrs["accuracy_drop"] > 0.5
        assert t not in front
    # the front shown (with the tolerance) adds the trials within noise of the limit
    shown = ap.load_study("t", cfg.storage).pareto_trials()
    assert {t.number for t in shown} >= {t.number for t in front}
    assert all(t.user_attrs["feasible"] or t.user_attrs["within_noise"] for t in shown)


@pytest.mark.slow
def test_resume_runs_only_missing_trials(tmp_path: Path, tiny_task: ap.Task) -> None:
    study = run_search(_cfg(tmp_path, trials=3), tiny_task)
    assert len(counted_trials(study)) == 3
    numbers = [t.number for t in study.trials]
    study = run_search(_cfg(tmp_path, trials=5), tiny_task)
    assert len(counted_trials(study)) == 5
    assert [t.number for t in study.trials][: len(numbers)] == numbers
    assert len(_run(study)) == 6  # 5 + the unpruned reference, evaluated once
    study = run_search(_cfg(tmp_path, trials=5), tiny_task)
    assert len(_run(study)) == 6  # nothing missing: nothing runs


@pytest.mark.slow
def test_interrupted_trials_do_not_count(tmp_path: Path, tiny_task: ap.Task) -> None:
    study = run_search(_cfg(tmp_path, trials=2), tiny_task)
    # a run killed mid-trial leaves a RUNNING trial behind
    stale = study.ask()
    assert stale.number == 3
    study = run_search(_cfg(tmp_path, trials=3), tiny_task)
    t = study.trials[3]
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["interrupted"] is True
    assert len(counted_trials(study)) == 3


@pytest.mark.slow
def test_two_workers_give_exactly_n_unique_trials(tmp_path: Path) -> None:
    study = ap.search(
        "digits",
        n_trials=6,
        storage=f"sqlite:///{tmp_path}/w.db",
        study_name="w",
        task_options=dict(TINY),
        workers=2,
        latency_budget_s=0.05,
        reference_amounts=[0.5],
        report=False,
        space=dict(FAST_SPACE),
    )
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers)) == 7 + len(study.trials) - len(_run(study))  # nothing left waiting
    assert len(counted_trials(study)) == 6
    refined = [t for t in study.trials if t.user_attrs.get("refined")]
    assert len(refined) == len(study.user_attrs.get("references_refined", []))  # refined once, by one worker
    # each trial finished: run in full, or ended PRUNED as a repeat of an earlier one
    S = optuna.trial.TrialState
    assert all(t.state == S.COMPLETE or t.user_attrs.get("fidelity") in ("repeat", "screen") for t in study.trials)


@pytest.mark.slow
def test_same_seed_same_schedules(tmp_path: Path, tiny_task: ap.Task) -> None:
    a = run_search(_cfg(tmp_path, study="a", seed=3, sampler="random"), tiny_task)
    b = run_search(_cfg(tmp_path, study="b", seed=3, sampler="random"), tiny_task)
    c = run_search(_cfg(tmp_path, study="c", seed=4, sampler="random"), tiny_task)
    assert _schedules(a) == _schedules(b)
    assert _schedules(a) != _schedules(c)
    # re-applying a trial's schedule reproduces its architecture
    t = a.trials[-1]
    pruned = ap.apply_schedule(
        tiny_task.model,
        ap.Schedule.from_json(t.user_attrs["schedule"]),
        example_inputs=tiny_task.example_inputs,
        fine_tune=tiny_task.fine_tune,
    )
    assert sum(p.numel() for p in pruned.parameters()) == t.user_attrs["params"]
    assert sum(int((p != 0).sum()) for p in pruned.parameters()) == t.user_attrs["nonzero_params"]


# A cached speedup is reused only when its interval met latency_rel_tol: on one thread (the
# thread clock) with half a second, a loose tolerance is always met, so reruns get the same values
REUSABLE: dict[str, object] = {"latency_budget_s": 0.5, "latency_rel_tol": 0.99, "target": "cpu:threads=1"}


@pytest.mark.slow
def test_same_seed_same_schedules_with_the_default_sampler(tmp_path: Path, tiny_task: ap.Task) -> None:
    # TPE learns from measured latencies, which are noisy; the latency cache shared by the
    # studies of a folder hands the rerun the same latencies, so it suggests the same schedules
    # also after TPE's start-up trials (10 trials: 5 start-up, the rest from the model)
    a = run_search(_cfg(tmp_path, study="a", seed=5, trials=10, sampler="tpe", **REUSABLE), tiny_task)
    b = run_search(_cfg(tmp_path, study="b", seed=5, trials=10, sampler="tpe", **REUSABLE), tiny_task)
    assert len(_run(a)) == len(_run(b)) == 11 and len(a.trials) == len(b.trials)
    assert _schedules(a) == _schedules(b)
    # the same accuracies and speedups; each run's latencies are its own sitting's reference
    # time over them (so they differ by one factor, which changes no Pareto rank TPE sees)
    for ta, tb in zip(a.trials, b.trials, strict=True):
        assert (ta.values is None) == (tb.values is None)
        if ta.values is not None:
            assert ta.values[0] == tb.values[0] and ta.user_attrs["speedup"] == tb.user_attrs["speedup"]
            for t in (ta, tb):
                assert t.values[1] == t.user_attrs["reference_latency_ms"] / t.user_attrs["speedup"]
    assert (tmp_path / f"latency-{socket.gethostname()}.sqlite").is_file()
    # a per-study cache is a file of its own; "off" writes none
    run_search(_cfg(tmp_path, study="c", trials=1, latency_cache="study"), tiny_task)
    assert (tmp_path / f"c.latency-{socket.gethostname()}.sqlite").is_file()
    run_search(_cfg(tmp_path, study="d", trials=1, latency_cache="off"), tiny_task)
    assert not list(tmp_path.glob("d.latency-*"))
    custom = tmp_path / "lat" / "mine.sqlite"
    run_search(_cfg(tmp_path, study="e", trials=1, latency_cache=str(custom)), tiny_task)
    assert custom.is_file()


@pytest.mark.slow
def test_constant_liar_changes_nothing_for_one_worker(
    tmp_path: Path, tiny_task: ap.Task, monkeypatch: pytest.MonkeyPatch
) -> None:
    # TPE runs with constant_liar (parallel workers spread out); a one-worker run has no
    # other running trial, so it must suggest exactly what TPE without the liar suggests
    from autoprune.study import _storage

    liar = run_search(_cfg(tmp_path, study="liar", seed=2, trials=9, sampler="tpe", **REUSABLE), tiny_task)
    assert _storage._make_sampler(_cfg(tmp_path, sampler="tpe"), 0)._constant_liar  # type: ignore[attr-defined]
    plain = optuna.samplers.TPESampler
    monkeypatch.setattr(
        optuna.samplers, "TPESampler", lambda **kw: plain(**{**kw, "constant_liar": False})
    )
    assert not _storage._make_sampler(_cfg(tmp_path, sampler="tpe"), 0)._constant_liar  # type: ignore[attr-defined]
    honest = run_search(_cfg(tmp_path, study="honest", seed=2, trials=9, sampler="tpe", **REUSABLE), tiny_task)
    assert _schedules(liar) == _schedules(honest)


@pytest.mark.slow
def test_a_second_unpruned_trial_is_not_evaluated(tmp_path: Path, tiny_task: ap.Task) -> None:
    # e.g. a heartbeat retry of the unpruned trial whose worker died after publishing the
    # unpruned: it must not measure again and enqueue the uniform references a second time
    cfg = _cfg(tmp_path, study="dup", trials=1)
    study = run_search(cfg, tiny_task)
    assert study.user_attrs["unpruned_trial"] == 0 and "baseline" not in study.user_attrs  # the older name is not written
    space = SearchSpace(ap.prunable_layers(tiny_task.model, tiny_task.example_inputs), cfg.space)
    study.enqueue_trial(space.uniform_params(0.0), user_attrs={"role": ROLE_UNPRUNED})
    study = run_search(cfg.merged(trials=2), tiny_task)
    dup = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(dup) == 1 and "duplicate unpruned reference" in dup[0].user_attrs["error"]
    assert "in trial 0" in dup[0].user_attrs["error"]
    roles = [t.user_attrs.get("role") for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert roles.count(ROLE_UNPRUNED) == 1 and roles.count(ROLE_UNIFORM) == 1
    assert len(counted_trials(study)) == 2


@pytest.mark.slow
def test_failing_trial_is_recorded_and_search_goes_on(tmp_path: Path, tiny_task: ap.Task) -> None:
    calls = {"n": 0}
    real = tiny_task.fine_tune
    assert real is not None

    def flaky(model, steps):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] % 2 == 0:
            raise FloatingPointError("loss became nan")
        real(model, steps)

    task = ap.Task(
        name="digits",
        model=tiny_task.model,
        example_inputs=tiny_task.example_inputs,
        evaluate=tiny_task.evaluate,
        fine_tune=flaky,
        spec=dict(tiny_task.spec),
    )
    cfg = _cfg(tmp_path, trials=5, space={**FAST_SPACE, "fine_tune_steps": [10], "steps": [1, 1]})
    study = run_search(cfg, task)
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert failed and done
    assert all(t.user_attrs["error"] == "FloatingPointError: loss became nan" for t in failed)
    assert len(counted_trials(study)) == 5  # failed trials are recorded and count


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"space": {"round_to": [0, 8]}}, "space.round_to = [0, 8]"),
        ({"space": {"attention_heads": ["yes"]}}, "space.attention_heads"),
        ({"objectives": ["accuracy"]}, "objectives"),
        ({"objectives": ["accuracy", "speed"]}, "'speed'"),
        ({"trials": 0}, "trials = 0"),
        ({"sampler": "cmaes"}, "sampler = 'cmaes'"),
        ({"space": {"max_amount": 1.5}}, "space.max_amount = 1.5"),
        ({"space": {"methods": ["prune"]}}, "space.methods"),
        ({"constraints": {"max_drop": 1}}, "constraint = 'max_drop'"),
        ({"colour": "red"}, "unknown key(s) ['colour']"),
        ({"target": "tpu"}, "tpu"),
        ({"latency_cache": ""}, "latency_cache = ''"),
        ({"drop_noise_se": -1}, "drop_noise_se = -1"),
        ({"drop_noise_se": "1"}, "drop_noise_se = '1'"),
    ],
)
def test_bad_config_values(data: dict[str, object], fragment: str) -> None:
    with pytest.raises(ap.AutopruneError) as err:
        SearchConfig.from_dict(data)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_check_joinable_never_creates_the_study(tmp_path: Path, tiny_task: ap.Task) -> None:
    # The CLI checks a joining run before it prints anything. That check must not create the
    # study: the creator alone enqueues the unpruned reference with it, so workers that start
    # at once cannot each enqueue one (two unpruned references, two sets of uniform ones).
    url = f"sqlite:///{tmp_path / 'j.db'}"
    cfg = SearchConfig(
        storage=url, study="j", trials=1, reference_amounts=[], latency_budget_s=0.02, report=False, sensitivity=False
    )
    check_joinable(cfg)
    assert optuna.get_all_study_summaries(url, include_best_trial=False) == []
    study = run_search(cfg, tiny_task)
    assert [t.user_attrs.get("role") for t in study.trials].count(ROLE_UNPRUNED) == 1
    with pytest.raises(ap.ConfigError, match="objectives"):
        check_joinable(cfg.merged(objectives=["accuracy", "size"]))
    check_joinable(cfg)  # the same settings join
    # a study written before an option existed lacks it in its stored config: the default
    # stands in, so resuming it is not refused
    older = dict(study.user_attrs["config"])
    older["space"] = {k: v for k, v in older["space"].items() if k != "attention_heads"}
    del older["latency_cache"]
    study.set_user_attr("config", older)
    check_joinable(cfg)
    assert len(_run(run_search(cfg.merged(trials=2), tiny_task))) == 3


@pytest.mark.parametrize(
    "url,installed,expected",
    [
        ("studies/x.db", set(), "sqlite:///studies/x.db"),
        ("sqlite:///a.db", set(), "sqlite:///a.db"),
        ("postgresql://u:pw@h/db", {"psycopg2"}, "postgresql+psycopg2://u:pw@h/db"),
        ("postgresql://u:pw@h/db", {"psycopg", "psycopg2"}, "postgresql://u:pw@h/db"),
        ("postgresql+psycopg2://u:pw@h/db", set(), "postgresql+psycopg2://u:pw@h/db"),
    ],
)
def test_storage_driver_url(monkeypatch: pytest.MonkeyPatch, url: str, installed: set[str], expected: str) -> None:
    import importlib.util

    from autoprune.config import driver_url

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in installed else None)
    assert driver_url(url) == expected


def test_storage_without_postgres_driver_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from autoprune.config import driver_url

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ap.ConfigError) as err:
        driver_url("postgresql://u:secret@h/db")
    assert "pip install psycopg2-binary" in str(err.value) and "secret" not in str(err.value)


def test_resume_fails_trials_left_running_by_a_stopped_run(tmp_path: Path) -> None:
    from autoprune.study._storage import create_or_join_study, fail_interrupted_leftovers

    cfg = _cfg(tmp_path)
    study = create_or_join_study(cfg)
    study.enqueue_trial({}, user_attrs={"role": ROLE_SEARCH})
    left = study.ask()  # RUNNING, as a killed process leaves it
    fail_interrupted_leftovers(study, cfg)
    trial = study.get_trials(deepcopy=False)[left.number]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["interrupted"] is True
    assert "left RUNNING by a stopped run" in trial.user_attrs["error"]
    assert trial not in counted_trials(study)


@pytest.mark.parametrize(
    "noise_se,drop,se,within",
    [
        (1.0, 1.3, 0.4, True),  # 0.3 over the limit, within one standard error
        (1.0, 1.5, 0.4, False),  # 0.5 over it: more than one standard error
        (2.0, 1.5, 0.4, True),
        (0.0, 1.3, 0.4, False),  # 0: none within noise
        (1.0, 1.3, float("nan"), False),  # no per-example scores: no error known
        (1.0, 1.0, 0.0, False),  # feasible: not "within noise"
    ],
)
def test_a_drop_over_the_limit_by_less_than_the_splits_noise_is_within_noise(
    tmp_path: Path, tiny_task: ap.Task, noise_se: float, drop: float, se: float, within: bool
) -> None:
    from autoprune._lock import MachineLock
    from autoprune.study._objective import Objective, SearchSetup

    cfg = _cfg(tmp_path, drop_noise_se=noise_se, constraints={"max_accuracy_drop": 1.0})
    lock = MachineLock(str(tmp_path / "lock"))
    unpruned = {"accuracy": 99.0, "latency_ms": 2.0, "reference_latency_ms": 2.0, "dense_bytes": 1000, "sparse_bytes": 1000}
    objective = Objective(SearchSetup.build(tiny_task, cfg, lock), unpruned, lock)
    trial = optuna.create_study(directions=["maximize", "minimize"]).ask()
    metrics = {"accuracy": 99.0 - drop, "latency_ms": 1.0, "sparse_bytes": 500, "accuracy_drop_se": se}
    assert objective.record(trial, metrics) == (99.0 - drop, 1.0)
    assert trial.user_attrs["feasible"] is (drop <= 1.0)  # the sampler's view: the drop as measured
    assert trial.user_attrs["within_noise"] is within
    assert trial.study.trials[0].constraints["accuracy_drop"] == pytest.approx(drop - 1.0)
