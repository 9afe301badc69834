"""The progress bar of a search: a tqdm bar fed by polling the storage, so it counts the
trials of in-process and worker processes alike."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import optuna

from autoprune.config import SearchConfig
from autoprune.study._storage import counted_trials
from autoprune.study.keys import is_feasible

__all__ = ["progress_bar"]


@contextlib.contextmanager
def progress_bar(study: optuna.Study, cfg: SearchConfig, total: int) -> Iterator[None]:
    """Show ``total`` trials' progress while the block runs (polled once a second)."""
    from tqdm.auto import tqdm

    start = len(counted_trials(study))
    bar = tqdm(total=total, unit="trial", desc=f"search {cfg.study_name}", dynamic_ncols=True)

    def update() -> None:
        try:
            trials = counted_trials(study)
        except Exception:  # noqa: BLE001 - a busy database must not kill the bar
            return
        bar.n = min(bar.total, len(trials) - start)
        bar.set_postfix_str(_best_feasible_text(trials), refresh=False)
        bar.refresh()

    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(1.0):
            update()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        update()
        bar.close()


def _best_feasible_text(trials: list[optuna.trial.FrozenTrial]) -> str:
    ok = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and is_feasible(t)]
    if not ok:
        return "no feasible trial yet"
    best = max(ok, key=lambda t: float(t.user_attrs.get("speedup", 0.0)))
    return (
        f"best feasible: #{best.number} {best.user_attrs.get('speedup', 0):.2f}x faster, "
        f"{best.user_attrs.get('compression', 0):.1f}x smaller, drop {best.user_attrs.get('accuracy_drop', 0):.2f}"
    )
