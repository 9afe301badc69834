"""A search optimises the validation score and never shows the test score to the sampler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import autoprune as ap

TEST_SCORE = 12.345  # a value evaluate never returns, so it is recognisable wherever it lands


def _spy_task(calls: list[str]) -> ap.Task:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()

    def evaluate(m: nn.Module) -> float:
        calls.append("evaluate")
        return 50.0 + sum(p.numel() for p in m.parameters()) / 1e6

    def test(m: nn.Module) -> float:
        calls.append("test")
        return TEST_SCORE

    return ap.Task(
        name="spy", model=model, example_inputs=torch.randn(4, 8), evaluate=evaluate, test=test, scale="percent"
    )


def test_a_search_records_test_accuracy_but_never_optimises_it(tmp_path: Path) -> None:
    calls: list[str] = []
    study = ap.search(
        _spy_task(calls),
        objectives=["accuracy", "latency"],
        n_trials=3,
        storage=f"sqlite:///{tmp_path / 's.db'}",
        study_name="spy",
        report=False,
    )
    assert "evaluate" in calls
    trials = [t for t in study.trials if t.values is not None]
    assert trials
    for trial in trials:
        assert TEST_SCORE not in trial.values  # the sampler sees validation only
        assert all(v != TEST_SCORE for v in trial.intermediate_values.values())
        assert trial.user_attrs.get("test_accuracy") == pytest.approx(TEST_SCORE)
