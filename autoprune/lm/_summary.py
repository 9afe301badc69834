"""What an allocation search ends with (and ``autoprune trials`` prints for such a study):
per sparsity level the references and the trial chosen on validation, in 100 columns, then
the picks with the commands that apply them."""

from __future__ import annotations

import math
from typing import Any

import optuna

from autoprune._stored import unpruned_metrics
from autoprune.config import DEFAULT_STORAGE, mask_url

__all__ = [
    "is_lm_study",
    "is_structure_study",
    "lm_rows",
    "lm_summary_lines",
    "lm_trial_lines",
    "structure_summary_lines",
    "structure_trial_lines",
]


def is_lm_study(study: optuna.Study) -> bool:
    """A study written by the allocation search (a metric that is better lower)."""
    metric = study.user_attrs.get("metric")
    return isinstance(metric, dict) and metric.get("higher_is_better") is False


def _complete(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if "schedule" in t.user_attrs
    ]


def _speedup(trial: optuna.trial.FrozenTrial, study: optuna.Study) -> dict[str, float] | None:
    if "speedup" in trial.user_attrs:
        return {k: float(trial.user_attrs[k]) for k in ("speedup", "speedup_low", "speedup_high")}
    stored = study.user_attrs.get("speedups", {}).get(str(trial.number))
    return dict(stored) if stored else None


def lm_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Per level: uniform, OWL and the best trial on validation (may be one of them)."""
    rows = []
    trials = _complete(study)
    for level in study.user_attrs.get("config", {}).get("levels", []):
        at = [t for t in trials if t.user_attrs.get("level") == level]
        if not at:
            continue
        feasible = [t for t in at if t.user_attrs.get("feasible", True)]
        best = min(feasible or at, key=lambda t: (t.user_attrs["perplexity"], t.number))
        picked = {}
        for role in ("uniform", "owl"):
            ref = next((t for t in at if t.user_attrs.get("role") == role), None)
            if ref is not None:
                picked[ref.number] = role
        picked[best.number] = "best on val" + (f" ({picked[best.number]})" if best.number in picked else "")
        for number, kind in picked.items():
            t = next(t for t in at if t.number == number)
            rows.append({"trial": t, "kind": kind, "level": level, "speedup": _speedup(t, study)})
    return rows


def _fmt_ppl(value: Any, increase: Any) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return f"{value:7.3f} {increase:+6.1%}"


def lm_summary_lines(study: optuna.Study, storage: str) -> list[str]:
    if is_structure_study(study):
        return structure_summary_lines(study, storage)
    dense = unpruned_metrics(study)
    metric = study.user_attrs.get("metric", {})
    config = study.user_attrs.get("config", {})
    done = _complete(study)
    lines = [
        f"dense model: validation perplexity {dense.get('perplexity', math.nan):.3f}, "
        f"test {dense.get('test_perplexity', math.nan):.3f}",
    ]
    if metric.get("notice"):
        lines.append(f"({metric['notice']})")
    lines.append(
        f"{len(done)} trials, criterion {config.get('criterion')}, one amount per {config.get('granularity')}; "
        "the search saw validation only"
    )
    header = f"{'trial':>5}  {'kind':<18} {'sparsity':>8}  {'val ppl (+%)':>15}  {'test ppl (+%)':>15}  {'speedup':>17}"
    lines += ["", header]
    rows = lm_rows(study)
    for row in rows:
        t = row["trial"]
        a = t.user_attrs
        s = row["speedup"]
        speed = f"{s['speedup']:.2f}x [{s['speedup_low']:.2f}, {s['speedup_high']:.2f}]" if s else "not timed"
        lines.append(
            f"{t.number:>5}  {row['kind']:<18} {a['sparsity']:>8.1%}  "
            f"{_fmt_ppl(a['perplexity'], a['perplexity_increase']):>15}  "
            f"{_fmt_ppl(a.get('test_perplexity'), a.get('test_perplexity_increase', math.nan)):>15}  {speed:>17}"
        )
    timed = [r["speedup"] for r in rows if r["speedup"]]
    if timed and all(r["speedup_low"] <= 1.0 <= r["speedup_high"] or r["speedup_high"] < 1.0 for r in timed):
        lines.append(
            "speedup: sparse weights run at dense cost here (every paired timing includes 1.0x); they buy size"
        )
    best = [r for r in rows if r["kind"].startswith("best")]
    shown = [r for r in best if r["trial"].user_attrs.get("test_perplexity_increase", 0) > r["trial"].user_attrs[
        "perplexity_increase"]]  # fmt: skip
    if shown:
        lines.append(
            "selection effect: the best of many trials on validation does worse on test; expect the test number"
        )
    where = "" if storage == DEFAULT_STORAGE or not storage else f" --storage {mask_url(storage)}"
    lines.append("")
    lines.append("apply one (Python: ap.load_study(study, storage).pick(trial=N).apply()):")
    for r in best:
        n = r["trial"].number
        lines.append(f"  autoprune apply --study {study.study_name}{where} --trial {n} --out pruned-{n}")
    return lines


def lm_trial_lines(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """``autoprune trials`` of a language-model study: one line per trial, within 100 columns."""
    if any("params_removed" in t.user_attrs for t in trials):
        return structure_trial_lines(trials)
    lines = [
        f"{'trial':>5}  {'kind':<8} {'state':<8} {'sparsity':>8}  {'val ppl (+%)':>15}  {'test ppl (+%)':>15}  note"
    ]
    for t in sorted(trials, key=lambda t: t.number):
        a = t.user_attrs
        kind = a.get("role", "search")
        if t.state != optuna.trial.TrialState.COMPLETE:
            lines.append(
                f"{t.number:>5}  {kind:<8} {t.state.name:<8} {'':>8}  {'':>15}  {'':>15}  {a.get('error', '')}"[:100]
            )
            continue
        note = f"level switch of {a['neighbour_of']}" if "neighbour_of" in t.user_attrs else ""
        if not a.get("feasible", True):
            note = (note + "; " if note else "") + "over the limit"
        lines.append(
            f"{t.number:>5}  {kind:<8} {'COMPLETE':<8} {a['sparsity']:>8.1%}  "
            f"{_fmt_ppl(a['perplexity'], a['perplexity_increase']):>15}  "
            f"{_fmt_ppl(a.get('test_perplexity'), a.get('test_perplexity_increase', math.nan)):>15}  {note}"[:100]
        )
    return lines


# ---------------------------------------------------------------------------- structural search
def is_structure_study(study: optuna.Study) -> bool:
    """A study written by the structural search (heads, MLP channels, blocks)."""
    return study.user_attrs.get("config", {}).get("kind") == "structure"


def _front(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The strict Pareto front on (validation perplexity, speedup): no other trial is at least
    as good on both and better on one."""

    def dominated(t: optuna.trial.FrozenTrial) -> bool:
        p, s = t.user_attrs["perplexity"], t.user_attrs["speedup"]
        return any(
            o.user_attrs["perplexity"] <= p and o.user_attrs["speedup"] >= s
            and (o.user_attrs["perplexity"] < p or o.user_attrs["speedup"] > s)
            for o in trials
        )  # fmt: skip

    return sorted((t for t in trials if not dominated(t)), key=lambda t: t.user_attrs["speedup"])


def _structure_row(t: optuna.trial.FrozenTrial) -> str:
    a = t.user_attrs
    kind = a.get("role", "search") if a.get("role", "search") != "search" else a.get("kind", "")
    test = _fmt_ppl(a.get("test_perplexity"), a.get("test_perplexity_increase", math.nan))
    return (
        f"{t.number:>5}  {kind[:17]:<17} {a['params_removed']:>7.1%}  {_fmt_ppl(a['perplexity'], a['perplexity_increase']):>15}"
        f"  {test:>15}  {a['prefill_speedup']:>6.2f}x  {a['decode_speedup']:>6.2f}x"
    )


_STRUCTURE_HEADER = f"{'trial':>5}  {'kind':<17} {'params-':>8} {'val ppl (+%)':>15}  {'test ppl (+%)':>15}  {'prefill':>7}  {'decode':>7}"


def structure_summary_lines(study: optuna.Study, storage: str) -> list[str]:
    """The structural search's ending: its front and up to two picks, within 100 columns."""
    dense = unpruned_metrics(study)
    metric = study.user_attrs.get("metric", {})
    config = study.user_attrs.get("config", {})
    done = _complete(study)
    regime = config.get("latency", "prefill")
    lines = [
        f"dense model: validation perplexity {dense.get('perplexity', math.nan):.3f}, "
        f"test {dense.get('test_perplexity', math.nan):.3f}",
    ]
    if metric.get("notice"):
        lines.append(f"({metric['notice']})")
    failed = sum(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    lines.append(
        f"{len(done)} trials ({failed} failed), {config.get('fine_tune_steps')} recovery steps each"
        f"{' (distillation)' if config.get('distill') else ''}; objective: {regime} speedup"
    )
    lines.append("the search saw validation only; test perplexity is for you")
    lines.append("speedups are paired against the dense model: prefill = a batch of full windows, decode = tokens")
    lines.append("generated one at a time with the KV cache; params- = share of parameters removed")
    if not done:
        return lines
    front = _front(done)
    lines += ["", "Pareto front (validation perplexity, " + regime + " speedup):", _STRUCTURE_HEADER]
    lines += [_structure_row(t) for t in front]
    limit = config.get("max_metric_increase")
    bound = 0.10 if limit is None else float(limit)
    ok = [t for t in done if t.user_attrs.get("feasible", True) and t.user_attrs["perplexity_increase"] <= bound]
    picks: list[tuple[str, optuna.trial.FrozenTrial]] = []
    if ok:
        fastest = max(ok, key=lambda t: (t.user_attrs["speedup"], -t.user_attrs["perplexity"], -t.number))
        picks.append((f"fastest ({regime}) with validation perplexity at most {bound:+.0%}", fastest))
    best = min(done, key=lambda t: (t.user_attrs["perplexity"], t.number))
    if not picks or best.number != picks[0][1].number:
        picks.append(("lowest validation perplexity", best))
    lines.append("")
    for why, t in picks:
        a = t.user_attrs
        lines.append(f"pick: trial {t.number}, {why}:")
        lines.append(f"  {regime} {a[f'{regime}_speedup']:.2f}x [{a[f'{regime}_speedup_low']:.2f}, "
                     f"{a[f'{regime}_speedup_high']:.2f}], val perplexity {a['perplexity']:.3f}, "
                     f"test perplexity {a.get('test_perplexity', math.nan):.3f}")  # fmt: skip
    if any(t.user_attrs.get("test_perplexity_increase", 0) > t.user_attrs["perplexity_increase"] for _, t in picks):
        lines.append("selection effect: a trial picked on validation does worse on test; expect the test number")
    where = "" if storage == DEFAULT_STORAGE or not storage else f" --storage {mask_url(storage)}"
    lines += ["", "apply one (Python: ap.load_study(study, storage).pick(trial=N).apply()):"]
    for _, t in picks:
        n = t.number
        lines.append(f"  autoprune apply --study {study.study_name}{where} --trial {n} --out pruned-{n}")
    return lines


def structure_trial_lines(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    """``autoprune trials`` of a structural study: one line per trial, within 100 columns."""
    lines = [_STRUCTURE_HEADER]
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != optuna.trial.TrialState.COMPLETE or "schedule" not in t.user_attrs:
            lines.append(f"{t.number:>5}  {t.state.name:<17} {t.user_attrs.get('error', '')}"[:100])
            continue
        lines.append(_structure_row(t))
    return lines
