"""The HTML report: the data behind each figure, the page, the CSV and PNG export (the
command: tests/cli/test_report.py).

Studies are built with Optuna directly, following the contract in autoprune.study.keys, so
these tests do not depend on the search.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState, create_trial

import autoprune as ap
from autoprune.report import (
    _data,
    _first_screen,
    _pattern,
    _png,
    default_out_dir,
    hypervolume,
    trials_table,
    write_report,
)
from autoprune.study import keys as study_keys
from autoprune.testing import models as zoo
from autoprune.testing.cli import run_cli
from autoprune.testing.studies import OBJECTIVE_SETS, TASK_SPEC
from autoprune.testing.studies import synthetic_report_study as make_study


@pytest.fixture(scope="module")
def cnn() -> tuple[torch.nn.Module, torch.Tensor, list[ap.LayerInfo]]:
    """A small untrained CNN from the zoo: real layers for real schedules, no training."""
    torch.manual_seed(0)
    model, x = zoo.get("cnn")
    return model, x, ap.prunable_layers(model, x)


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.trials if t.state == TrialState.COMPLETE]


# ---------------------------------------------------------------------------- Pareto
@pytest.mark.parametrize("n_objectives", [2, 3])
def test_pareto_points_are_exactly_best_trials(n_objectives: int) -> None:
    study = make_study(n_objectives)
    info = _data._get_pareto_info(study)
    best = sorted(study.best_trials, key=lambda t: t.number)
    assert info.groups["pareto"].numbers == [t.number for t in best]
    assert info.groups["pareto"].values == [list(t.values) for t in best]
    assert info.objective_names == OBJECTIVE_SETS[n_objectives]
    assert info.pairs == ([(0, 1)] if n_objectives == 2 else [(0, 1), (0, 2), (1, 2)])


@pytest.mark.parametrize("n_objectives", [2, 3])
def test_pareto_groups_mark_infeasible_and_references(n_objectives: int) -> None:
    study = make_study(n_objectives)
    info = _data._get_pareto_info(study)
    groups = {k: set(g.numbers) for k, g in info.groups.items()}
    complete = _complete(study)
    infeasible = {t.number for t in complete if not study_keys.is_feasible(t)}
    references = {t.number for t in complete if t.user_attrs["role"] != study_keys.ROLE_SEARCH}
    assert infeasible, "the builder must make infeasible trials"
    assert groups["infeasible"] == infeasible - references
    assert groups["reference"] == references == {0, 1, 2}
    assert not groups["pareto"] & infeasible  # the front holds feasible trials only
    assert not groups["feasible"] & (groups["pareto"] | infeasible | references)
    # Every complete trial is drawn; failed trials are not.
    assert set().union(*groups.values()) == {t.number for t in complete}


def test_hover_shows_number_metrics_and_schedule_summary() -> None:
    study = make_study(2)
    info = _data._get_pareto_info(study)
    group = info.groups["pareto"]
    trial = study.trials[group.numbers[0]]
    hover = group.hovers[0]
    assert f"trial {trial.number}" in hover
    assert "accuracy:" in hover and "latency:" in hover and "accuracy_drop:" in hover
    assert trial.user_attrs["schedule_summary"] in hover
    assert "<br>" in hover and "\n" not in hover


# ---------------------------------------------------------------------------- hypervolume
@pytest.mark.parametrize("n_objectives", [2, 3])
def test_hypervolume_history_matches_optuna(n_objectives: int) -> None:
    from optuna.visualization._hypervolume_history import _get_hypervolume_history_info

    study = make_study(n_objectives)
    info = _data._get_hypervolume_info(study)
    assert info.note is None
    assert info.trial_numbers == [t.number for t in _complete(study)]
    assert all(b >= a for a, b in zip(info.values[:-1], info.values[1:], strict=True))
    # Optuna's own incremental history with the same reference point gives the same numbers.
    expected = _get_hypervolume_history_info(study, np.asarray(info.reference_point))
    assert expected.trial_numbers == info.trial_numbers
    np.testing.assert_allclose(info.values, expected.values, rtol=1e-9)
    assert info.values[-1] > 0


def test_hypervolume_of_points_by_optuna() -> None:
    # two boxes of 0.5 x 0.5 overlapping in 0.25 x 0.25; 3D: one box
    assert hypervolume([[0.5, 0.0], [0.0, 0.5]], [1.0, 1.0]) == pytest.approx(0.75)
    assert hypervolume([[0.5, 0.5, 0.5]], [1.0, 1.0, 1.0]) == pytest.approx(0.125)
    # points at or beyond the reference add nothing
    assert hypervolume(np.array([[1.2, 0.1], [0.5, 0.5]]), np.ones(2)) == pytest.approx(0.25)
    assert hypervolume(np.zeros((0, 2)), [1.0, 1.0]) == 0.0


def test_hypervolume_needs_two_objectives() -> None:
    study = optuna.create_study()
    study.add_trial(create_trial(value=1.0))
    assert _data._get_hypervolume_info(study).note == "hypervolume needs at least two objectives"


# ---------------------------------------------------------------------------- heatmap
@pytest.mark.parametrize("n_objectives", [2, 3])
def test_heatmap_is_layers_by_pareto_trials(n_objectives: int) -> None:
    study = make_study(n_objectives)
    info = _data._get_heatmap_info(study)
    best = study.best_trials
    assert sorted(info.trial_numbers) == sorted(t.number for t in best)
    assert info.layers == [d["name"] for d in study.user_attrs["layers"]]
    assert np.asarray(info.amounts, dtype=object).shape == (len(info.layers), len(best))
    assert np.asarray(info.methods).shape == (len(info.layers), len(best))
    # Each cell is the trial's plan for that layer; unpruned layers are empty.
    for col, number in enumerate(info.trial_numbers):
        schedule = study_keys.trial_schedule(study.trials[number])
        for row, layer in enumerate(info.layers):
            plan = schedule.active_layers().get(layer)
            assert info.methods[row][col] == ("" if plan is None else plan.method)
            assert info.amounts[row][col] == (None if plan is None else plan.amount)


# ---------------------------------------------------------------------------- importances
def test_importances_per_objective_are_deterministic() -> None:
    study = make_study(3, 40)
    first = _data._get_importance_info(study)
    assert first.note is None
    assert first.objective_names == OBJECTIVE_SETS[3]
    assert len(first.importances) == 3
    params = {p for t in _complete(study) for p in t.params}
    for importances in first.importances:
        assert set(importances) <= params and importances
        assert all(v >= 0 for v in importances.values())
    assert _data._get_importance_info(study) == first


def test_importances_say_why_they_are_missing() -> None:
    info = _data._get_importance_info(make_study(2, 8))
    assert info.importances == [] and info.note is not None and "at least 10 complete trials" in info.note


# ---------------------------------------------------------------------------- trials table
def test_trials_table_has_one_row_per_trial() -> None:
    study = make_study(3)
    table = trials_table(study)
    assert len(table) == len(study.trials)
    assert list(table["number"]) == [t.number for t in study.trials]
    for column in ("state", "accuracy", "latency", "size", "role", "feasible", "schedule", "error"):
        assert column in table.columns
    failed = table[table["state"] == "FAIL"]
    assert len(failed) and (failed["error"] == "RuntimeError: boom").all()
    assert failed["accuracy"].isna().all()


# ---------------------------------------------------------------------------- pruning pattern
def _kept_rows(after: np.ndarray) -> np.ndarray:
    return ~np.isnan(after).all(axis=1)


def test_match_kept_recovers_removed_rows_and_columns() -> None:
    rng = np.random.default_rng(0)
    before = rng.normal(size=(6, 5, 3))
    rows, cols = np.array([0, 2, 3, 5]), np.array([0, 1, 3, 4])
    kept = _pattern._match_kept(before, before[np.ix_(rows, cols)])
    assert kept is not None
    np.testing.assert_array_equal(kept[0], rows)
    np.testing.assert_array_equal(kept[1], cols)


def test_pattern_structured_removes_rows_at_their_places(cnn: Any) -> None:
    model, x, layers = cnn
    target = layers[1].name  # its input channels stay: only rows go
    schedule = ap.Schedule(layers={target: ap.LayerPlan("structured", 0.5)})
    info = _pattern._pattern_from_weights(
        model.get_submodule(target).weight.detach().numpy().astype(float),
        ap.apply_schedule(model, schedule, example_inputs=x)
        .get_submodule(target)
        .weight.detach()
        .numpy()
        .astype(float),
        layer=target,
        method="structured",
        amount=0.5,
        trial_number=None,
    )
    out_channels = model.get_submodule(target).weight.shape[0]
    assert info.note is None and info.before is not None and info.after is not None
    assert info.removed_rows == out_channels // 2
    assert int((~_kept_rows(info.after)).sum()) == info.removed_rows
    # Kept weights sit where they were: 'after' equals 'before' wherever it is not removed.
    mask = ~np.isnan(info.after)
    np.testing.assert_array_equal(info.after[mask], info.before[mask])


def test_pattern_of_study_rebuilds_the_digits_task(digits_task: ap.Task) -> None:
    """The study names its task; the report rebuilds it and re-applies the trial's schedule."""
    layers = ap.prunable_layers(digits_task.model, digits_task.example_inputs)
    study = make_study(2, 1, layers=layers, task_spec=TASK_SPEC)
    structured = ap.Schedule(layers={"features.3": ap.LayerPlan("structured", 0.5)})
    unstructured = ap.Schedule(layers={"features.7": ap.LayerPlan("unstructured", 0.5)})
    for schedule, values in ((structured, [90.0, 0.5]), (unstructured, [95.0, 0.8])):
        attrs = {"role": "search", "schedule": schedule.to_json(), "schedule_summary": schedule.summary()}
        study.add_trial(create_trial(values=values, user_attrs={**attrs, "feasible": True}))
    s_num, u_num = len(study.trials) - 2, len(study.trials) - 1

    info = _pattern._get_pattern_info(study, trial_number=s_num)
    assert info.note is None, info.note
    assert (info.layer, info.method, info.removed_rows) == ("features.3", "structured", 16)
    assert info.after is not None and int((~_kept_rows(info.after)).sum()) == 16

    info = _pattern._get_pattern_info(study, trial_number=u_num)
    assert info.note is None and info.after is not None and info.before is not None
    assert (info.layer, info.method, info.removed_rows, info.removed_cols) == ("features.7", "unstructured", 0, 0)
    assert not np.isnan(info.after).any()
    assert info.zeros == pytest.approx(info.before.size * 0.5, abs=2)  # scattered zeros, no rows gone

    # By default: the Pareto trial that prunes most and its largest pruned layer.
    default = _pattern._get_pattern_info(study)
    assert default.trial_number in {t.number for t in study.best_trials}
    assert default.note is None


def test_pattern_without_task_is_a_note_not_a_crash(tmp_path: Path) -> None:
    study = make_study(2, 12)  # no task spec
    info = _pattern._get_pattern_info(study)
    assert info.before is None and info.note is not None and "no task spec" in info.note
    page = ap.report(study, tmp_path).read_text(encoding="utf-8")
    assert "no task spec" in page


def test_pattern_bad_trial_or_layer_is_a_config_error(cnn: Any) -> None:
    model, x, layers = cnn
    study = make_study(2, 12, layers=layers)
    with pytest.raises(ap.ConfigError, match="trial 999 is not in study"):
        _pattern._get_pattern_info(study, trial_number=999, model=model, example_inputs=x)
    with pytest.raises(ap.ConfigError, match="layer 'nope' has no 2D"):
        _pattern._get_pattern_info(study, layer="nope", model=model, example_inputs=x)


# ---------------------------------------------------------------------------- the page
@pytest.mark.parametrize("n_objectives", [2, 3])
def test_report_writes_one_self_contained_page_and_csv(tmp_path: Path, cnn: Any, n_objectives: int) -> None:
    model, x, layers = cnn
    study = make_study(n_objectives, layers=layers)
    page = ap.report(study, tmp_path / "out", model=model, example_inputs=x)
    assert page == tmp_path / "out" / "report.html"
    text = page.read_text(encoding="utf-8")
    from plotly.offline import get_plotlyjs

    plotlyjs = get_plotlyjs()
    assert text.count(plotlyjs) == 1  # plotly.js embedded once, whole
    rest = text.replace(plotlyjs, "")
    assert "<script src=" not in rest and "https://" not in rest and "http://" not in rest
    expected = ["fig-pareto", "fig-hypervolume", "fig-schedules", "fig-pattern", "fig-importances"]
    if n_objectives == 3:
        expected.append("fig-pareto-3d")
    for div in expected:
        assert f'id="{div}"' in text
    csv = pd.read_csv(tmp_path / "out" / "trials.csv")
    assert len(csv) == len(study.trials)
    assert list(csv["number"]) == [t.number for t in study.trials]


# ---------------------------------------------------------------------------- PNG
def test_png_without_browser_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    monkeypatch.setattr(_png, "_find_browser", lambda: None)
    study = make_study(2, 12)
    files = write_report(study, tmp_path, png=True)
    assert files.pngs == [] and files.png_message == _png.NO_BROWSER
    assert "\n" not in files.png_message and "apt-get install chromium" in files.png_message
    assert files.page.exists()
    with caplog.at_level(logging.WARNING, logger="autoprune.report"):
        ap.report(study, tmp_path, png=True)
    assert [r.getMessage() for r in caplog.records] == [_png.NO_BROWSER]


def test_png_without_kaleido_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kaleido", None)  # makes `import kaleido` fail
    files = write_report(make_study(2, 12), tmp_path, png=True)
    assert files.pngs == [] and files.png_message == _png.NO_KALEIDO


@pytest.mark.browser
@pytest.mark.slow
def test_png_export_with_kaleido_and_chromium(tmp_path: Path) -> None:
    pytest.importorskip("kaleido", reason="kaleido is not installed")
    if _png._find_browser() is None:
        pytest.skip("no Chrome/Chromium for kaleido (apt-get install chromium)")
    files = write_report(make_study(2, 12), tmp_path, png=True)
    assert files.png_message is None
    expected = {"recommended.png", "pareto.png", "hypervolume.png", "schedules.png", "importances.png"}
    assert {p.name for p in files.pngs} == expected
    for path in files.pngs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_out_dir() -> None:
    assert default_out_dir("digits") == Path("studies/digits-report")
    assert default_out_dir("x", "sqlite:////data/s.db") == Path("/data/x-report")
    assert default_out_dir("x", "postgresql://u@h/db") == Path("studies/x-report")


def test_sensitivity_info_reads_the_scan_stored_with_the_study() -> None:
    from autoprune.report._data import _get_sensitivity_info
    from autoprune.sensitivity import scan_sensitivity
    from autoprune.testing import models as zoo

    model, x = zoo.get("cnn", batch_size=2)
    layers = ap.prunable_layers(model, x)
    sens = scan_sensitivity(
        model, x, layers, evaluate=lambda m: float(sum(p.numel() for p in m.parameters())), amounts=(0.5,)
    )
    study = optuna.create_study(directions=["maximize", "minimize"])
    assert _get_sensitivity_info(study).note == "the study ran no sensitivity scan"
    study.set_user_attr("sensitivity", sens.to_dict())
    info = _get_sensitivity_info(study)
    structured = [i.name for i in layers if "structured" in i.methods]
    assert info.note is None and info.units == structured
    assert all(a == [0.0, 0.5] for a in info.amounts)
    # the score is the parameter count here: pruning a unit alone leaves fewer
    assert all(s[0] == info.reference_score and s[1] < s[0] for s in info.scores)
    assert info.speedups is None  # not timed
    timed = dataclasses.replace(sens, curves=tuple(
        dataclasses.replace(c, speedups=(1.25,)) if c.method == "structured" else c for c in sens.curves))  # fmt: skip
    study.set_user_attr("sensitivity", timed.to_dict())
    info = _get_sensitivity_info(study)
    assert info.speedups == [[1.0, 1.25]] * len(structured)
    from autoprune.report._plots import _get_sensitivity_plot

    trace = _get_sensitivity_plot(info).data[0]
    assert list(trace.customdata) == [1.0, 1.25] and "as fast as unpruned" in trace.hovertemplate


def test_the_front_carries_error_bars_from_the_drops_error_and_the_speedups_interval() -> None:
    from autoprune.report._plots import _scatter_2d

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_metric_names(["accuracy", "latency"])
    plain = {"role": study_keys.ROLE_SEARCH, "feasible": True, "schedule": ap.Schedule().to_json()}
    attrs = {**plain, "accuracy_drop_se": 0.5, "speedup": 2.0, "speedup_low": 1.6, "speedup_high": 2.5}
    study.add_trial(create_trial(values=[98.0, 4.0], user_attrs=attrs))
    study.add_trial(create_trial(values=[99.0, 8.0], user_attrs=plain))
    info = _data._get_pareto_info(study)
    # latency 4.0 ms at 2.0x in [1.6x, 2.5x]: from 4 * 2 / 2.5 = 3.2 to 4 * 2 / 1.6 = 5.0 ms
    assert info.groups["pareto"].errors == [
        [(0.5, 0.5), (pytest.approx(0.8), pytest.approx(1.0))],
        [(0.0, 0.0), (0.0, 0.0)],
    ]
    trace = _scatter_2d(info, 0, 1, showlegend=True)[0]  # the front, sorted by accuracy
    assert list(trace.error_x.array) == [0.5, 0.0] and list(trace.error_x.arrayminus) == [0.5, 0.0]
    assert list(trace.error_y.array) == pytest.approx([1.0, 0.0]) and trace.error_y.visible
    assert "accuracy_drop_se: 0.5" in info.groups["pareto"].hovers[0]


# ---------------------------------------------------------------------------- first screen
FRONT_BASE = {"accuracy": 99.0, "test_accuracy": 98.0, "latency_ms": 10.0, "dense_bytes": 1_000_000}


def _front_study(
    objectives: tuple[str, ...] = ("accuracy", "latency"), limit: float = 1.0, storage: str | None = None
) -> optuna.Study:
    """A digits-like study: a front bent at trial 3, a faster trial over the limit, and a
    uniform-90% reference at 79% accuracy (20 points of drop) far outside what matters."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = [study_keys.DIRECTIONS[o] for o in objectives]
    study = optuna.create_study(study_name="front", storage=storage, directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(objectives))
    study.set_user_attr("objectives", list(objectives))
    study.set_user_attr("unpruned", FRONT_BASE)
    study.set_user_attr("config", {"constraints": {"max_accuracy_drop": limit}})

    def add(drop: float, speedup: float, size: float, role: str = study_keys.ROLE_SEARCH, **extra: Any) -> None:
        attrs: dict[str, Any] = {
            "role": role, "schedule": ap.Schedule().to_json(), "accuracy": 99.0 - drop, "accuracy_drop": drop,
            "test_accuracy_drop": drop + 0.4, "latency_ms": 10.0 / speedup, "speedup": speedup,
            "speedup_low": speedup * 0.95, "speedup_high": speedup * 1.05, "sparse_bytes": size,
            "compression": 1_000_000 / size, "accuracy_drop_se": 0.1, "feasible": drop <= limit,
            "fidelity": study_keys.FIDELITY_FULL, **extra,
        }  # fmt: skip
        values = [float(attrs[study_keys.OBJECTIVES[o][0]]) for o in objectives]
        study.add_trial(create_trial(values=values, user_attrs=attrs))

    add(0.0, 1.0, 1_000_000, study_keys.ROLE_UNPRUNED)  # 0
    add(0.0, 1.8, 650_000, study_keys.ROLE_UNIFORM, uniform_amount=0.25)  # 1
    add(0.2, 2.0, 700_000)  # 2
    add(0.3, 4.0, 120_000)  # 3: the knee
    add(0.9, 4.4, 90_000)  # 4: the fastest within the limit
    add(1.2, 4.6, 60_000)  # 5: over the limit, inside the frame
    add(20.0, 9.0, 20_000, study_keys.ROLE_UNIFORM, uniform_amount=0.9)  # 6: the outlier
    add(0.5, 3.0, 40_000)  # 7: the smallest within the limit
    return study


def _inside(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def test_first_screen_frames_the_front_and_the_constraint_and_clips_the_outlier() -> None:
    from autoprune.report._plots import _get_front_plot

    info = _first_screen._get_front_info(_front_study())
    assert info.x_name == "speedup" and info.note is None
    assert info.front.numbers == [1, 2, 3, 4]  # the strict front, slowest first
    assert info.others["reference"].numbers == [0]  # the unpruned model at 1x anchors the frame
    fig = _get_front_plot(info)
    x_range, y_range = tuple(fig.layout.xaxis.range), tuple(fig.layout.yaxis.range)
    assert fig.layout.xaxis.autorange is False and fig.layout.yaxis.autorange is False
    for x, y, (xl, xh) in zip(info.front.x, info.front.y, info.front.x_err, strict=True):
        assert _inside(x - xl, x_range) and _inside(x + xh, x_range) and _inside(y, y_range)
    assert _inside(1.0, y_range) and [s.y0 for s in fig.layout.shapes] == [1.0]  # the max drop line, in frame
    # the uniform-90% reference (drop 20, 9x) is outside both axes, and so not drawn
    assert not _inside(20.0, y_range) and not _inside(9.0, x_range)
    assert info.outside == [6] and all(6 not in (t.customdata or ()) for t in fig.data)
    assert 5 in info.others["infeasible"].numbers  # over the limit but inside the frame: drawn
    assert "1 trial outside this frame" in (info.clip_note or "") and "trial 6 (uniform 90%" in (info.clip_note or "")
    assert info.clip_note in fig.layout.title.text
    # a looser limit moves the frame with it: the line at 3 points is drawn, the outlier still is not
    loose = _first_screen._get_front_info(_front_study(limit=3.0))
    assert _inside(3.0, loose.y_range) and not _inside(20.0, loose.y_range) and loose.outside == [6]


def test_first_screen_marks_the_picks_that_the_search_prints() -> None:
    from autoprune.report._plots import _get_front_plot
    from autoprune.study._recommend import recommend

    study = _front_study(("accuracy", "latency", "size"))
    picks = {p.label: p.number for p in recommend(study).picks}
    assert picks == {"fastest": 4, "knee": 3, "smallest": 7}
    info = _first_screen._get_front_info(study)
    fig = _get_front_plot(info)
    (marked,) = [t for t in fig.data if t.name == "recommended"]
    assert sorted(marked.customdata) == [3, 4, 7]
    assert sorted(marked.text) == ["fastest #4", "knee #3", "smallest #7"]
    by_number = dict(zip(info.front.numbers, zip(info.front.x, info.front.y, strict=True), strict=True))
    assert [(x, y) for x, y in zip(marked.x, marked.y, strict=True)] == [by_number[n] for n in marked.customdata]


def test_first_screen_in_latency_when_asked_and_the_page_opens_with_it(tmp_path: Path) -> None:
    study = _front_study()
    info = _first_screen._get_front_info(study, "latency")
    assert info.x_name == "latency" and info.front.x == pytest.approx([10.0 / 4.4, 10.0 / 4.0, 5.0, 10.0 / 1.8])
    assert _inside(10.0, info.x_range) and _inside(10.0 / 4.4 * 0.95, info.x_range)  # the unpruned model's 10 ms
    assert not _inside(10.0 / 9.0, info.x_range) and info.outside == [6]
    with pytest.raises(ap.ConfigError, match="'speedup', 'latency'"):
        _first_screen._get_front_info(study, "ms")
    page = write_report(study, tmp_path, model=None).page.read_text()
    # the first section after the summary is the framed front with the picks
    assert page.index('id="recommended"') < page.index('id="pareto"')
    assert "fastest: trial 4 (val drop 0.90, test drop 1.30)" in page


def test_first_screen_without_latency_shows_compression_and_the_cli_takes_the_axis(tmp_path: Path) -> None:
    info = _first_screen._get_front_info(_front_study(("accuracy", "size")))
    assert info.x_name == "compression" and info.x_higher_is_better
    # compression = 1,000,000 / size: trial 7 (40 kB) is the smallest within the limit and is picked
    assert info.front.x == sorted(info.front.x) and 1_000_000 / 40_000 in info.front.x
    assert "smallest" in info.pick_labels[info.picks.numbers.index(7)]
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    _front_study(storage=storage)
    done = run_cli(
        "report", "--study", "front", "--storage", storage, "--axis", "latency", "--out", str(tmp_path / "r")
    )
    assert done.returncode == 0, done.stderr
    assert "latency (ms, lower is better)" in (tmp_path / "r" / "report.html").read_text()
