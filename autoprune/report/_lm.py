"""The report's figures for a language-model (perplexity) study: perplexity against
sparsity for every trial, and the per-unit allocation of the references and of the trial
chosen on validation at each level. Compute-then-draw, as the other figures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import optuna

from autoprune.lm._summary import lm_rows

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["AllocationInfo", "_get_allocation_info", "_get_allocation_plot", "_get_units_plot"]


class AllocationInfo(NamedTuple):
    dense_val: float
    dense_test: float | None
    points: dict[str, list[dict[str, Any]]]  # role -> trials (number, sparsity, val, test, level)
    chosen: list[dict[str, Any]]  # per level: the trial chosen on validation, with its per-unit amounts
    references: list[dict[str, Any]]  # uniform and OWL trials, with their amounts
    units: list[str]
    note: str | None


def _get_allocation_info(study: optuna.Study) -> AllocationInfo:
    baseline = study.user_attrs.get("baseline", {})
    points: dict[str, list[dict[str, Any]]] = {}
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if "perplexity" not in a:
            continue
        points.setdefault(a.get("role", "search"), []).append({
            "number": t.number, "sparsity": a["sparsity"], "val": a["perplexity"], "test": a.get("test_perplexity"),
            "level": a.get("level"), "summary": a.get("schedule_summary", ""),
        })  # fmt: skip
    rows = lm_rows(study)
    chosen: list[dict[str, Any]] = []
    references: list[dict[str, Any]] = []
    for row in rows:
        t = row["trial"]
        entry = {"number": t.number, "level": row["level"], "kind": row["kind"], "amounts": t.user_attrs["amounts"],
                 "val": t.user_attrs["perplexity"]}  # fmt: skip
        (chosen if row["kind"].startswith("best") else references).append(entry)
    units = list(study.user_attrs.get("units", {}))
    note = None if points else "no complete trial yet"
    return AllocationInfo(
        float(baseline.get("perplexity", float("nan"))), baseline.get("test_perplexity"), points, chosen, references,
        units, note,
    )  # fmt: skip


_COLOURS = {"uniform": "black", "owl": "#e07b00", "search": "#1f77b4"}


def _get_allocation_plot(info: AllocationInfo) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for role, pts in info.points.items():
        fig.add_trace(go.Scatter(
            x=[p["sparsity"] for p in pts], y=[p["val"] for p in pts], mode="markers", name=role,
            marker={"color": _COLOURS.get(role, "grey"), "size": 9 if role != "search" else 6,
                    "symbol": "square" if role == "uniform" else "diamond" if role == "owl" else "circle"},
            text=[f"trial {p['number']}<br>val {p['val']:.3f}, test {p['test'] if p['test'] is None else round(p['test'], 3)}"
                  f"<br>{p['summary']}" for p in pts],
            hoverinfo="text",
        ))  # fmt: skip
    if info.chosen:
        val = {p["number"]: p for pts in info.points.values() for p in pts}
        fig.add_trace(go.Scatter(
            x=[val[c["number"]]["sparsity"] for c in info.chosen], y=[c["val"] for c in info.chosen],
            mode="markers", name="chosen on validation", marker={"color": "red", "size": 14, "symbol": "star"},
            text=[f"trial {c['number']} ({c['kind']})" for c in info.chosen], hoverinfo="text",
        ))  # fmt: skip
    fig.add_hline(y=info.dense_val, line_dash="dot", annotation_text=f"dense {info.dense_val:.3f}")
    fig.update_layout(xaxis_title="sparsity of the linear layers", yaxis_title="validation perplexity (lower is better)",
                      height=480)  # fmt: skip
    return fig


def _get_units_plot(info: AllocationInfo) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for entry in [*info.references, *info.chosen]:
        fig.add_trace(go.Scatter(
            x=info.units, y=[entry["amounts"].get(u) for u in info.units], mode="lines+markers",
            name=f"{entry['kind']} {entry['level']:.0%} (trial {entry['number']}, val {entry['val']:.3f})",
            line={"dash": "solid" if entry["kind"].startswith("best") else "dot"},
        ))  # fmt: skip
    fig.update_layout(xaxis_title="unit", yaxis_title="sparsity", height=420)
    return fig
