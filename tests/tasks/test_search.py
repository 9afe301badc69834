"""A search optimises the validation score and never shows the test score to the sampler."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.study.keys import ROLE_SEARCH, ROLE_UNPRUNED

MAX_DROP = 1.0


def _kept(m: nn.Module, full: int) -> float:
    """The share of the unpruned model's weights that ``m`` keeps (removed or zeroed go)."""
    return sum(int((p != 0).sum()) for p in m.parameters()) / full


def _spy_task(calls: list[str]) -> ap.Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    full = sum(p.numel() for p in model.parameters())

    def evaluate(m: nn.Module) -> float:
        calls.append("evaluate")
        return 50.0 + 40.0 * _kept(m, full)  # validation: 50 to 90, falls with pruning

    def test(m: nn.Module) -> float:
        calls.append("test")
        return 10.0 + 5.0 * _kept(m, full)  # test: 10 to 15, a range validation never reaches

    return ap.Task(
        name="spy", model=model, example_inputs=torch.randn(4, 8), evaluate=evaluate, test=test, scale="percent"
    )


@pytest.mark.slow  # a whole search
def test_a_search_records_test_accuracy_but_never_optimises_it(tmp_path: Path) -> None:
    calls: list[str] = []
    study = ap.search(
        _spy_task(calls),
        objectives=["accuracy", "latency"],
        n_trials=4,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        study_name="spy",
        report=False,
        constraints={"max_accuracy_drop": MAX_DROP},
        # no references, warm starts or neighbours: every trial after the unpruned one is
        # the sampler's own
        reference_amounts=[],
        global_reference_amounts=[],
        sensitivity=False,
        neighbour_share=0.0,
        latency_budget_s=0.05,
        space={"methods": ["structured", "unstructured"], "max_amount": 0.8},
    )
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    sampled = [t for t in done if t.user_attrs["role"] == ROLE_SEARCH]
    assert [t.user_attrs["role"] for t in done if t not in sampled] == [ROLE_UNPRUNED]
    assert len(sampled) >= 3, [(t.number, t.state.name, t.user_attrs.get("role")) for t in study.trials]
    assert all(t.params for t in sampled)  # parameters the sampler chose
    tests = [t.user_attrs["test_accuracy"] for t in sampled]
    assert len(set(tests)) >= 2, tests  # the test score follows the model (not a constant)
    unpruned = study.user_attrs["unpruned"]
    for trial in done:
        a = trial.user_attrs
        assert 10.0 <= a["test_accuracy"] <= 15.0 and 50.0 <= a["accuracy"] <= 90.0
        # the sampler sees validation only: its objective, its constraint, no intermediate value
        assert trial.values[0] == a["accuracy"]
        assert trial.constraints["accuracy_drop"] == pytest.approx(unpruned["accuracy"] - a["accuracy"] - MAX_DROP)
        assert not trial.intermediate_values
        assert a["test_accuracy_drop"] == pytest.approx(unpruned["test_accuracy"] - a["test_accuracy"])
    assert calls.count("test") == len(done) and calls.count("evaluate") >= len(done)
