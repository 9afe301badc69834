"""PNG export of the report's figures with kaleido (which drives a Chrome or Chromium)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__: list[str] = []

_logger = logging.getLogger(__name__)

NO_KALEIDO = (
    "PNG export needs kaleido: pip install 'autoprune[png]' (or pip install kaleido); the HTML page was written."
)
NO_BROWSER = (
    "PNG export needs Chrome or Chromium for kaleido: apt-get install chromium (Debian/Ubuntu) "
    "or run plotly_get_chrome; the HTML page was written."
)


def _find_browser() -> str | None:
    """The browser kaleido would use, or None when it would find none.

    Asks choreographer (kaleido's browser driver) the way kaleido does; if that API moves,
    assume a browser exists and let the export itself tell.
    """
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except Exception:  # noqa: BLE001 - a changed internal API must not break the report
        return "unknown"


def export_pngs(figures: Mapping[str, go.Figure], out_dir: Path) -> tuple[list[Path], str | None]:
    """Write ``<name>.png`` for each figure; returns the paths and a one-line message on failure."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return [], NO_KALEIDO
    if _find_browser() is None:
        return [], NO_BROWSER
    import plotly.io as pio

    paths = [out_dir / f"{name}.png" for name in figures]
    try:
        pio.write_images(list(figures.values()), paths, format="png")
    except Exception as exc:  # noqa: BLE001 - kaleido/browser failures become one line
        _logger.debug("PNG export failed", exc_info=True)
        text = str(exc)
        if "chrome" in text.lower() or "browser" in text.lower():
            return [], NO_BROWSER
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
        return [], f"PNG export failed: {first}; the HTML page was written."
    return paths, None
