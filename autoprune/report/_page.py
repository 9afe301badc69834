"""The report page: the sections of a study's HTML report, written with its trials table.

:func:`write_report` builds the page from the figures of :mod:`._plots` / :mod:`._lm` (data
from :mod:`._data`, :mod:`._pattern`), renders it with :mod:`._html` and writes ``trials.csv``
and, on request, PNGs (:mod:`._png`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import optuna

from autoprune._paths import sqlite_path
from autoprune.config import DEFAULT_STORAGE
from autoprune.lm._summary import is_lm_study
from autoprune.report import _data, _first_screen, _lm, _pattern, _plots
from autoprune.report._html import Section, render_page
from autoprune.report._png import export_pngs
from autoprune.study import trials_table
from autoprune.study._recommend import recommend
from autoprune.study.keys import front_tolerance

if TYPE_CHECKING:
    from torch import nn

__all__ = ["CSV_NAME", "PAGE_NAME", "ReportFiles", "default_out_dir", "report", "write_report"]

_logger = logging.getLogger(__name__)

PAGE_NAME = "report.html"
CSV_NAME = "trials.csv"


def default_out_dir(study_name: str, storage: str | Path = DEFAULT_STORAGE) -> Path:
    """Where the report of a study goes by default: ``<study>-report`` next to the SQLite
    file (``studies/<study>-report`` for the default storage), as the search writes it."""
    url = str(storage)
    db = sqlite_path(url)
    if db is not None:
        return db.parent / f"{study_name}-report"
    if "://" not in url:  # a bare SQLite path
        return Path(url).parent / f"{study_name}-report"
    return Path("studies") / f"{study_name}-report"


class ReportFiles(NamedTuple):
    """What :func:`write_report` wrote."""

    page: Path
    csv: Path
    pngs: list[Path]
    png_message: str | None  # why no PNGs were written, when asked for and not written


def write_report(
    study: optuna.Study,
    out_dir: str | Path,
    *,
    png: bool = False,
    pattern_trial: int | None = None,
    pattern_layer: str | None = None,
    model: nn.Module | None = None,
    example_inputs: Any = None,
    front_axis: str = "speedup",
) -> ReportFiles:
    """Write the report and say which files it wrote (:func:`report` returns the page only).

    Args:
        study: a study written by :func:`autoprune.search`.
        out_dir: folder for the page, the CSV and the PNGs (created if missing).
        png: also write ``<figure>.png`` for each figure (needs kaleido and Chrome or
            Chromium; without them ``png_message`` says why, and the page is still written).
        pattern_trial: the trial whose pruning pattern is shown (default: the Pareto trial
            that prunes the largest share of the weights).
        pattern_layer: the layer shown (default: that trial's largest pruned layer).
        model, example_inputs: the unpruned model and its inputs for the pruning pattern;
            by default the task is rebuilt from the study's task spec.
        front_axis: the first screen's x axis, ``"speedup"`` or ``"latency"`` (in ms); a study
            without a latency objective shows compression.
    """

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _data.objective_names(study)
    dirs = _data.directions(study)
    sections: list[Section] = []

    if is_lm_study(study):
        _lm_sections(study, sections)
        pareto_count = None
    else:
        pareto_count = _accuracy_sections(
            study, sections, names, pattern_trial, pattern_layer, model, example_inputs, front_axis
        )

    table = trials_table(study)
    csv_path = out / CSV_NAME
    table.to_csv(csv_path, index=False)

    states = table["state"].value_counts().to_dict() if len(table) else {}
    summary = [
        ("study", study.study_name),
        ("objectives", ", ".join(f"{n} ({d})" for n, d in zip(names, dirs, strict=True))),
        ("trials", ", ".join(f"{v} {k.lower()}" for k, v in states.items()) or "none"),
    ]
    if pareto_count is not None:
        summary.append(("Pareto trials", str(pareto_count)))
    task = study.user_attrs.get("task")
    if isinstance(task, dict):
        summary.append(("task", ", ".join(f"{k}={v}" for k, v in task.items())))
    summary.append(("optuna", optuna.__version__))
    page = out / PAGE_NAME
    text = render_page(
        title=f"autoprune report: {study.study_name}",
        summary=summary,
        sections=sections,
        table=table,
        csv_name=CSV_NAME,
    )
    page.write_text(text, encoding="utf-8")

    pngs: list[Path] = []
    message = None
    if png:
        figures = {s.key: s.figure for s in sections if s.figure is not None}
        pngs, message = export_pngs(figures, out)
    return ReportFiles(page, csv_path, pngs, message)


def _lm_sections(study: optuna.Study, sections: list[Section]) -> None:
    """A perplexity study (the allocation search): perplexity against sparsity, and where
    each allocation puts its sparsity. A structural study: perplexity against both speedups,
    and where each trial cuts."""
    if study.user_attrs.get("config", {}).get("kind") == "structure":
        for key, title, intro, figure, note in _lm.structure_figures(study):
            sections.append(Section(key, title, intro, figure, note))
        return
    info = _lm._get_allocation_info(study)
    metric = study.user_attrs.get("metric", {})
    intro = (
        "Every trial's validation perplexity (what the search saw) against its total sparsity: black squares "
        "uniform, orange diamonds OWL, blue the search, red stars the trial chosen on validation at each level. "
        + (metric.get("notice") or "")
    )
    fig = _lm._get_allocation_plot(info) if info.note is None else None
    sections.append(Section("allocation", "Perplexity against sparsity", intro, fig, info.note))
    units_intro = "Per-unit sparsity of the references and of the chosen trials (the same total at each level)."
    units_fig = _lm._get_units_plot(info) if info.note is None else None
    sections.append(Section("units", "Allocations", units_intro, units_fig, info.note))


def _accuracy_sections(
    study: optuna.Study,
    sections: list[Section],
    names: list[str],
    pattern_trial: int | None,
    pattern_layer: str | None,
    model: nn.Module | None,
    example_inputs: Any,
    front_axis: str = "speedup",
) -> int:
    """The sections of an accuracy study; returns the number of Pareto trials."""
    sections.append(_recommended_section(study, front_axis))
    pareto = _data._get_pareto_info(study)
    has_points = any(g.numbers for g in pareto.groups.values())
    tolerance = front_tolerance(study)
    kept = (
        f" (a trial is kept unless another, no worse on every objective, is at least {tolerance:g} points more "
        "accurate on validation: the split cannot tell smaller differences apart)"
        if tolerance > 0
        else ""
    )
    front_intro = (
        f"Red: feasible Pareto trials{kept}; blue: other feasible trials; grey x: infeasible trials; "
        "black: reference trials (unpruned model, uniform schedules). Hover a point for its metrics and schedule."
    )
    if len(names) < 2:
        sections.append(Section("pareto", "Pareto front", front_intro, note="the study has a single objective"))
    elif not has_points:
        sections.append(Section("pareto", "Pareto front", front_intro, note="no complete trial yet"))
    else:
        if len(names) == 3:
            sections.append(Section("pareto-3d", "Pareto front (3D)", front_intro, _plots._get_pareto_3d_plot(pareto)))
        title = "Pareto front" if len(names) == 2 else "Pareto front: pairwise views"
        intro = front_intro if len(names) == 2 else ""
        sections.append(Section("pareto", title, intro, _plots._get_pareto_2d_plot(pareto)))

    hv = _data._get_hypervolume_info(study)
    hv_intro = "Flattening means more trials of this search are unlikely to move the front much."
    hv_fig = _plots._get_hypervolume_plot(hv) if hv.note is None else None
    sections.append(Section("hypervolume", "Hypervolume history", hv_intro, hv_fig, hv.note))

    sens = _data._get_sensitivity_info(study)
    sens_fig = _plots._get_sensitivity_plot(sens) if sens.note is None else None
    sens_intro = (
        "Where pruning costs accuracy: the scan the search starts with. Its sensitivity references prune first where the "
        "least accuracy is lost per latency saved (each point's hover gives its paired speedup; per MAC saved "
        "when latency is not an objective)."
    )
    sections.append(Section("sensitivity", "Sensitivity per unit", sens_intro, sens_fig, sens.note))

    heat = _data._get_heatmap_info(study)
    heat_fig = _plots._get_heatmap_plot(heat) if heat.note is None else None
    heat_intro = "Per-layer amount of each Pareto trial: blue structured (channels removed), orange unstructured."
    sections.append(Section("schedules", "Schedules of the Pareto trials", heat_intro, heat_fig, heat.note))

    pattern = _pattern._get_pattern_info(
        study, trial_number=pattern_trial, layer=pattern_layer, model=model, example_inputs=example_inputs
    )
    pattern_fig = _plots._get_pattern_plot(pattern) if pattern.note is None else None
    pattern_intro = (
        "One layer's weights before and after pruning, re-applied without fine-tuning (with several steps, "
        "the trial's fine-tuning between them may have moved a few choices): structured pruning removes whole "
        "rows (output channels), unstructured pruning scatters zeros."
    )
    sections.append(Section("pattern", "Pruning pattern", pattern_intro, pattern_fig, pattern.note))

    imp = _data._get_importance_info(study)
    imp_fig = _plots._get_importance_plot(imp) if imp.note is None else None
    imp_intro = "Which search parameters decide each objective (Optuna's PED-ANOVA over the complete trials)."
    sections.append(Section("importances", "Parameter importances", imp_intro, imp_fig, imp.note))
    return len(pareto.groups["pareto"].numbers)


def _recommended_section(study: optuna.Study, front_axis: str) -> Section:
    """The first screen: the strict front and the picks that ``autoprune search`` prints."""

    info = _first_screen._get_front_info(study, front_axis)
    rec = recommend(study)
    picks = "; ".join(
        f"{p.label}: trial {p.number} (val drop {rec.row(p.number).val_drop:.2f}, "
        f"test drop {rec.row(p.number).test_drop:.2f})"
        for p in rec.picks
    )
    intro = (
        "The strict Pareto front on validation (red; whiskers: the drop's standard error and the speedup's 95% "
        "interval), the picks that autoprune search prints ringed, the drop limit dashed. "
        + (f"{picks}. " if picks else "No trial meets the constraints yet. ")
        + f"Apply one: autoprune apply --study {study.study_name} --trial N --out DIR."
    )
    figure = _plots._get_front_plot(info) if info.note is None else None
    return Section("recommended", "Recommended trials", intro, figure, info.note)


def report(study: optuna.Study, out_dir: str | Path, **options: Any) -> Path:
    """Write the study's HTML report (``report.html``) and ``trials.csv`` into ``out_dir``.

    Args:
        study: a study written by :func:`autoprune.search` (see :mod:`autoprune.study.keys`).
        out_dir: folder for the page, the CSV and the PNGs (created if missing).
        **options: ``png``, ``pattern_trial``, ``pattern_layer``, ``model``,
            ``example_inputs`` and ``front_axis``, as in :func:`write_report`. A PNG export that cannot run
            logs a one-line warning; the page is still written.

    Returns:
        The path of the HTML page.

    Example:
        >>> path = ap.report(study, tmp_path)  # doctest: +SKIP
        >>> path.name
        'report.html'
    """
    files = write_report(study, out_dir, **options)
    if files.png_message:
        _logger.warning(files.png_message)
    return files.page
