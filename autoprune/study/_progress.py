"""The progress of a search, fed by polling the storage, so it counts the trials of in-process
and worker processes alike. It suits where it runs: a live tqdm bar on a terminal; on a pipe
or a file (a CI log, ``| tee``), where a bar's redraws would pile up as lines, one line per
finished trial and nothing else."""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import optuna

from autoprune._stored import unpruned_metrics
from autoprune.config import SearchConfig
from autoprune.study._recommend import trial_row
from autoprune.study._storage import counted_trials
from autoprune.study.keys import is_feasible

__all__ = ["progress_bar", "trial_line"]


@contextlib.contextmanager
def progress_bar(
    study: optuna.Study, cfg: SearchConfig, total: int, *, stream: TextIO | None = None, poll_s: float = 1.0
) -> Iterator[None]:
    """Show ``total`` trials' progress on ``stream`` (default stderr) while the block runs:
    a tqdm bar when the stream is a terminal, else one line per finished trial
    (:func:`trial_line`)."""
    out = sys.stderr if stream is None else stream
    isatty = getattr(out, "isatty", None)
    show = _bar(study, cfg, total, out) if callable(isatty) and isatty() else _lines(study, total, out)
    update, close = show
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(poll_s):
            try:
                update()
            except Exception:  # noqa: BLE001 - a busy database must not kill the progress
                continue

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        with contextlib.suppress(Exception):
            update()
        close()


_Show = tuple[Callable[[], None], Callable[[], None]]


def _bar(study: optuna.Study, cfg: SearchConfig, total: int, out: TextIO) -> _Show:
    from tqdm.auto import tqdm

    start = len(counted_trials(study))
    bar = tqdm(total=total, unit="trial", desc=f"search {cfg.study_name}", dynamic_ncols=True, file=out)

    def update() -> None:
        trials = counted_trials(study)
        bar.n = min(bar.total, len(trials) - start)
        bar.set_postfix_str(_best_feasible_text(trials), refresh=False)
        bar.refresh()

    return update, bar.close


def _lines(study: optuna.Study, total: int, out: TextIO) -> _Show:
    seen = {t.number for t in counted_trials(study)}
    began = time.monotonic()
    done = 0
    unpruned = unpruned_metrics(study)

    def update() -> None:
        nonlocal done, unpruned
        if not unpruned:  # the unpruned model's metrics: written before the first trial
            unpruned = unpruned_metrics(study)
        new = sorted((t for t in counted_trials(study) if t.number not in seen), key=_finish_order)
        for t in new:
            seen.add(t.number)
            done += 1
            out.write(trial_line(t, unpruned, done=done, total=total, elapsed_s=time.monotonic() - began) + "\n")
        if new:
            out.flush()

    return update, lambda: None


def _finish_order(trial: optuna.trial.FrozenTrial) -> tuple[float, int]:
    complete = trial.datetime_complete
    return (complete.timestamp() if complete is not None else math.inf, trial.number)


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def trial_line(
    trial: optuna.trial.FrozenTrial, unpruned: dict[str, Any], *, done: int, total: int, elapsed_s: float
) -> str:
    """One finished trial: how many of ``total`` are done, its number, kind, validation drop,
    speedup and the time since the search started.

    Example: ``[ 5/40 0:48] trial 12 search    drop 0.37  4.66x faster``
    """
    row = trial_row(trial, unpruned)
    width = len(str(total))
    head = f"[{done:>{width}}/{total} {_elapsed(elapsed_s)}] trial {trial.number:<3} {row.kind:<15}"
    if row.state in ("ok", "infeasible"):
        speed = f"{row.speedup:.2f}x faster" if math.isfinite(row.speedup) else "not timed"
        tail = "" if row.state == "ok" else "  (misses a constraint)"
        return f"{head} val drop {row.val_drop:.2f}  {speed}{tail}"
    if row.state == "screened":
        return f"{head} screened out (cheap fine-tune)"
    return f"{head} {row.state}" + (f": {row.note[:60]}" if row.note else "")


def _best_feasible_text(trials: list[optuna.trial.FrozenTrial]) -> str:
    ok = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and is_feasible(t)]
    if not ok:
        return "no feasible trial yet"
    best = max(ok, key=lambda t: float(t.user_attrs.get("speedup", 0.0)))
    return (
        f"best feasible: #{best.number} {best.user_attrs.get('speedup', 0):.2f}x faster, "
        f"{best.user_attrs.get('compression', 0):.1f}x smaller, drop {best.user_attrs.get('accuracy_drop', 0):.2f}"
    )
