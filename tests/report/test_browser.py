"""The report in a real browser: opened from disk in headless Chromium, every figure renders,
with no console error and no network request (plotly.js is embedded in the page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import autoprune as ap
from autoprune.testing import models as zoo
from autoprune.testing.browser import find_chromium, load_page
from autoprune.testing.studies import synthetic_report_study as make_study

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # seconds each: Chromium starts per page
    pytest.mark.skipif(find_chromium() is None, reason="needs Chromium: apt-get install chromium"),
]


@pytest.fixture(scope="module")
def cnn() -> tuple[torch.nn.Module, torch.Tensor, list[ap.LayerInfo]]:
    torch.manual_seed(0)
    model, x = zoo.get("cnn")
    return model, x, ap.prunable_layers(model, x)


@pytest.fixture(scope="module", autouse=True)
def _playwright() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the browser tests drive Chromium with Playwright: pip install playwright", pytrace=False)


@pytest.mark.parametrize(("n_objectives", "figures"), [(2, 6), (3, 7)])
def test_page_renders_every_figure_offline(tmp_path: Path, cnn: Any, n_objectives: int, figures: int) -> None:
    model, x, layers = cnn
    study = make_study(n_objectives, layers=layers)
    page = ap.report(study, tmp_path, model=model, example_inputs=x)

    load = load_page(page)

    assert load.console_errors == []
    assert load.requests == [page.resolve().as_uri()]  # the page itself, nothing else
    assert load.plots == figures, load.plot_ids
    assert load.rendered == figures, load.plot_ids


def test_page_with_missing_sections_still_renders(tmp_path: Path) -> None:
    """Few trials and no task: notes instead of the pattern and importances, no errors."""
    page = ap.report(make_study(2, 6), tmp_path)
    load = load_page(page)
    assert load.console_errors == []
    assert load.requests == [page.resolve().as_uri()]
    assert load.rendered == load.plots == 4  # recommended, Pareto front, hypervolume, schedules


def test_harness_sees_errors_and_requests(tmp_path: Path) -> None:
    """The checks above can fail: a console error and an outside request are both caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><head><link rel="icon" href="data:,"></head><body>'
        '<img src="https://example.invalid/x.png"><script>console.error("broken")</script></body></html>'
    )
    load = load_page(page)
    assert "broken" in load.console_errors
    assert "https://example.invalid/x.png" in load.requests
