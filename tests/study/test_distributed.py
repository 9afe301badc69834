"""Distributed search against a real PostgreSQL server: several worker processes, one study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from autoprune.study.keys import ROLE_UNPRUNED

# One xdist group (scripts/test.sh: --dist loadgroup): one worker starts the one PostgreSQL server.
pytestmark = [pytest.mark.postgres, pytest.mark.slow, pytest.mark.xdist_group("postgres")]

# The distribution machinery, not the search's cheap stages (tested on their own): no
# sensitivity warm starts, neighbours or screening, so every trial is a plain search trial.
CONFIG = """
task = "digits"
latency_budget_s = 0.05
reference_amounts = []
global_reference_amounts = []
report = false
sensitivity = false
screening = false
reference_refinements = 0
neighbour_share = 0
[task_options]
width = 8
batch_size = 16
[space]
steps = [1, 1]
fine_tune_steps = [{ft}]
"""


def _worker(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "autoprune.cli", "search", "--quiet", *args],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for(predicate, timeout: float = 300) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError("timed out")


def _study(url: str, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=url)
    except KeyError:
        return None


def _has_unpruned(url: str, name: str) -> bool:
    s = _study(url, name)
    return s is not None and "unpruned" in s.user_attrs


def test_three_workers_give_exactly_3m_trials(tmp_path: Path, postgres_url: str) -> None:
    (tmp_path / "d.toml").write_text(CONFIG.format(ft=0).replace("reference_amounts = []", "reference_amounts = [0.5]"))
    m = 3
    import autoprune as ap

    ap.tasks.get("digits", width=8, batch_size=16)  # trained and cached: the workers reach the study together
    # all three start at once: one creates the study and evaluates the unpruned model, the
    # others wait for it; the uniform reference is enqueued once
    workers = [
        _worker(tmp_path, "d.toml", "--study", "three", "--storage", postgres_url, "--worker-trials", str(m))
        for _ in range(3)
    ]
    for p in workers:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert postgres_url.split(":")[2].split("@")[0] not in out + err  # the password never shows
    study = _study(postgres_url, "three")
    assert study is not None
    roles = [t.user_attrs.get("role") for t in study.trials]
    detail = [(t.number, t.state.name, t.user_attrs.get("role"), t.system_attrs, t.user_attrs.get("error")) for t in study.trials]
    assert roles.count(ROLE_UNPRUNED) == 1 and roles.count("reference-uniform") == 1, detail
    searched = [t for t in study.trials if t.user_attrs.get("role") != ROLE_UNPRUNED]
    # repeats (not run) do not use up a worker's trials; PRUNED: screened out
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    ran = [t for t in searched if t.state in finished and t.user_attrs.get("fidelity") != "repeat"]
    assert len(ran) == 3 * m
    numbers = [t.number for t in study.trials]
    repeats = sum(t.user_attrs.get("fidelity") == "repeat" for t in study.trials)
    assert len(numbers) == len(set(numbers)) == 3 * m + 1 + repeats
    assert all(t.user_attrs.get("host") for t in searched)
    # a worker started later joins with just --study and --storage: the config comes from the study
    late = _worker(tmp_path, "--study", "three", "--storage", postgres_url, "--worker-trials", "1")
    out, err = late.communicate(timeout=600)
    assert late.returncode == 0, err
    study = _study(postgres_url, "three")
    assert study is not None
    assert len([t for t in study.trials if t.user_attrs.get("fidelity") != "repeat"]) == 3 * m + 2


def test_joiner_started_first_waits_for_the_study(tmp_path: Path, postgres_url: str) -> None:
    # --join never creates the study: started before the creator, it waits for it and then
    # runs with the creator's config (here a width-8 task that is not the default)
    (tmp_path / "w.toml").write_text(CONFIG.format(ft=0))
    joiner = _worker(tmp_path, "--study", "wait", "--storage", postgres_url, "--worker-trials", "2", "--join", "120")
    time.sleep(3)
    assert joiner.poll() is None and _study(postgres_url, "wait") is None
    creator = _worker(tmp_path, "w.toml", "--study", "wait", "--storage", postgres_url, "--worker-trials", "2")
    for p in (creator, joiner):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    study = _study(postgres_url, "wait")
    assert study is not None
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # PRUNED: screened out
    done = [t for t in study.trials if t.state in finished and t.user_attrs.get("fidelity") != "repeat"]
    assert len(done) == 2 * 2 + 1  # both workers' shares and the unpruned reference (repeats are made up)
    assert study.user_attrs["config"]["task_options"] == {"width": 8, "batch_size": 16}


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_sigkilled_worker_trial_is_retried(tmp_path: Path, postgres_url: str) -> None:
    # 1500 fine-tune steps (5-10 s a trial here): long enough to be killed while it runs
    (tmp_path / "k.toml").write_text(CONFIG.format(ft=1500))
    args = ["k.toml", "--study", "kill", "--storage", postgres_url, "--heartbeat", "1"]
    victim = _worker(tmp_path, *args, "--worker-trials", "5")

    def running_search_trial() -> bool:
        s = _study(postgres_url, "kill")
        return s is not None and any(
            t.state == optuna.trial.TrialState.RUNNING and t.user_attrs.get("role") == "search"
            for t in s.get_trials(deepcopy=False)
        )

    _wait_for(running_search_trial)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    time.sleep(4)  # past the grace period (3 x heartbeat)
    rescuer = _worker(tmp_path, *args, "--worker-trials", "1")
    out, err = rescuer.communicate(timeout=600)
    assert rescuer.returncode == 0, err
    study = _study(postgres_url, "kill")
    assert study is not None
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(failed) == 1
    retried = [
        t for t in study.trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t) == failed[0].number
    ]
    assert len(retried) == 1 and retried[0].state == optuna.trial.TrialState.COMPLETE
    assert retried[0].params == failed[0].params
    # nothing completed was lost (PRUNED: a search trial that would repeat an earlier one, or screened out)
    S = optuna.trial.TrialState
    assert all(t.state in (S.COMPLETE, S.FAIL, S.PRUNED) for t in study.trials)


def test_password_is_masked_and_conflicts_are_refused(tmp_path: Path, postgres_url: str) -> None:
    password = postgres_url.split(":")[2].split("@")[0]
    (tmp_path / "p.toml").write_text(CONFIG.format(ft=0))
    p = _worker(tmp_path, "p.toml", "--study", "mask", "--storage", postgres_url, "--worker-trials", "1")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert password not in out + err and "autoprune:***@" in out
    study = _study(postgres_url, "mask")
    assert study is not None
    stored = json.dumps(study.user_attrs)
    assert password not in stored and "***" in study.user_attrs["config"]["storage"]
    saved = (tmp_path / "studies" / "mask-report" / "config.json").read_text()
    assert password not in saved
    # a worker whose own arguments contradict the stored config is refused
    p = _worker(
        tmp_path, "--study", "mask", "--storage", postgres_url, "--objectives", "accuracy,size", "--worker-trials", "1"
    )
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2
    assert "objectives" in err and len(err.strip().splitlines()) == 1 and password not in err
    # a bad password is a one-line error without the password
    bad = postgres_url.replace(password, "wrong-secret")
    p = _worker(tmp_path, "--study", "mask", "--storage", bad, "--worker-trials", "1")
    out, err = p.communicate(timeout=300)
    assert p.returncode == 2 and "wrong-secret" not in err and len(err.strip().splitlines()) == 1


def test_cli_help_mentions_storage() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "autoprune.cli", "search", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    assert "--storage" in proc.stdout and "--worker-trials" in proc.stdout and "--join" in proc.stdout
