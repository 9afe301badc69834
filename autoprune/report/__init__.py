"""The HTML report of a study: Pareto front, hypervolume, schedules, pattern, importances.

Modules: ``_data`` (what each figure shows, from the study), ``_first_screen`` (the framed
front and the picks), ``_pattern`` (the pruning-pattern
panel: re-prunes one layer of one trial), ``_plots`` and ``_lm`` (Plotly figures), ``_html``
(the page's markup), ``_png`` (static images), ``_page`` (the page: sections, files).

One self-contained page (plotly.js embedded once; opens from disk without internet) plus
``trials.csv`` next to it and, on request, a PNG of each figure.

Example:
    >>> import autoprune as ap
    >>> study = ap.load_study("digits").study  # the Optuna study  # doctest: +SKIP
    >>> ap.report(study, "studies/digits-report")  # doctest: +SKIP
    PosixPath('studies/digits-report/report.html')
"""

from __future__ import annotations

from autoprune._errors import StudyNotFoundError
from autoprune.report._data import hypervolume
from autoprune.report._page import CSV_NAME, PAGE_NAME, ReportFiles, default_out_dir, report, write_report
from autoprune.study import trials_table

__all__ = [
    "CSV_NAME",
    "PAGE_NAME",
    "ReportFiles",
    "StudyNotFoundError",
    "default_out_dir",
    "hypervolume",
    "report",
    "trials_table",
    "write_report",
]
