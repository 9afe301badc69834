"""Drawing: each ``_get_..._plot(info)`` turns one NamedTuple of :mod:`._data` into a figure."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from autoprune.report._data import (
    _HeatmapInfo,
    _HypervolumeInfo,
    _ImportanceInfo,
    _ParetoInfo,
    _SensitivityInfo,
)
from autoprune.report._first_screen import _FramedPoints, _FrontInfo
from autoprune.report._pattern import _PatternInfo

if TYPE_CHECKING:
    import plotly.graph_objects as go

__all__: list[str] = []

_TEMPLATE = "plotly_white"
# Group -> (legend name, colour, 2D symbol, 3D symbol, size, opacity).
_STYLE: dict[str, tuple[str, str, str, str, int, float]] = {
    "feasible": ("feasible", "#7fa7d0", "circle", "circle", 6, 0.55),
    "infeasible": ("infeasible", "#b0b0b0", "x", "x", 6, 0.6),
    "pareto": ("Pareto front", "#d62728", "circle", "circle", 10, 1.0),
    # Open symbols: a reference trial that is also on the front shows its red dot inside.
    "reference": ("reference (unpruned, uniform, global)", "#111111", "star-open", "diamond-open", 16, 1.0),
}
_MAX_HEATMAP_LABELLED_CELLS = 3000
_MAX_IMPORTANCE_PARAMS = 15
# Method, cell label, colour scale (light but visible at small amounts, dark at large).
_HEATMAP_SCALES = (
    ("structured", "S", [[0.0, "#c6dbef"], [1.0, "#08306b"]]),
    ("unstructured", "U", [[0.0, "#fdd0a2"], [1.0, "#7f2704"]]),
)


def _axis_title(name: str, direction: str) -> str:
    return f"{name} ({'higher' if direction == 'maximize' else 'lower'} is better)"


def _scatter_2d(info: _ParetoInfo, i: int, j: int, *, showlegend: bool) -> list[go.Scatter]:
    import plotly.graph_objects as go

    traces = []
    for key, (label, colour, symbol, _, size, opacity) in _STYLE.items():
        group = info.groups[key]
        if not group.numbers:
            continue
        values = np.asarray(group.values, dtype=float).reshape(-1, len(info.objective_names))
        x, y, hovers = values[:, i], values[:, j], group.hovers
        errors = np.asarray(group.errors, dtype=float).reshape(-1, len(info.objective_names), 2)
        ex, ey = errors[:, i], errors[:, j]
        mode = "markers"
        if key == "pareto" and len(info.objective_names) == 2:
            # Two objectives: the front is a staircase, so join its points in x order.
            order = np.argsort(x, kind="stable")
            x, y, ex, ey, hovers = x[order], y[order], ex[order], ey[order], [hovers[k] for k in order]
            mode = "lines+markers"
        # The front carries what its numbers are sure of: accuracy +- the standard error of
        # its drop, latency over the speedup's 95% interval.
        bars = key == "pareto"
        traces.append(
            go.Scatter(
                x=x,
                y=y,
                mode=mode,
                name=label,
                legendgroup=key,
                showlegend=showlegend,
                marker={
                    "color": colour,
                    "symbol": symbol,
                    "size": size,
                    "opacity": opacity,
                    "line": {"width": 2 if key == "reference" else 0, "color": colour},
                },
                line={"color": colour, "width": 1, "shape": "linear"},
                error_x=_error_bars(ex, colour, bars),
                error_y=_error_bars(ey, colour, bars),
                text=hovers,
                hovertemplate="%{text}<extra></extra>",
            )
        )
    return traces


def _error_bars(errors: np.ndarray, colour: str, visible: bool) -> dict[str, Any]:
    """Plotly error bars from rows of (below, above); none when all are 0 or not wanted."""
    if not visible or not errors.size or not np.any(errors > 0):
        return {"visible": False}
    return {
        "type": "data",
        "symmetric": False,
        "array": errors[:, 1].tolist(),
        "arrayminus": errors[:, 0].tolist(),
        "color": colour,
        "thickness": 1,
        "width": 0,
        "visible": True,
    }


def _get_pareto_2d_plot(info: _ParetoInfo) -> go.Figure:
    """Two objectives: one plot. More: the pairwise views side by side."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names, dirs = info.objective_names, info.directions
    if len(info.pairs) == 1:
        i, j = info.pairs[0]
        fig = go.Figure(_scatter_2d(info, i, j, showlegend=True))
        fig.update_layout(xaxis_title=_axis_title(names[i], dirs[i]), yaxis_title=_axis_title(names[j], dirs[j]))
        fig.update_layout(title="Pareto front", height=520)
    else:
        fig = make_subplots(rows=1, cols=len(info.pairs), horizontal_spacing=0.1)
        for col, (i, j) in enumerate(info.pairs, start=1):
            for trace in _scatter_2d(info, i, j, showlegend=col == 1):
                fig.add_trace(trace, row=1, col=col)
            fig.update_xaxes(title_text=_axis_title(names[i], dirs[i]), row=1, col=col)
            fig.update_yaxes(title_text=_axis_title(names[j], dirs[j]), row=1, col=col)
        fig.update_layout(title="Pareto front: pairwise views", height=460)
    fig.update_layout(template=_TEMPLATE, legend={"orientation": "h", "y": -0.18}, hovermode="closest")
    return fig


_PICK_COLOUR = "#111111"
_CONSTRAINT_COLOUR = "#e0a800"


def _framed_trace(points: _FramedPoints, key: str, *, bars: bool, **style: Any) -> go.Scatter:
    import plotly.graph_objects as go

    ex = np.asarray(points.x_err, dtype=float).reshape(-1, 2)
    ey = np.asarray(points.y_err, dtype=float).reshape(-1, 2)
    return go.Scatter(
        x=points.x,
        y=points.y,
        customdata=points.numbers,
        text=points.hovers,
        hovertemplate="%{text}<extra></extra>",
        legendgroup=key,
        error_x=_error_bars(ex, style.get("marker", {}).get("color", "#888"), bars),
        error_y=_error_bars(ey, style.get("marker", {}).get("color", "#888"), bars),
        **style,
    )


def _get_front_plot(info: _FrontInfo) -> go.Figure:
    """The first screen: validation drop against speedup (or latency), the strict front joined,
    the picks ringed and labelled, the constraints dashed; the axes fixed to the frame."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for key in ("infeasible", "feasible", "reference"):
        points = info.others.get(key)
        if points is None or not points.numbers:
            continue
        label, colour, symbol, _, size, opacity = _STYLE[key]
        fig.add_trace(
            _framed_trace(
                points,
                key,
                bars=False,
                mode="markers",
                name=label,
                marker={
                    "color": colour,
                    "symbol": symbol,
                    "size": size,
                    "opacity": opacity,
                    "line": {"width": 2 if key == "reference" else 0, "color": colour},
                },
            )
        )
    label, colour, symbol, _, size, _ = _STYLE["pareto"]
    fig.add_trace(
        _framed_trace(
            info.front,
            "pareto",
            bars=True,
            mode="lines+markers",
            name="Pareto front (strict)",
            marker={"color": colour, "symbol": symbol, "size": size - 2},
            line={"color": colour, "width": 1, "shape": "linear"},
        )
    )
    if info.picks.numbers:
        fig.add_trace(
            go.Scatter(
                x=info.picks.x,
                y=info.picks.y,
                customdata=info.picks.numbers,
                mode="markers+text",
                name="recommended",
                legendgroup="recommended",
                text=[f"{lab} #{n}" for lab, n in zip(info.pick_labels, info.picks.numbers, strict=True)],
                textposition="top center",
                textfont={"size": 13, "color": _PICK_COLOUR},
                hovertext=info.picks.hovers,
                hovertemplate="%{hovertext}<extra></extra>",
                marker={"symbol": "circle-open", "size": 20, "color": _PICK_COLOUR, "line": {"width": 2.5}},
            )
        )
    if info.y_limit is not None:
        fig.add_hline(
            y=info.y_limit,
            line={"dash": "dash", "color": _CONSTRAINT_COLOUR, "width": 2},
            annotation_text=f"max drop {info.y_limit:g}",
            annotation_position="top left",
        )
    if info.x_limit is not None:
        fig.add_vline(
            x=info.x_limit,
            line={"dash": "dash", "color": _CONSTRAINT_COLOUR, "width": 2},
            annotation_text="latency limit" if info.x_name != "compression" else "size limit",
            annotation_position="top right",
        )
    fig.update_layout(
        # The clip note stands where a title would: the section's heading names the figure.
        title={"text": f"<sup>{info.clip_note}</sup>" if info.clip_note else "", "x": 0.01, "y": 0.99},
        xaxis={"title": info.x_title, "range": list(info.x_range), "autorange": False},
        yaxis={"title": "validation drop (lower is better)", "range": list(info.y_range), "autorange": False},
        template=_TEMPLATE,
        height=440,
        legend={"orientation": "h", "x": 1.0, "xanchor": "right", "y": 1.0, "yanchor": "bottom"},
        hovermode="closest",
        margin={"t": 60, "b": 50},
    )
    return fig


def _get_pareto_3d_plot(info: _ParetoInfo) -> go.Figure:
    import plotly.graph_objects as go

    names, dirs = info.objective_names, info.directions
    fig = go.Figure()
    for key, (label, colour, _, symbol, size, opacity) in _STYLE.items():
        group = info.groups[key]
        if not group.numbers:
            continue
        values = np.asarray(group.values, dtype=float).reshape(-1, len(names))
        fig.add_trace(
            go.Scatter3d(
                x=values[:, 0],
                y=values[:, 1],
                z=values[:, 2],
                mode="markers",
                name=label,
                marker={"color": colour, "symbol": symbol, "size": max(round(size * 0.7), 4), "opacity": opacity},
                text=group.hovers,
                hovertemplate="%{text}<extra></extra>",
            )
        )
    fig.update_layout(
        title="Pareto front (3D)",
        template=_TEMPLATE,
        height=620,
        scene={
            "xaxis_title": _axis_title(names[0], dirs[0]),
            "yaxis_title": _axis_title(names[1], dirs[1]),
            "zaxis_title": _axis_title(names[2], dirs[2]),
        },
        legend={"orientation": "h"},
        margin={"l": 10, "r": 10, "b": 10},
    )
    return fig


def _get_hypervolume_plot(info: _HypervolumeInfo) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Scatter(
            x=info.trial_numbers,
            y=info.values,
            mode="lines+markers",
            marker={"size": 4},
            line={"shape": "hv"},
            hovertemplate="trial %{x}<br>hypervolume %{y:.4g}<extra></extra>",
        )
    )
    ref = ", ".join(f"{v:.4g}" for v in info.reference_point)
    fig.update_layout(
        title=f"Hypervolume history<br><sup>feasible trials so far; reference point ({ref})</sup>",
        xaxis_title="trial",
        yaxis_title="hypervolume",
        template=_TEMPLATE,
        height=380,
    )
    return fig


def _get_heatmap_plot(info: _HeatmapInfo) -> go.Figure:
    """Layers x Pareto trials; structured amounts in blue, unstructured in orange."""
    import plotly.graph_objects as go

    x = [f"#{n}" for n in info.trial_numbers]
    methods = np.asarray(info.methods, dtype=object).reshape(len(info.layers), len(x))
    amounts = np.asarray(info.amounts, dtype=object).reshape(len(info.layers), len(x))
    label = methods.size <= _MAX_HEATMAP_LABELLED_CELLS
    fig = go.Figure()
    for i, (method, tag, scale) in enumerate(_HEATMAP_SCALES):
        mask = methods == method
        z = [
            [a if m else None for a, m in zip(row_a, row_m, strict=True)]
            for row_a, row_m in zip(amounts, mask, strict=True)
        ]
        fig.add_trace(
            go.Heatmap(
                x=x,
                y=info.layers,
                z=z,
                text=np.where(mask, tag, "").tolist(),
                texttemplate="%{text}" if label else None,
                colorscale=scale,
                zmin=0.0,
                zmax=1.0,
                name=method,
                colorbar={
                    "title": {"text": tag, "side": "top"},
                    "x": 1.02 + 0.09 * i,
                    "len": 0.9,
                    "thickness": 14,
                    "tickformat": ".0%",
                },
                hovertemplate=f"trial %{{x}}<br>%{{y}}<br>{method} %{{z:.0%}}<extra></extra>",
                xgap=1,
                ygap=1,
            )
        )
    fig.update_layout(
        title="Per-layer amounts (S structured, U unstructured, blank not pruned)",
        xaxis={"title": "Pareto trial (ordered by the first objective)", "type": "category"},
        yaxis={"title": "layer", "autorange": "reversed", "type": "category"},
        template=_TEMPLATE,
        height=max(320, 24 * len(info.layers) + 180),
        margin={"r": 160},
    )
    return fig


# Magnitude scale: exact zeros red, small weights pale, large weights dark blue.
_PATTERN_SCALE = [[0.0, "#d62728"], [1e-6, "#f7fbff"], [0.5, "#6baed6"], [1.0, "#08306b"]]


def _get_pattern_plot(info: _PatternInfo) -> go.Figure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    assert info.before is not None and info.after is not None
    before = np.abs(info.before).astype(np.float32)
    after = np.abs(info.after).astype(np.float32)
    zmax = float(np.nanmax(before)) if before.size and np.isfinite(before).any() else 1.0
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("before", "after (grey = removed, red = zeroed)"),
        horizontal_spacing=0.06,
    )
    common: dict[str, Any] = {"colorscale": _PATTERN_SCALE, "zmin": 0.0, "zmax": zmax or 1.0}
    hover = "out %{y}, in %{x}<br>|w| = %{z:.3g}<extra></extra>"
    fig.add_trace(go.Heatmap(z=before, showscale=False, hovertemplate=hover, **common), row=1, col=1)
    fig.add_trace(
        go.Heatmap(z=after, colorbar={"title": {"text": "|weight|"}}, hovertemplate=hover, **common), row=1, col=2
    )
    fig.update_yaxes(autorange="reversed", title_text="output channel", row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=2)
    fig.update_xaxes(title_text="input x kernel position", showgrid=False, zeroline=False)
    fig.update_yaxes(showgrid=False, zeroline=False)
    shape = "x".join(map(str, info.shape))
    crop = (
        ""
        if info.shown == (info.shape[0], int(np.prod(info.shape[1:])))
        else f", first {info.shown[0]}x{info.shown[1]} shown"
    )
    removed = []
    if info.removed_rows:
        removed.append(f"{info.removed_rows} output channels removed")
    if info.removed_cols:
        removed.append(f"{info.removed_cols} input channels removed")
    removed.append(f"{info.zeros:,} weights zeroed")
    fig.update_layout(
        title=(
            f"Pruning pattern of {info.layer}, trial {info.trial_number}: {info.method} {info.amount:.0%}"
            f"<br><sup>weight {shape}{crop}; {', '.join(removed)}</sup>"
        ),
        template=_TEMPLATE,
        plot_bgcolor="#cfcfcf",
        height=520,
    )
    return fig


def _get_importance_plot(info: _ImportanceInfo) -> go.Figure:
    """One group of bars per parameter (the most important first), one bar per objective."""
    import plotly.graph_objects as go

    params = {p for importances in info.importances for p in importances}
    top = sorted(params, key=lambda p: (-max(imp.get(p, 0.0) for imp in info.importances), p))
    top = top[:_MAX_IMPORTANCE_PARAMS][::-1]  # plotly draws the first category at the bottom
    fig = go.Figure()
    for name, importances in zip(info.objective_names, info.importances, strict=True):
        fig.add_trace(
            go.Bar(
                x=[importances.get(p, 0.0) for p in top],
                y=top,
                orientation="h",
                name=name,
                hovertemplate=f"%{{y}}<br>{name}: %{{x:.3f}}<extra></extra>",
            )
        )
    fig.update_layout(
        title=f"Parameter importances ({info.n_trials} complete trials)",
        xaxis={"title": "importance (per objective, sums to 1)", "rangemode": "tozero"},
        barmode="group",
        template=_TEMPLATE,
        height=max(360, 14 * len(top) * len(info.importances) + 160),
        legend={"orientation": "h", "y": -0.15},
    )
    return fig


def _get_sensitivity_plot(info: _SensitivityInfo) -> go.Figure:
    """One line per unit: validation accuracy against the amount it alone is pruned by."""
    import plotly.graph_objects as go

    fig = go.Figure()
    speedups: list[list[float] | None] = list(info.speedups) if info.speedups else [None] * len(info.units)
    for unit, amounts, scores, timed in zip(info.units, info.amounts, info.scores, speedups, strict=True):
        faster = "<br>%{customdata:.2f}x as fast as unpruned" if timed is not None else ""
        fig.add_trace(
            go.Scatter(
                x=[100 * a for a in amounts],
                y=scores,
                customdata=timed,
                mode="lines+markers",
                name=unit,
                hovertemplate=f"{unit}<br>%{{x:.0f}}% pruned: %{{y:.2f}}{faster}<extra></extra>",
            )
        )
    fig.update_layout(
        title="Sensitivity<br><sup>each unit pruned alone, BatchNorm re-estimated, no fine-tune</sup>",
        xaxis_title="structured amount (%)",
        yaxis_title="validation accuracy",
        template=_TEMPLATE,
        height=420,
    )
    return fig
