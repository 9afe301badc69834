"""A screenshot of the report's first screen in headless Chromium, after a short search.

Runs ``autoprune search`` on the built-in default task (digits, accuracy and latency, as with
no arguments) with fewer trials, into its own SQLite file, writes the report and saves what a
browser window shows first (no scrolling) as a PNG::

    python scripts/report_screenshot.py docs/images/report-first-screen.png
    python scripts/report_screenshot.py shot.png --trials 40 --work /tmp/shot   # keep the study

Running it again with the same ``--work`` resumes the study (only missing trials run), so a
change to the report is re-shot in seconds. Needs Chromium (``apt-get install chromium``) and
``pip install playwright`` (Playwright's own browser download is not used).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

STUDY = "digits"


def search(work: Path, trials: int, target: str) -> str:
    """Run (or resume) the search; return its storage URL."""
    storage = f"sqlite:///{work / 'studies.db'}"
    command = [sys.executable, "-m", "autoprune.cli", "search", "--study", STUDY, "--storage", storage,
               "--trials", str(trials), "--target", target, "--no-report"]  # fmt: skip
    print("$", " ".join(command[2:]), flush=True)
    subprocess.run(command, check=True)
    return storage


def screenshot(page: Path, png: Path, *, width: int, height: int) -> None:
    """Open ``page`` from disk, wait for every plot, save the first ``width`` x ``height`` pixels."""
    from playwright.sync_api import sync_playwright

    from autoprune.testing.browser import CHROMIUM_ARGS, find_chromium

    executable = find_chromium()
    if executable is None:
        raise SystemExit("no Chromium found: apt-get install chromium (or set $CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="autoprune-shot-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=list(CHROMIUM_ARGS),
            viewport={"width": width, "height": height},
        )
        try:
            tab = context.new_page()
            tab.goto(page.resolve().as_uri(), wait_until="load")
            tab.wait_for_function(
                "() => Array.from(document.querySelectorAll('.js-plotly-plot')).every(d => d.querySelector('.main-svg'))"
            )
            png.parent.mkdir(parents=True, exist_ok=True)
            tab.screenshot(path=str(png), full_page=False)
        finally:
            context.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("png", type=Path, help="where the screenshot goes")
    parser.add_argument("--trials", type=int, default=24, help="the study's trials (default 24; the CLI's is 40)")
    parser.add_argument("--target", default="cpu:threads=1", help="latency target (default cpu:threads=1)")
    parser.add_argument("--work", type=Path, default=None, help="folder for the study and report (default: temporary)")
    parser.add_argument("--axis", choices=("speedup", "latency"), default="speedup", help="the front's x axis")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=860)
    args = parser.parse_args(argv)

    from autoprune.report import write_report
    from autoprune.study import load_study

    with tempfile.TemporaryDirectory(prefix="autoprune-shot-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        storage = search(work, args.trials, args.target)
        files = write_report(load_study(STUDY, storage).study, work / "report", front_axis=args.axis)
        screenshot(files.page, args.png, width=args.width, height=args.height)
    print(f"report: {files.page}" if args.work else "report: (temporary, gone)")
    print(f"screenshot: {args.png} ({args.png.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
