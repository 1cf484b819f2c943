"""Relocalization metrics (pure numpy): per-frame errors and the summary every report prints.

Errors follow ``posenet_ros.core.geometry``: translation error = Euclidean distance between camera
centres (metres); rotation error = ``2 * acos(|<q_est, q_true>|)`` in degrees (the corrected
PoseNet metric; q and -q give 0). A frame the system could not localise (no output, non-finite
output, dropped by a live node) is a *failure*: its errors are ``inf``, so it counts against
every recall threshold and pushes medians/percentiles up instead of silently disappearing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from posenet_ros.core.geometry import rotation_error_deg, translation_error

__all__ = [
    'RECALL_THRESHOLDS', 'frame_errors', 'percentile_inf', 'recall', 'summarize',
    'threshold_key', 'json_safe',
]

#: (metres, degrees) thresholds reported as recall: the 7-Scenes (5 cm, 5 deg) and the
#: Cambridge/Aachen style (25 cm, 2 deg), (0.5 m, 5 deg), (1 m, 10 deg).
RECALL_THRESHOLDS: tuple[tuple[float, float], ...] = (
    (0.05, 5.0), (0.25, 2.0), (0.5, 5.0), (1.0, 10.0))


def frame_errors(pred_position: np.ndarray, pred_quaternion: np.ndarray,
                 true_position: np.ndarray, true_quaternion: np.ndarray,
                 valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame ``(translation_m (N,), rotation_deg (N,))`` errors.

    ``pred_*``/``true_*`` are ``(N, 3)`` positions and ``(N, 4)`` wxyz quaternions (any sign,
    any norm > 0). Frames where ``valid`` is False, or whose prediction is non-finite or has a
    zero quaternion, get ``inf`` for both errors (failures).
    """
    pp = np.asarray(pred_position, dtype=np.float64).reshape(-1, 3)
    pq = np.asarray(pred_quaternion, dtype=np.float64).reshape(-1, 4)
    tp = np.asarray(true_position, dtype=np.float64).reshape(-1, 3)
    tq = np.asarray(true_quaternion, dtype=np.float64).reshape(-1, 4)
    n = len(tp)
    if not (len(pp) == len(pq) == len(tq) == n):
        raise ValueError(f'length mismatch: {len(pp)} predicted positions, {len(pq)} predicted '
                         f'quaternions, {n} true positions, {len(tq)} true quaternions')
    ok = np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(n)
    ok = ok & np.all(np.isfinite(pp), axis=1) & np.all(np.isfinite(pq), axis=1)
    ok &= np.linalg.norm(np.where(np.isfinite(pq), pq, 0.0), axis=1) > 1e-12
    t_err = np.full(n, np.inf)
    r_err = np.full(n, np.inf)
    if ok.any():
        t_err[ok] = translation_error(pp[ok], tp[ok])
        r_err[ok] = rotation_error_deg(pq[ok], tq[ok])
    return t_err, r_err


def percentile_inf(values: Sequence[float], q: float) -> float:
    """``q``-th percentile (linear interpolation, numpy's default) that tolerates ``inf``.

    numpy computes ``inf - inf = nan`` when interpolating between two infinite order
    statistics; here any interpolation that touches an ``inf`` with non-zero weight is ``inf``.
    Returns ``nan`` for an empty input.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    if x.size == 0:
        return float('nan')
    pos = (x.size - 1) * float(q) / 100.0
    lo = int(math.floor(pos))
    hi = min(lo + 1, x.size - 1)
    frac = pos - lo
    if frac == 0.0 or hi == lo:
        return float(x[lo])
    if not (np.isfinite(x[lo]) and np.isfinite(x[hi])):
        return float('inf')
    return float(x[lo] + (x[hi] - x[lo]) * frac)


def recall(t_err: np.ndarray, r_err: np.ndarray, max_t: float, max_r: float) -> float:
    """Fraction of frames with ``t_err <= max_t`` metres AND ``r_err <= max_r`` degrees."""
    t_err = np.asarray(t_err, dtype=np.float64)
    r_err = np.asarray(r_err, dtype=np.float64)
    if t_err.size == 0:
        return float('nan')
    return float(np.mean((t_err <= max_t) & (r_err <= max_r)))


def threshold_key(max_t: float, max_r: float) -> str:
    """Stable name of a recall threshold, e.g. ``'5cm_5deg'`` or ``'0.5m_5deg'``."""
    dist = f'{max_t * 100:g}cm' if max_t < 0.25 + 1e-9 else f'{max_t:g}m'
    return f'{dist}_{max_r:g}deg'


def _stats(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {
        'median': percentile_inf(values, 50),
        'mean': float(np.mean(values)) if values.size else float('nan'),
        'mean_valid': float(np.mean(finite)) if finite.size else float('nan'),
        'p90': percentile_inf(values, 90),
        'max_valid': float(np.max(finite)) if finite.size else float('nan'),
    }


def summarize(t_err: np.ndarray, r_err: np.ndarray, ms: np.ndarray | None = None,
              thresholds: Sequence[tuple[float, float]] = RECALL_THRESHOLDS) -> dict:
    """Summary of per-frame errors as a JSON-friendly dict (use :func:`json_safe` to dump).

    Keys: ``n_frames``, ``n_failed``, ``translation_m`` and ``rotation_deg`` (each ``median``,
    ``mean`` over all frames - ``inf`` when any frame failed -, ``mean_valid`` over localised
    frames, ``p90``, ``max_valid``), ``recall`` (``threshold_key -> fraction``), and when
    ``ms`` is given ``ms`` (``p50``, ``p95``, ``mean``; non-finite entries ignored).
    """
    t_err = np.asarray(t_err, dtype=np.float64).reshape(-1)
    r_err = np.asarray(r_err, dtype=np.float64).reshape(-1)
    if t_err.shape != r_err.shape:
        raise ValueError(f'{t_err.size} translation errors but {r_err.size} rotation errors')
    failed = ~(np.isfinite(t_err) & np.isfinite(r_err))
    out = {
        'n_frames': int(t_err.size),
        'n_failed': int(failed.sum()),
        'translation_m': _stats(t_err),
        'rotation_deg': _stats(r_err),
        'recall': {threshold_key(t, r): recall(t_err, r_err, t, r) for t, r in thresholds},
    }
    if ms is not None:
        ms = np.asarray(ms, dtype=np.float64).reshape(-1)
        ms = ms[np.isfinite(ms)]
        out['ms'] = {
            'p50': percentile_inf(ms, 50), 'p95': percentile_inf(ms, 95),
            'mean': float(np.mean(ms)) if ms.size else float('nan'), 'n': int(ms.size)}
    return out


def json_safe(obj):
    """Copy of ``obj`` where non-finite floats become the strings ``'inf'``/``'-inf'``/``'nan'``.

    Strict JSON has no infinity; ``float('inf')`` parses those strings back.
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else repr(v)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    return obj
