"""The report's figures for a language-model (perplexity) study: perplexity against
sparsity for every trial, and the per-unit allocation of the references and of the trial
chosen on validation at each level. Compute-then-draw, as the other figures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import optuna

from autoprune._stored import unpruned_metrics
from autoprune.lm._summary import lm_rows

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__ = ["AllocationInfo", "_get_allocation_info", "_get_allocation_plot", "_get_units_plot", "structure_figures"]


class AllocationInfo(NamedTuple):
    dense_val: float
    dense_test: float | None
    points: dict[str, list[dict[str, Any]]]  # role -> trials (number, sparsity, val, test, level)
    chosen: list[dict[str, Any]]  # per level: the trial chosen on validation, with its per-unit amounts
    references: list[dict[str, Any]]  # uniform and OWL trials, with their amounts
    units: list[str]
    note: str | None


def _get_allocation_info(study: optuna.Study) -> AllocationInfo:
    dense_metrics = unpruned_metrics(study)
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
        float(dense_metrics.get("perplexity", float("nan"))), dense_metrics.get("test_perplexity"), points, chosen, references,
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


# ---------------------------------------------------------------------------- structural search
_KIND_STYLE = {"structured": ("#1f77b4", "circle"), "depth": ("#2ca02c", "square"), "unstructured": ("black", "x")}


def _structure_points(study: optuna.Study) -> list[dict[str, Any]]:
    points = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = t.user_attrs
        if "params_removed" not in a:
            continue
        points.append({"number": t.number, "kind": a["kind"], "role": a.get("role", "search"), "val": a["perplexity"],
                       "test": a.get("test_perplexity"), "params_removed": a["params_removed"],
                       **{k: a[k] for k in a if k.startswith(("prefill_speedup", "decode_speedup"))},
                       "heads": a.get("heads_removed", {}), "mlp": a.get("mlp_removed", {}),
                       "blocks": a.get("blocks_removed", [])})  # fmt: skip
    return points


def _get_structure_speed_plot(points: list[dict[str, Any]], regime: str, dense_val: float) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure()
    for kind, (colour, symbol) in _KIND_STYLE.items():
        pts = [p for p in points if p["kind"] == kind]
        if not pts:
            continue
        x = [p[f"{regime}_speedup"] for p in pts]
        fig.add_trace(go.Scatter(
            x=x, y=[p["val"] for p in pts], mode="markers", name=kind,
            marker={"color": colour, "symbol": symbol, "size": 9},
            error_x={"type": "data", "symmetric": False,
                     "array": [p[f"{regime}_speedup_high"] - v for p, v in zip(pts, x, strict=True)],
                     "arrayminus": [v - p[f"{regime}_speedup_low"] for p, v in zip(pts, x, strict=True)]},
            text=[f"trial {p['number']} ({p['role']}): params -{p['params_removed']:.1%}, test {p['test']}" for p in pts],
            hovertemplate="%{text}<br>speedup %{x:.2f}x, val ppl %{y:.3f}<extra></extra>",
        ))  # fmt: skip
    fig.add_hline(y=dense_val, line_dash="dot", annotation_text="dense")
    fig.add_vline(x=1.0, line_dash="dot")
    fig.update_layout(xaxis_title=f"{regime} speedup over the dense model (paired, 95% interval)",
                      yaxis_title="validation perplexity (lower is better)", height=460)  # fmt: skip
    return fig


def _get_structure_blocks_plot(points: list[dict[str, Any]], blocks: int) -> go.Figure:
    """Per block: share of MLP channels and query heads removed (a removed block counts 1)
    for the trials on the prefill and decode fronts."""
    import plotly.graph_objects as go

    fig = go.Figure()
    index = list(range(blocks))
    for p in sorted(points, key=lambda p: p["number"])[:12]:
        removed = set(p["blocks"])
        mlp = [1.0 if i in removed else float(p["mlp"].get(str(i), 0.0)) for i in index]
        heads = [1.0 if i in removed else float(p["heads"].get(str(i), 0.0)) for i in index]
        label = f"trial {p['number']} ({p['role']})"
        fig.add_trace(go.Scatter(x=index, y=mlp, mode="lines+markers", name=f"{label}: MLP"))
        fig.add_trace(go.Scatter(x=index, y=heads, mode="lines+markers", name=f"{label}: heads",
                                 line={"dash": "dot"}, visible="legendonly"))  # fmt: skip
    fig.update_layout(xaxis_title="decoder block", yaxis_title="share removed (1 = block removed)", height=420)
    return fig


def structure_figures(study: optuna.Study) -> list[tuple[str, str, str, go.Figure | None, str | None]]:
    """(id, title, intro, figure, note) of the sections of a structural study."""
    points = _structure_points(study)
    note = None if points else "no complete trial yet"
    dense = float(unpruned_metrics(study).get("perplexity", float("nan")))
    regime = study.user_attrs.get("config", {}).get("latency", "prefill")
    out = []
    for r in (regime, "decode" if regime == "prefill" else "prefill"):
        which = "the search's objective" if r == regime else "measured too, not searched on"
        intro = (f"Every trial's validation perplexity against its {r} speedup ({which}): blue circles cut heads "
                 "and MLP channels, green squares remove blocks, black crosses are unstructured (Wanda): sparse "
                 "weights run at dense cost here.")  # fmt: skip
        out.append((f"speed-{r}", f"Perplexity against {r} speedup", intro,
                    _get_structure_speed_plot(points, r, dense) if points else None, note))  # fmt: skip
    blocks = len(study.user_attrs.get("blocks", []))
    out.append(("blocks", "Where each trial cuts", "Share of each block's MLP channels removed (heads: click the "
                "legend), a removed block at 1; the first 12 trials.",
                _get_structure_blocks_plot(points, blocks) if points else None, note))  # fmt: skip
    return out
