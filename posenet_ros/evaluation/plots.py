"""Evaluation plots (matplotlib, headless Agg backend): the figures of the PoseNet paper.

* :func:`plot_error_cdf` - cumulative distribution of position and orientation errors (Fig. 7),
  one curve per method; failed frames (``inf``) keep a curve below 1 at the right edge.
* :func:`plot_trajectory_map` - top-down map of training, test and predicted camera positions
  with a line from each test position to its prediction (Fig. 4).
* :func:`plot_error_over_time` - per-frame position and orientation error along the sequence.
* :func:`plot_curves` - generic "metric against a parameter" plot used by the studies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # headless: never needs a display (set before pyplot is imported)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ['plot_error_cdf', 'plot_trajectory_map', 'plot_error_over_time', 'plot_curves',
           'plot_panels', 'top_down_axes']

_AXIS_NAMES = ('x', 'y', 'z')


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted finite values and their cumulative fraction of ALL frames (failures included)."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    n = values.size
    finite = np.sort(values[np.isfinite(values)])
    return finite, np.arange(1, finite.size + 1) / max(n, 1)


def _wide_range(series: list[np.ndarray]) -> bool:
    """True when one method's median is under 1 % of the largest error: a log axis shows both."""
    finite = [np.asarray(v, float)[np.isfinite(v) & (np.asarray(v, float) > 0)] for v in series]
    finite = [v for v in finite if v.size]
    if len(finite) < 2:
        return False
    return min(float(np.median(v)) for v in finite) < 0.01 * max(float(v.max()) for v in finite)


def plot_error_cdf(errors: Mapping[str, tuple[np.ndarray, np.ndarray]], path,
                   title: str = '') -> Path:
    """CDF of translation (m) and rotation (deg) errors for each named method.

    ``errors``: ``{name: (translation_m (N,), rotation_deg (N,))}``; the first entry is drawn
    thickest (the model), the rest are baselines. An axis is logarithmic when the methods'
    errors span more than two orders of magnitude (e.g. refined poses in millimetres next to
    coarse ones in metres). Returns the PNG path.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    log = [_wide_range([v[i] for v in errors.values()]) for i in (0, 1)]
    for k, (name, (t_err, r_err)) in enumerate(errors.items()):
        for i, (ax, values) in enumerate(zip(axes, (t_err, r_err))):
            x, y = _cdf(values)
            n_fail = int(np.sum(~np.isfinite(np.asarray(values))))
            label = name + (f' ({n_fail} failed)' if n_fail else '')
            if log[i]:
                x = np.maximum(x, 1e-6)  # a zero error sits at the axis' left end
            if x.size:
                # Start the step curve at 0 (linear axis) so one frame still shows a line.
                x0 = x[0] if log[i] else 0.0
                ax.step(np.r_[x0, x], np.r_[0.0, y], where='post', label=label,
                        linewidth=2.4 if k == 0 else 1.4)
            else:
                ax.plot([], [], label=label + ' (no frame localised)')
    for i, (ax, unit) in enumerate(zip(axes, ('position error [m]', 'orientation error [deg]'))):
        ax.set_ylabel('fraction of frames')
        ax.set_ylim(0, 1.02)
        if log[i]:
            ax.set_xscale('log')
            ax.set_xlabel(unit + ', log scale')
        else:
            ax.set_xlabel(unit)
            ax.set_xlim(left=0)
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=8, loc='best' if log[i] else 'lower right')
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def top_down_axes(*position_sets: np.ndarray) -> tuple[int, int]:
    """The two map axes to draw from above: drop the axis with the smallest spread.

    For a ROS map frame (z up) with a ground vehicle or hand-held camera that is z, giving x-y.
    """
    pts = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in position_sets if len(p)]
    if not pts:
        return 0, 1
    allp = np.concatenate(pts)
    allp = allp[np.all(np.isfinite(allp), axis=1)]
    if len(allp) < 2:
        return 0, 1
    drop = int(np.argmin(np.ptp(allp, axis=0)))
    keep = [i for i in range(3) if i != drop]
    return keep[0], keep[1]


def plot_trajectory_map(train_positions: np.ndarray | None, test_positions: np.ndarray,
                        pred_positions: np.ndarray, path, title: str = '',
                        extra: Mapping[str, np.ndarray] | None = None) -> Path:
    """Top-down map: training (grey), test ground truth (green) and predictions (red).

    A thin line joins each ground-truth position to its prediction. Non-finite predictions
    (failures) are not drawn. ``extra``: more named position sets (e.g. a baseline).
    """
    test_positions = np.asarray(test_positions, dtype=np.float64).reshape(-1, 3)
    pred_positions = np.asarray(pred_positions, dtype=np.float64).reshape(-1, 3)
    train = (np.zeros((0, 3)) if train_positions is None
             else np.asarray(train_positions, dtype=np.float64).reshape(-1, 3))
    a, b = top_down_axes(train, test_positions)
    fig, ax = plt.subplots(figsize=(7, 6))
    if len(train):
        ax.scatter(train[:, a], train[:, b], s=6, c='0.6', label=f'training ({len(train)})')
    ok = np.all(np.isfinite(pred_positions), axis=1)
    segs_x = np.stack([test_positions[ok, a], pred_positions[ok, a], np.full(ok.sum(), np.nan)])
    segs_y = np.stack([test_positions[ok, b], pred_positions[ok, b], np.full(ok.sum(), np.nan)])
    ax.plot(segs_x.T.ravel(), segs_y.T.ravel(), color='tab:red', alpha=0.35, linewidth=0.7)
    ax.plot(test_positions[:, a], test_positions[:, b], '-o', color='tab:green', markersize=2.5,
            linewidth=0.8, label=f'test ground truth ({len(test_positions)})')
    ax.scatter(pred_positions[ok, a], pred_positions[ok, b], s=8, c='tab:red',
               label=f'predicted ({int(ok.sum())})')
    for name, pts in (extra or {}).items():
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
        good = np.all(np.isfinite(pts), axis=1)
        ax.scatter(pts[good, a], pts[good, b], s=6, marker='x', label=name)
    ax.set_xlabel(f'map {_AXIS_NAMES[a]} [m]')
    ax.set_ylabel(f'map {_AXIS_NAMES[b]} [m]')
    ax.set_aspect('equal', adjustable='datalim')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='best')
    ax.set_title(title or 'top-down map (map frame)')
    return _save(fig, path)


def plot_error_over_time(times: np.ndarray, t_err: np.ndarray, r_err: np.ndarray, path,
                         title: str = '', time_label: str = 'time [s]') -> Path:
    """Position and orientation error of each frame along the sequence.

    Failures are marked with red ticks along the top of each panel.
    """
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    fig, axes = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    for ax, values, label in zip(axes, (t_err, r_err), ('position error [m]',
                                                        'orientation error [deg]')):
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        ok = np.isfinite(values)
        ax.plot(times[ok], values[ok], '.-', markersize=3, linewidth=0.8)
        if (~ok).any():
            top = float(np.max(values[ok])) if ok.any() else 1.0
            ax.plot(times[~ok], np.full((~ok).sum(), top * 1.05), '|', color='tab:red',
                    markersize=10, label=f'failed ({int((~ok).sum())})')
            ax.legend(fontsize=8, loc='upper right')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel(time_label)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_curves(x_values: Sequence, series: Mapping[str, Sequence[float]], path, *,
                xlabel: str, ylabel: str, title: str = '', logx: bool = False,
                secondary: Mapping[str, Sequence[float]] | None = None,
                secondary_label: str = '') -> Path:
    """Lines of ``series`` (``name -> y per x``) against ``x_values``; optional right axis.

    ``x_values`` may be strings (categorical axis). Non-finite y values leave gaps.
    """
    fig, ax = plt.subplots(figsize=(7, 4.2))
    cat = any(isinstance(x, str) for x in x_values)
    xs = np.arange(len(x_values)) if cat else np.asarray(x_values, dtype=np.float64)
    for name, ys in series.items():
        ys = np.asarray(ys, dtype=np.float64)
        ax.plot(xs, np.where(np.isfinite(ys), ys, np.nan), '-o', label=name)
    if cat:
        ax.set_xticks(xs, [str(x) for x in x_values])
    if logx and not cat:
        ax.set_xscale('log')
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if secondary:
        ax2 = ax.twinx()
        for name, ys in secondary.items():
            ys = np.asarray(ys, dtype=np.float64)
            ax2.plot(xs, np.where(np.isfinite(ys), ys, np.nan), '--s', alpha=0.7, label=name,
                     color='tab:purple')
        ax2.set_ylabel(secondary_label)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, fontsize=8, loc='best')
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_panels(panels: Mapping[str, tuple[Sequence[float], Mapping[str, Sequence[float]], str]],
                path, *, ylabel: str, title: str = '',
                references: Mapping[str, float] | None = None) -> Path:
    """One small plot per panel: ``{panel title: (x values, {series: y values}, xlabel)}``.

    ``references``: horizontal dashed lines drawn in every panel (e.g. a baseline's error).
    Non-finite y values leave gaps.
    """
    k = max(len(panels), 1)
    cols = min(k, 2)
    rows = math.ceil(k / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
    for ax, (name, (xs, series, xlabel)) in zip(axes.ravel(), panels.items()):
        for label, ys in series.items():
            ys = np.asarray(ys, dtype=np.float64)
            ax.plot(np.asarray(xs, dtype=np.float64), np.where(np.isfinite(ys), ys, np.nan),
                    '-o', label=label)
        for label, value in (references or {}).items():
            if np.isfinite(value):
                ax.axhline(value, linestyle='--', color='0.5', linewidth=1, label=label)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc='best')
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
