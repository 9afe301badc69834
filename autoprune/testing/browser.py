"""Open a report page in headless Chromium and say what rendered (tests and benchmarks).

Needs the ``playwright`` package (``pip install playwright``) and a Chromium on the
machine (``apt-get install chromium``); Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

__all__ = ["PageLoad", "find_chromium", "load_page", "CHROMIUM_ARGS"]

# Offline and quiet: no GPU, no background updates or sync, no first-run pages.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    # Software WebGL for the 3D view when there is no GPU.
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
)

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Per plot div: rendered when plotly drew its SVG; a 3D scene also needs its WebGL canvas.
_COUNT_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(div => {
  const svg = div.querySelector('.main-svg');
  const is3d = (div._fullData || []).some(t => t.type.endsWith('3d'));
  const canvas = div.querySelector('.gl-container canvas');
  const webgl = !is3d || (!!canvas && canvas.width > 0 && canvas.height > 0);
  const noWebGL = div.textContent.includes('WebGL is not supported');
  return {id: div.id, drawn: !!svg && webgl && !noWebGL, is3d: is3d};
})"""


class PageLoad(NamedTuple):
    plots: int  # plot divs on the page
    rendered: int  # of those, drawn (SVG, plus a WebGL canvas for 3D scenes)
    plot_ids: list[str]
    console_errors: list[str]  # console.error messages and uncaught exceptions
    requests: list[str]  # every URL the page asked for, the page itself included
    load_ms: float  # navigation start to every plot drawn


def find_chromium() -> str | None:
    """The Chromium or Chrome executable (``$CHROMIUM`` first), or None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).exists() else None
    for name in _CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def load_page(page_path: str | Path, *, chromium: str | None = None, timeout_s: float = 60.0) -> PageLoad:
    """Open ``page_path`` from disk, wait until every plot is drawn, report what happened."""
    from playwright.sync_api import sync_playwright

    executable = chromium or find_chromium()
    if executable is None:
        raise FileNotFoundError("no Chromium found: apt-get install chromium (or set $CHROMIUM)")
    url = Path(page_path).resolve().as_uri()
    errors: list[str] = []
    requests: list[str] = []
    with tempfile.TemporaryDirectory(prefix="autoprune-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
        )
        try:
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))
            start = time.perf_counter()
            page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            page.wait_for_function(
                "() => Array.from(document.querySelectorAll('.js-plotly-plot'))"
                ".every(d => d.querySelector('.main-svg'))",
                timeout=timeout_s * 1000,
            )
            load_ms = (time.perf_counter() - start) * 1000
            plots = page.evaluate(_COUNT_JS)
        finally:
            context.close()
    return PageLoad(
        plots=len(plots),
        rendered=sum(1 for p in plots if p["drawn"]),
        plot_ids=[p["id"] for p in plots],
        console_errors=errors,
        requests=requests,
        load_ms=load_ms,
    )
