"""Report files shared by ``posenet-ros evaluate`` and the live evaluation (no rclpy).

A report compares methods on the same frames: the model under test first, then the refined
pose of verified frames and the baselines (mean training pose, nearest training frame). It is
written as ``frames.csv``, ``summary.json``/``summary.md``, plots and TUM trajectories by
:func:`write_report`; ``posenet_ros.evaluation.builder.ReportBuilder`` assembles what goes in
it. :func:`selection_warning` says when the model being scored was selected on the very split
it is scored on.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import EvaluationError
from posenet_ros.evaluation.metrics import (
    RECALL_THRESHOLDS,
    frame_errors,
    json_safe,
    summarize,
    threshold_key,
)

__all__ = ['MODEL_METHOD', 'REFINED_METHOD', 'WRONG_VERIFIED', 'STATUS_CODE', 'REPORT_FILES',
           'VERIFIED_TUM',
           'GroundTruth', 'MethodResult', 'format_markdown', 'write_report', 'load_summary',
           'selection_warning']

MODEL_METHOD = 'posenet'
REFINED_METHOD = 'refined'
# A verified pose farther than this from the truth is counted as wrong.
WRONG_VERIFIED = (0.25, 2.0)  # metres, degrees
STATUS_CODE = {'rejected': 0, 'unverified': 1, 'verified': 2}
# The files of a report folder, by their key in ``summary.json``'s ``files``.
REPORT_FILES = {'frames': 'frames.csv', 'summary_json': 'summary.json',
                'summary_md': 'summary.md', 'cdf': 'cdf.png', 'map': 'map.png',
                'errors_over_time': 'errors_over_time.png', 'prediction_tum': 'prediction.tum',
                'ground_truth_tum': 'ground_truth.tum'}
# With a scene map: the refined poses of the verified frames only (what a robot acts on).
VERIFIED_TUM = 'verified.tum'


@dataclass
class GroundTruth:
    """The evaluated frames: names, stamps (s; NaN when unknown) and true poses (wxyz)."""

    names: list[str]
    stamps: np.ndarray  # (N,)
    positions: np.ndarray  # (N, 3)
    quaternions: np.ndarray  # (N, 4) wxyz


@dataclass
class MethodResult:
    """Predictions of one method on the frames of a :class:`GroundTruth` (same order).

    ``valid`` False = failure (no or non-finite output). ``ms`` = per-frame cost in
    milliseconds (NaN when not measured). ``extra`` = more per-frame columns for the CSV.
    """

    positions: np.ndarray  # (N, 3)
    quaternions: np.ndarray  # (N, 4) wxyz
    valid: np.ndarray  # (N,) bool
    ms: np.ndarray | None = None  # (N,)
    description: str = ''
    extra: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, n: int, description: str = '') -> MethodResult:
        """All-failed result of ``n`` frames, to be filled in."""
        return cls(np.full((n, 3), np.nan), np.full((n, 4), np.nan), np.zeros(n, bool),
                   np.full(n, np.nan), description)


# --- report files ---------------------------------------------------------------------------
def _fmt(v: float, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return '-'
    if isinstance(v, float) and math.isinf(v):
        return 'inf'
    return f'{v:.{digits}f}'


def format_markdown(summary: dict) -> str:
    """Markdown report of a ``summary.json`` document (one table row per method)."""
    keys = [threshold_key(t, r) for t, r in RECALL_THRESHOLDS]
    lines = [f'# {summary.get("title", "Relocalization evaluation")}', '']
    for k, v in summary.get('source', {}).items():
        lines.append(f'- {k}: `{v}`')
    lines += ['', '| method | frames | failed | median t [m] | median r [deg] | mean t [m] | '
              'p90 t [m] | p90 r [deg] | ' + ' | '.join(f'recall {k}' for k in keys)
              + ' | ms p50 | ms p95 |',
              '|---' * (10 + len(keys)) + '|']
    for name, s in summary['methods'].items():
        ms = s.get('ms', {})
        row = [name, str(s['n_frames']), str(s['n_failed']),
               _fmt(s['translation_m']['median']), _fmt(s['rotation_deg']['median'], 2),
               _fmt(s['translation_m']['mean']), _fmt(s['translation_m']['p90']),
               _fmt(s['rotation_deg']['p90'], 2)]
        row += [_fmt(100 * s['recall'][k], 1) + ' %' for k in keys]
        row += [_fmt(ms.get('p50', math.nan), 2), _fmt(ms.get('p95', math.nan), 2)]
        lines.append('| ' + ' | '.join(row) + ' |')
    lines.append('')
    for name, d in summary.get('descriptions', {}).items():
        if d:
            lines.append(f'- **{name}**: {d}')
    ver = summary.get('verification')
    if ver:
        lines += ['', '## Verification against the scene map', '',
                  f'- map `{ver["map"]}`: {ver["n_verified"]} of {ver["n_frames"]} frames '
                  f'verified ({100 * ver["verified_fraction"]:.1f} %), {ver["n_unverified"]} '
                  f'unverified, {ver["n_rejected"]} rejected',
                  f'- verified frames: median error {_fmt(ver["verified_median_t_m"], 4)} m / '
                  f'{_fmt(ver["verified_median_r_deg"], 3)} deg (coarse on the same frames '
                  f'{_fmt(ver["coarse_median_t_m_on_verified"], 3)} m / '
                  f'{_fmt(ver["coarse_median_r_deg_on_verified"], 2)} deg)',
                  f'- wrong verified (> {WRONG_VERIFIED[0]} m or > {WRONG_VERIFIED[1]} deg): '
                  f'{ver["n_wrong_verified"]} ({100 * ver["wrong_verified_fraction"]:.2f} % of '
                  'verified)',
                  '- refinement ms p50/p95: ' + ', '.join(
                      f'{k} {_fmt(v["p50"], 1)}/{_fmt(v["p95"], 1)}'
                      for k, v in ver['ms'].items())]
    lines += _trajectory_lines(summary.get('trajectories'))
    for note in summary.get('notes', []):
        lines.append(f'- note: {note}')
    if summary.get('files'):
        lines += ['', 'Files: ' + ', '.join(f'[{v}]({v})' for v in summary['files'].values())]
    return '\n'.join(lines) + '\n'


def _trajectory_lines(section: dict | None) -> list[str]:
    """Markdown: what each TUM file leaves out, which ``evo_ape`` cannot show."""
    if not section:
        return []
    lines = ['', '## TUM trajectories (for evo)', '']
    for key in ('prediction', 'verified'):
        t = section.get(key)
        if t:
            lines.append(f'- `{t["file"]}` ({t["method"]}): {t["n_poses"]} of '
                         f'{section["n_frames"]} frames; **{t["n_missing"]} {t["missing"]}** '
                         'left out, which evo_ape does not count')
    return lines


def _restore_inf(obj):
    """Inverse of :func:`json_safe` for the summary numbers ('inf' strings -> floats)."""
    if isinstance(obj, dict):
        return {k: _restore_inf(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_restore_inf(v) for v in obj]
    if obj in ('inf', '-inf', 'nan'):
        return float(obj)
    return obj


def write_report(out_dir, gt: GroundTruth, methods: Mapping[str, MethodResult], *,
                 title: str = 'Relocalization evaluation', source: dict | None = None,
                 train_positions: np.ndarray | None = None, notes: Iterable[str] = (),
                 extra_summary: dict | None = None) -> dict:
    """Write CSV, JSON, Markdown, plots and TUM files of an evaluation; returns the summary.

    ``methods``: the first entry is the model under test (its predictions go to the TUM file
    and the map), the others are compared against it on the same frames.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    errors = _method_errors(gt, methods)
    main_name = next(iter(methods))
    # header stamps, or the frame index when a frame has no stamp
    has_stamps = bool(np.isfinite(gt.stamps).all())
    times = gt.stamps if has_stamps else np.arange(len(gt.names), dtype=np.float64)
    _write_frames_csv(out / REPORT_FILES['frames'], gt, methods, errors)
    trajectories = _write_trajectories(out, times, gt, main_name, methods)
    _write_plots(out, title, times, has_stamps, gt, main_name, methods[main_name], errors,
                 train_positions)
    summary = {
        'title': title,
        'source': dict(source or {}),
        'methods': {name: _summarize_method(methods[name], *errors[name]) for name in methods},
        'descriptions': {k: m.description for k, m in methods.items()},
        'notes': list(notes),
        'trajectories': trajectories,
        'files': {**REPORT_FILES, **({'verified_tum': VERIFIED_TUM}
                                     if 'verified' in trajectories else {})},
        'plots': {k: str((out / REPORT_FILES[k]).resolve())
                  for k in ('cdf', 'map', 'errors_over_time')},
        **(extra_summary or {}),
    }
    (out / REPORT_FILES['summary_json']).write_text(
        json.dumps(json_safe(summary), indent=2, allow_nan=False) + '\n', encoding='utf-8')
    (out / REPORT_FILES['summary_md']).write_text(format_markdown(summary), encoding='utf-8')
    return summary


def _method_errors(gt: GroundTruth, methods: Mapping[str, MethodResult]) -> dict:
    """``{method: (translation errors, rotation errors)}`` against the ground truth."""
    n = len(gt.names)
    errors = {}
    for name, m in methods.items():
        if len(m.positions) != n:
            raise EvaluationError(f'method {name!r} has {len(m.positions)} predictions for {n} '
                                  'frames')
        errors[name] = frame_errors(m.positions, m.quaternions, gt.positions, gt.quaternions,
                                    m.valid)
    return errors


def _summarize_method(m: MethodResult, t_err: np.ndarray, r_err: np.ndarray) -> dict:
    ms = None if m.ms is None or not np.isfinite(m.ms).any() else m.ms
    return summarize(t_err, r_err, ms)


def _write_frames_csv(path: Path, gt: GroundTruth, methods: Mapping[str, MethodResult],
                      errors: dict) -> None:
    """One row per frame: truth, the main method's prediction and columns, others' errors."""
    main_name = next(iter(methods))
    main = methods[main_name]
    extra_cols = list(main.extra)
    others = [k for k in methods if k != main_name]
    header = ['name', 'stamp', 'true_x', 'true_y', 'true_z', 'true_qw', 'true_qx', 'true_qy',
              'true_qz', 'pred_x', 'pred_y', 'pred_z', 'pred_qw', 'pred_qx', 'pred_qy',
              'pred_qz', 'valid', 't_err_m', 'r_err_deg', 'ms', *extra_cols]
    for k in others:
        header += [f'{k}_t_err_m', f'{k}_r_err_deg']
    t_err, r_err = errors[main_name]
    with open(path, 'w', encoding='utf-8', newline='') as fh:
        w = csv.writer(fh, lineterminator='\n')
        w.writerow(header)
        for i in range(len(gt.names)):
            row = [gt.names[i], repr(float(gt.stamps[i])), *map(repr, gt.positions[i].tolist()),
                   *map(repr, gt.quaternions[i].tolist()),
                   *map(repr, main.positions[i].tolist()),
                   *map(repr, main.quaternions[i].tolist()), int(bool(main.valid[i])),
                   repr(float(t_err[i])), repr(float(r_err[i])),
                   repr(float(main.ms[i])) if main.ms is not None else 'nan']
            row += [repr(float(np.asarray(main.extra[c])[i])) for c in extra_cols]
            for k in others:
                row += [repr(float(errors[k][0][i])), repr(float(errors[k][1][i]))]
            w.writerow(row)


def _write_trajectories(out: Path, times: np.ndarray, gt: GroundTruth, main_name: str,
                        methods: Mapping[str, MethodResult]) -> dict:
    """The TUM files, and how many frames each one leaves out (the ``trajectories`` section).

    evo pairs a trajectory with the ground truth by stamp and scores only the poses the file
    holds: a frame without a pose is invisible to it, so the count is reported here.
    """
    from posenet_ros.evaluation.trajectory_io import write_tum

    n = len(gt.names)
    section = {'n_frames': n}
    files = [('prediction', REPORT_FILES['prediction_tum'], main_name,
              'failed frames (no or non-finite pose)')]
    refined = [k for k in methods if k.startswith(REFINED_METHOD)]
    if refined:
        files.append(('verified', VERIFIED_TUM, refined[0],
                      'frames not verified against the scene map (unverified or rejected)'))
    for key, name, method, missing in files:
        m = methods[method]
        n_poses = int(np.sum(m.valid))
        write_tum(out / name, times, m.positions,
                  np.where(m.valid[:, None], m.quaternions, np.nan),
                  comment=f'{method}: {n_poses} of {n} frames; {n - n_poses} {missing} are '
                          'left out, and evo_ape does not count them')
        section[key] = {'file': name, 'method': method, 'n_poses': n_poses,
                        'n_missing': n - n_poses, 'missing': missing}
    write_tum(out / REPORT_FILES['ground_truth_tum'], times, gt.positions, gt.quaternions,
              comment='ground truth')
    return section


def _write_plots(out: Path, title: str, times: np.ndarray, has_stamps: bool, gt: GroundTruth,
                 main_name: str, main: MethodResult, errors: dict,
                 train_positions: np.ndarray | None) -> None:
    from posenet_ros.evaluation import plots

    plots.plot_error_cdf(errors, out / REPORT_FILES['cdf'], title=title)
    pred_pos = np.where(main.valid[:, None], main.positions, np.nan)
    plots.plot_trajectory_map(train_positions, gt.positions, pred_pos,
                              out / REPORT_FILES['map'], title=f'{title}: top-down map')
    t0 = times[0] if len(times) else 0.0
    plots.plot_error_over_time(times - t0, *errors[main_name],
                               out / REPORT_FILES['errors_over_time'],
                               title=f'{title}: {main_name} error per frame',
                               time_label=(f'time since first frame (stamp {t0:.3f}) [s]'
                                           if has_stamps else 'frame index'))


def load_summary(path) -> dict:
    """Read a ``summary.json`` back with infinities restored as floats."""
    return _restore_inf(json.loads(Path(path).read_text(encoding='utf-8')))


def selection_warning(meta: Mapping, dataset, split: str, model_path=None) -> str | None:
    """A warning when the export was selected (``best.pt``) on the split now being scored.

    The trainer records the split that chose the exported model as ``training.selected_on``
    (``holdout``: frames carved out of the training split; a split name; ``None``: the last
    epoch was exported). Scores on the selecting split are optimistic.
    """
    training = meta.get('training') or {}
    selected = training.get('selected_on', training.get('val_split'))  # older exports
    if dataset is None or not selected or selected != split:
        return None
    from posenet_ros.model.paths import recorded_dataset

    raw = training.get('dataset')
    recorded = (recorded_dataset(dict(meta), model_path) or Path(raw)) if raw else None
    if recorded and recorded.resolve() != Path(dataset).resolve():
        return None
    return (f'the model was selected on the {split!r} split of {recorded or dataset} (best.pt '
            'by validation error on it), the split scored here: these numbers are optimistic. '
            'Train with val_split: holdout (the default) to keep the test split out of model '
            'selection')
