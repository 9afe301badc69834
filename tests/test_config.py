"""Settings that used to be accepted in silence are refused with one line (exit 2 in the
CLI): a resume or join that contradicts the study's identity, and values that could not
mean what they say. Nothing stored is changed by a refusal, and studies stored before a
setting was part of the identity still resume."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState, create_trial

import autoprune as ap
from autoprune.config import IDENTITY_KEYS, SearchConfig, load_toml
from autoprune.study import check_joinable, create_or_join_study, stored_config
from autoprune.study.keys import ROLE_UNPRUNED
from autoprune.testing.cli import CliRun, run_cli

# A task factory the CLI can import from the working folder: a tiny MLP, nothing trained.
TINY_TASK = '''
import torch
from torch import nn

import autoprune as ap


def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    return ap.Task(name="tiny", model=model, example_inputs=torch.randn(2, 8), evaluate=lambda m: 50.0)
'''


def _one_line_exit_2(proc: CliRun) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


# ---------------------------------------------------------------------------- values
BAD_VALUES: list[tuple[str, dict[str, Any], str]] = [
    (
        'latency_cache = "sahred"',
        {"latency_cache": "sahred"},
        "invalid latency_cache = 'sahred'; allowed: 'shared', 'study', 'off' or the path of a SQLite file "
        "(with a '/' or ending in .sqlite or .db) (did you mean 'shared'?)",
    ),
    (
        "population_size = 20",
        {"population_size": 20},
        "invalid population_size = 20; allowed: only with sampler 'nsga2' or 'nsga3' (sampler is 'tpe', "
        "which has no population; leave population_size out)",
    ),
    (
        "[space]\nfine_tune_steps = [true]",
        {"space": {"fine_tune_steps": [True]}},
        "invalid space.fine_tune_steps = [True]; allowed: a non-empty list of integers >= 0 (not true/false)",
    ),
    (
        "[space]\nnorms = [true]",
        {"space": {"norms": [True]}},
        "invalid space.norms = [True]; allowed: a non-empty subset of [1, 2]",
    ),
    ("retries = true", {"retries": True}, "invalid retries = True; allowed: an integer >= 0"),
    ("report = 1", {"report": 1}, "invalid report = 1; allowed: true or false"),
    (
        "[constraints]\nmax_latency_ms = 0",
        {"constraints": {"max_latency_ms": 0}},
        "invalid constraints.max_latency_ms = 0; allowed: a number > 0 (0 makes every trial infeasible)",
    ),
    (
        "[constraints]\nmax_size_bytes = 0",
        {"constraints": {"max_size_bytes": 0}},
        "invalid constraints.max_size_bytes = 0; allowed: a number > 0 (0 makes every trial infeasible)",
    ),
    (
        "sensitivity_amounts = []",
        {"sensitivity_amounts": []},
        "invalid sensitivity_amounts = []; allowed: a non-empty list of numbers in (0, 1) while sensitivity = true",
    ),
]


@pytest.mark.parametrize("toml,data,message", BAD_VALUES, ids=[b[0].split("\n")[-1] for b in BAD_VALUES])
def test_bad_value_is_one_line_in_python_and_exit_2_in_the_cli(
    tmp_path: Path, toml: str, data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ap.ConfigError) as err:
        SearchConfig.from_dict(data)
    assert str(err.value) == message
    (tmp_path / "bad.toml").write_text(toml + "\n")
    line = _one_line_exit_2(run_cli("search", "bad.toml", "--quiet", cwd=tmp_path))
    assert line == f"autoprune search: error: {message}"
    assert sorted(os.listdir(tmp_path)) == ["bad.toml"]  # refused before anything was made (no study, no cache file)


def test_what_those_rules_still_allow() -> None:
    assert SearchConfig.from_dict({"latency_cache": "cache/latency.sqlite"}).latency_cache == "cache/latency.sqlite"
    assert SearchConfig.from_dict({"latency_cache": "lat.db"}).latency_cache == "lat.db"
    assert SearchConfig.from_dict({"sampler": "nsga2", "population_size": 12}).population_size == 12
    assert SearchConfig.from_dict({"sensitivity": False, "sensitivity_amounts": []}).sensitivity_amounts == []
    assert SearchConfig.from_dict({"constraints": {"max_accuracy_drop": 0}}).constraints == {"max_accuracy_drop": 0}
    assert SearchConfig.from_dict({"space": {"fine_tune_steps": [0, 50]}}).space.fine_tune_steps == [0, 50]


def test_empty_sensitivity_amounts_fail_before_anything_runs(tmp_path: Path) -> None:
    import torch
    from torch import nn

    calls: list[str] = []
    task = ap.Task(
        name="spy",
        model=nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval(),  # a hidden layer to scan
        example_inputs=torch.randn(2, 4),
        evaluate=lambda m: calls.append("evaluate") or 50.0,
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(ap.ConfigError, match=r"invalid sensitivity_amounts = \[\]"):
        ap.search(task, n_trials=1, storage=url, study_name="s", sensitivity_amounts=[], report=False)
    assert calls == []  # the unpruned model was never evaluated
    assert not (tmp_path / "s.db").exists()  # and no study was made


# ---------------------------------------------------------------------------- the study's identity
def _base(tmp_path: Path, **changes: Any) -> SearchConfig:
    data: dict[str, Any] = {
        "task": "tinytask:make",
        "study": "s",
        "storage": f"sqlite:///{tmp_path / 's.db'}",
        "trials": 4,
        "target": "cpu:threads=1",
        "sampler": "nsga2",
        "population_size": 10,
        "report": False,
    }
    return SearchConfig.from_dict({**data, **changes})


# (what the joining run changes, the message it gets)
CHANGES: list[tuple[dict[str, Any], str]] = [
    (
        {"target": "cpu:threads=1,batch=8"},
        "study 's' was created with target = 'cpu:threads=1', but this run asks for target = "
        "'cpu:threads=1,batch=8' (batch None -> 8): its trials were timed on another target;",
    ),
    (
        {"target": "cpu:threads=2"},
        "study 's' was created with target = 'cpu:threads=1', but this run asks for target = 'cpu:threads=2' "
        "(threads 1 -> 2): its trials were timed on another target;",
    ),
    (
        {"target": "cpu:threads=1,backend=torchscript"},
        "study 's' was created with target = 'cpu:threads=1', but this run asks for target = "
        "'cpu:threads=1,backend=torchscript' (backend dense -> torchscript): its trials were timed on another target;",
    ),
    ({"latency_budget_s": 0.5}, "study 's' was created with latency_budget_s = 2.0, but this run asks for latency_budget_s = 0.5;"),
    ({"latency_rel_tol": 0.05}, "study 's' was created with latency_rel_tol = 0.02, but this run asks for latency_rel_tol = 0.05;"),
    ({"sampler": "random", "population_size": None}, "study 's' was created with sampler = \"nsga2\", but this run asks for sampler = \"random\";"),
    ({"population_size": 12}, "study 's' was created with population_size = 10, but this run asks for population_size = 12;"),
    ({"seed": 1}, "study 's' was created with seed = 0, but this run asks for seed = 1;"),
    ({"screening": False}, "study 's' was created with screening = true, but this run asks for screening = false;"),
    ({"screen_fraction": 0.3}, "study 's' was created with screen_fraction = 0.2, but this run asks for screen_fraction = 0.3;"),
    ({"screen_margin": 1.0}, "study 's' was created with screen_margin = 0.5, but this run asks for screen_margin = 1.0;"),
    ({"screen_window": 5}, "study 's' was created with screen_window = 10, but this run asks for screen_window = 5;"),
    ({"neighbour_share": 0.0}, "study 's' was created with neighbour_share = 0.5, but this run asks for neighbour_share = 0.0;"),
    (
        {"constraints": {"max_accuracy_drop": 2.0}},
        "study 's' was created with constraints.max_accuracy_drop = 1.0, but this run asks for "
        "constraints.max_accuracy_drop = 2.0;",
    ),
    (
        {"constraints": {"max_accuracy_drop": 1.0, "max_latency_ms": 5.0}},
        "study 's' was created with constraints.max_latency_ms = (not set), but this run asks for "
        "constraints.max_latency_ms = 5.0;",
    ),
    (
        {"space": {"fine_tune_steps": [50]}},
        "study 's' was created with space.fine_tune_steps = [100], but this run asks for space.fine_tune_steps = [50];",
    ),
]
SUFFIX = " use the same settings (or just --study/--storage to join), or a new --study name"


@pytest.mark.parametrize("change,message", CHANGES, ids=[next(iter(c)) + "=" + str(next(iter(c.values()))) for c, _ in CHANGES])
def test_a_run_that_contradicts_the_study_is_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    cfg = _base(tmp_path)
    study = create_or_join_study(cfg)  # made and its config stored; no trial needed to be joined
    stored = json.dumps(study.user_attrs["config"], sort_keys=True)
    with pytest.raises(ap.ConfigError) as err:
        check_joinable(_base(tmp_path, **change))
    assert str(err.value) == message + SUFFIX
    with pytest.raises(ap.ConfigError, match="was created with"):
        create_or_join_study(_base(tmp_path, **change))  # what run_search and every worker call
    check_joinable(cfg)  # the same settings still join
    again = optuna.load_study(study_name="s", storage=cfg.storage)
    assert json.dumps(again.user_attrs["config"], sort_keys=True) == stored  # nothing stored changed


def test_every_identity_setting_is_checked() -> None:
    checked = {next(iter(c)) for c, _ in CHANGES} | {"task", "task_options", "objectives", "space", "reference_amounts"}
    assert checked == set(IDENTITY_KEYS)


def test_same_values_written_differently_still_join(tmp_path: Path) -> None:
    create_or_join_study(_base(tmp_path, latency_budget_s=2.0, target="cpu:threads=1,batch=8"))
    # a TOML integer is the stored float; target options in another order are the same target
    check_joinable(_base(tmp_path, latency_budget_s=2, target="cpu:batch=8,threads=1"))


@pytest.mark.parametrize("cli_args,fragment", [
    (["--seed", "1"], "was created with seed = 0, but this run asks for seed = 1;"),
    (["--sampler", "random"], 'was created with sampler = "tpe", but this run asks for sampler = "random";'),
    (["--target", "cpu:threads=1,batch=4"], "(batch None -> 4): its trials were timed on another target;"),
])  # fmt: skip
def test_cli_resume_that_contradicts_the_study_exits_2(tmp_path: Path, cli_args: list[str], fragment: str) -> None:
    (tmp_path / "tinytask.py").write_text(TINY_TASK)
    cfg = _base(tmp_path, sampler="tpe", population_size=None)
    create_or_join_study(cfg)
    # just --study/--storage takes the stored config; the flag contradicts it
    proc = run_cli("search", "--study", "s", "--storage", cfg.storage, "--quiet", *cli_args, cwd=tmp_path)
    line = _one_line_exit_2(proc)
    assert line.startswith("autoprune search: error: study 's' was created with ")
    assert fragment in line and line.endswith(SUFFIX)
    assert len(optuna.load_study(study_name="s", storage=cfg.storage).trials) == 0  # nothing ran


def test_studies_stored_before_a_setting_was_identity_still_resume(tmp_path: Path) -> None:
    cfg = _base(tmp_path, sampler="tpe", population_size=None, space={"fine_tune_steps": [1]})
    study = create_or_join_study(cfg)
    # as an older autoprune stored it: without the settings added to the identity since,
    # with a population size its sampler ignored, a latency_cache name taken as a file, and
    # true for one fine-tune step
    older = {k: v for k, v in study.user_attrs["config"].items() if k not in ("seed", "screen_window", "target")}
    older.update(population_size=8, latency_cache="mycache")
    older["space"] = {**older["space"], "fine_tune_steps": [True]}
    study.set_user_attr("config", older)
    # a resume with any seed, window or target joins: nothing says what that study used
    check_joinable(cfg.merged(seed=3, screen_window=4, target="cpu:threads=2"))
    # and a worker that joins with just --study/--storage reads what the older version did
    joined = stored_config("s", cfg.storage)
    assert joined is not None
    assert joined.population_size is None and joined.latency_cache == "./mycache"
    assert joined.space.fine_tune_steps == [1]
    check_joinable(joined)
    # what is stored is left as it was
    assert optuna.load_study(study_name="s", storage=cfg.storage).user_attrs["config"] == older
    # the settings it does store are still checked
    with pytest.raises(ap.ConfigError, match="was created with latency_budget_s = 2.0"):
        check_joinable(cfg.merged(latency_budget_s=1.0))
    # a stored value this version refuses (every trial infeasible) is named with its source
    study.set_user_attr("config", {**older, "constraints": {"max_latency_ms": 0}})
    with pytest.raises(ap.ConfigError) as err:
        stored_config("s", cfg.storage)
    assert str(err.value) == (
        "the config stored in study 's' is refused: invalid constraints.max_latency_ms = 0; "
        "allowed: a number > 0 (0 makes every trial infeasible)"
    )


# ---------------------------------------------------------------------------- report --layer
def _unpruned_only_study(url: str) -> None:
    study = optuna.create_study(study_name="r", storage=url, directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["accuracy", "latency"])
    study.set_user_attr("task", {"name": "digits", "width": 8, "batch_size": 16})
    schedule = ap.Schedule()
    attrs = {"role": ROLE_UNPRUNED, "schedule": schedule.to_json(), "schedule_summary": schedule.summary(),
             "accuracy": 90.0, "latency_ms": 1.0, "sparse_bytes": 100, "macs": 10, "feasible": True,
             "fidelity": "full"}  # fmt: skip
    study.add_trial(create_trial(state=TrialState.COMPLETE, values=[90.0, 1.0], user_attrs=attrs))


def test_report_layer_is_refused_when_no_trial_prunes(tmp_path: Path) -> None:
    from autoprune.report import _pattern

    url = f"sqlite:///{tmp_path / 'r.db'}"
    _unpruned_only_study(url)
    study = optuna.load_study(study_name="r", storage=url)
    assert _pattern._get_pattern_info(study).note == "no Pareto trial prunes anything yet"  # not named: a note
    message = (
        "cannot show layer 'conv1': no Pareto trial of study 'r' prunes anything yet; "
        "name a trial with --trial N, or leave out --layer"
    )
    with pytest.raises(ap.ConfigError) as err:
        _pattern._get_pattern_info(study, layer="conv1")
    assert str(err.value) == message
    proc = run_cli("report", "--study", "r", "--storage", url, "--layer", "conv1", "--out", str(tmp_path / "o"),
                   cwd=tmp_path)  # fmt: skip
    assert _one_line_exit_2(proc) == f"autoprune report: error: {message}"
    assert not (tmp_path / "o" / "report.html").exists()


def test_toml_and_cli_messages_agree(tmp_path: Path) -> None:
    # the message in the CLI is the library's, after the command's name
    (tmp_path / "p.toml").write_text(textwrap.dedent('sampler = "random"\npopulation_size = 9\n'))
    line = _one_line_exit_2(run_cli("search", "p.toml", cwd=tmp_path))
    assert line == (
        "autoprune search: error: invalid population_size = 9; allowed: only with sampler 'nsga2' or 'nsga3' "
        "(sampler is 'random', which has no population; leave population_size out)"
    )


@pytest.mark.parametrize("sampler,attr", [("nsga2", "_population_size"), ("tpe", "_n_startup_trials")])
def test_a_resume_with_more_trials_keeps_the_samplers_sizes(tmp_path: Path, sampler: str, attr: str) -> None:
    # sized by the budget the study began with (20 trials: a population of 8, 5 startup
    # trials), not by the resume's 200 (50 and 10): the sampler stays the study's sampler
    first, fresh = {"nsga2": (8, 50), "tpe": (5, 10)}[sampler]
    cfg = _base(tmp_path, sampler=sampler, population_size=None, trials=20)
    assert getattr(create_or_join_study(cfg).sampler, attr) == first
    assert getattr(create_or_join_study(cfg.merged(trials=200)).sampler, attr) == first
    assert getattr(create_or_join_study(cfg.merged(trials=200, study="other")).sampler, attr) == fresh


def test_search_refuses_an_optuna_name_and_its_config_name_together(tmp_path: Path) -> None:
    """``n_trials``/``study_name`` (Optuna's names) and ``trials``/``study`` (the config's) are
    one setting each: both at once is refused before anything is built or stored."""
    storage = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with pytest.raises(ap.ConfigError) as err:
        ap.search("digits", n_trials=3, trials=5, storage=storage)
    assert str(err.value) == "`n_trials=3` and `trials=5` name the same setting; give one of them"
    with pytest.raises(ap.ConfigError) as err:
        ap.search("digits", study_name="a", study="b", storage=storage)
    assert str(err.value) == "`study_name='a'` and `study='b'` name the same setting; give one of them"
    assert not (tmp_path / "db.sqlite").exists()


def test_a_renamed_key_still_reads_under_its_old_name(tmp_path: Path) -> None:
    """``warm_start_targets`` became ``sensitivity_targets``: a TOML file, ``ap.search`` options
    and a study's stored config with the old name read as the new one; both at once is refused."""
    old = tmp_path / "old.toml"
    old.write_text("warm_start_targets = [0.5, 0.8]\n")
    assert load_toml(old).sensitivity_targets == [0.5, 0.8]
    assert SearchConfig().merged(warm_start_targets=[0.6]).sensitivity_targets == [0.6]
    stored = {**SearchConfig().to_dict(), "warm_start_targets": [0.7]}
    del stored["sensitivity_targets"]
    assert SearchConfig.from_stored(stored, storage="sqlite:///x.db").sensitivity_targets == [0.7]
    both = tmp_path / "both.toml"
    both.write_text("warm_start_targets = [0.5]\nsensitivity_targets = [0.6]\n")
    with pytest.raises(ap.ConfigError) as err:
        load_toml(both)
    assert str(err.value) == (
        f"`warm_start_targets` is the older name of `sensitivity_targets`; give `sensitivity_targets` only (in {both})"
    )
