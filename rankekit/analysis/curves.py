"""Plots: metric curves over iterations (mean ± band over seeds) and the CLIP-vs-FID Pareto plot.

matplotlib is the optional extra ``plot`` (``pip install 'rankekit[plot]'``); it is imported only
when a figure is drawn. The numbers behind each figure come from plain functions
(:func:`curve_data`, :func:`pareto_points`, :func:`pareto_front`) that need no matplotlib.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from rankekit.analysis.runs import RunGroup, read_scalars, scalar_series
from rankekit.evaluation.stats import mean_std


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib, an optional extra: pip install "
                          "'rankekit[plot]' (or pip install matplotlib)") from exc
    matplotlib.use('Agg')  # files only, no display needed
    import matplotlib.pyplot as plt
    return plt


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points (shorter at the start); 1 = unchanged."""
    values = np.asarray(values, dtype=np.float64)
    if window <= 1 or len(values) == 0:
        return values
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    out = np.empty_like(values)
    for i in range(len(values)):
        lo = max(0, i + 1 - window)
        out[i] = (cumsum[i + 1] - cumsum[lo]) / (i + 1 - lo)
    return out


def curve_data(series: Sequence[dict[int, float]], window: int = 1) -> dict[str, np.ndarray]:
    """Mean and sample std over runs at every iteration any run logged.

    ``series``: one ``{iteration: value}`` per run (each smoothed with ``window`` first). Returns
    ``x``, ``mean``, ``std`` (NaN where fewer than two runs logged that iteration) and ``n``.
    """
    runs = []
    for s in series:
        xs = sorted(s)
        runs.append(dict(zip(xs, smooth([s[x] for x in xs], window))))
    xs = sorted({x for r in runs for x in r})
    mean, std, count = [], [], []
    for x in xs:
        values = [r[x] for r in runs if x in r]
        m, sd = mean_std(values)
        mean.append(m)
        std.append(np.nan if sd is None else sd)
        count.append(len(values))
    return dict(x=np.asarray(xs), mean=np.asarray(mean), std=np.asarray(std),
                n=np.asarray(count))


def group_labels(groups: Sequence[RunGroup]) -> list[str]:
    """A legend label per group: its config name, numbered (``name #2``) when several groups
    share a name; :func:`main` prints what each numbered label changes."""
    labels, seen = [], {}
    for group in groups:
        same = sum(g.name == group.name for g in groups)
        seen[group.name] = seen.get(group.name, 0) + 1
        labels.append(group.name if same == 1 else f'{group.name} #{seen[group.name]}')
    return labels


def plot_curves(groups: Sequence[RunGroup], keys: Sequence[str], out: str | Path,
                window: int = 1, columns: int = 2) -> Path:
    """One panel per key, one line per group (mean over its seeds) with a ± std band."""
    plt = _pyplot()
    records = {id(r): read_scalars(r.work_dir) for g in groups for r in g.runs}
    labels = group_labels(groups)
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    columns = max(1, min(columns, len(keys)))
    rows = int(np.ceil(len(keys) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(5.5 * columns, 3.6 * rows), squeeze=False)
    handles = {}
    for ax, key in zip(axes.flat, keys):
        for i, (group, label) in enumerate(zip(groups, labels)):
            series = [s for s in (scalar_series(records[id(r)], key) for r in group.runs) if s]
            if not series:
                continue
            data = curve_data(series, window)
            colour = colours[i % len(colours)]
            line, = ax.plot(data['x'], data['mean'], color=colour,
                            marker='o' if len(data['x']) < 20 else None, markersize=3)
            band = ~np.isnan(data['std'])
            if band.any():
                ax.fill_between(data['x'][band], (data['mean'] - data['std'])[band],
                                (data['mean'] + data['std'])[band], color=colour, alpha=0.2,
                                linewidth=0)
            handles.setdefault(label, (line, len(group.runs)))
        ax.set_title(key)
        ax.set_xlabel('iteration')
        ax.grid(alpha=0.3)
        if not ax.lines:
            ax.text(0.5, 0.5, f'no run logged {key}', ha='center', va='center',
                    transform=ax.transAxes)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis('off')
    ordered = [label for label in labels if label in handles]
    ncol = min(3, max(1, len(ordered)))
    legend_rows = int(np.ceil(len(ordered) / ncol))
    bottom = min(0.4, 0.35 * legend_rows / fig.get_figheight())
    if ordered:
        fig.legend([handles[k][0] for k in ordered],
                   [f'{k} (seeds: {handles[k][1]}, mean ± std)' for k in ordered],
                   loc='lower center', ncol=ncol, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def pareto_points(groups: Sequence[RunGroup], x_key: str, y_key: str,
                  combos: Sequence[str] = ('online:ema',), use_summary: bool = True) -> list[dict]:
    """Per group: mean ± std over its runs of ``x_key`` and ``y_key`` (names as in the ablation
    table: ``summary.json`` metrics, or ``'name [policy:decoder]'`` from tools/test.py)."""
    points = []
    for group, label in zip(groups, group_labels(groups)):
        metrics = [r.metrics(combos, use_summary=use_summary) for r in group.runs]
        xs = [m[x_key] for m in metrics if x_key in m and y_key in m]
        ys = [m[y_key] for m in metrics if x_key in m and y_key in m]
        if not xs:
            continue
        (x, x_std), (y, y_std) = mean_std(xs), mean_std(ys)
        points.append(dict(label=label, x=x, x_std=x_std, y=y, y_std=y_std,
                           n=len(xs)))
    return points


def pareto_front(points: Sequence[dict], maximize_x: bool = True,
                 minimize_y: bool = True) -> list[int]:
    """Indices of the points no other point beats on both axes (higher CLIP, lower FID by
    default), sorted by x."""
    sx = 1.0 if maximize_x else -1.0
    sy = 1.0 if minimize_y else -1.0
    front = []
    for i, p in enumerate(points):
        dominated = any(sx * q['x'] >= sx * p['x'] and sy * q['y'] <= sy * p['y']
                        and (q['x'], q['y']) != (p['x'], p['y']) for q in points)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i]['x'])


def plot_pareto(groups: Sequence[RunGroup], out: str | Path, x_key: str = 'clip_heldout/mean',
                y_key: str = 'fid/fid', combos: Sequence[str] = ('online:ema',),
                use_summary: bool = True) -> Path:
    """CLIP (x, higher is better) against FID (y, lower is better), one point per group with
    ± std error bars over its seeds; the Pareto front joined by a dashed line."""
    points = pareto_points(groups, x_key, y_key, combos, use_summary)
    if not points:
        raise ValueError(f'no run has both {x_key!r} and {y_key!r} (summary.json evaluation or '
                         f'tools/test.py results); run the evaluation first or pick --x/--y')
    plt = _pyplot()
    # Past a handful of points, labels next to them collide in the clusters that matter most;
    # name them in a legend instead, each with its own colour and marker (the 10 default
    # colours x 4 markers).
    crowded = len(points) > 8
    fig, ax = plt.subplots(figsize=(8.5 if crowded else 6, 4.5))
    for i, p in enumerate(points):
        label = f"{p['label']} (n={p['n']})"
        style = (dict(fmt='osD^'[i // 10 % 4], color=f'C{i % 10}', label=label) if crowded
                 else dict(fmt='o'))
        ax.errorbar(p['x'], p['y'], xerr=p['x_std'] or 0, yerr=p['y_std'] or 0, capsize=3,
                    **style)
        if not crowded:
            ax.annotate(label, (p['x'], p['y']), fontsize=7, textcoords='offset points',
                        xytext=(4, 4))
    front = pareto_front(points)
    ax.plot([points[i]['x'] for i in front], [points[i]['y'] for i in front], '--', color='gray',
            linewidth=1, label='Pareto front')
    ax.set_xlabel(f'{x_key} (higher is better)')
    ax.set_ylabel(f'{y_key} (lower is better)')
    ax.grid(alpha=0.3)
    outside = dict(loc='upper left', bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    ax.legend(fontsize=7, **(outside if crowded else {}))
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
