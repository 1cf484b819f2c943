"""Evaluate an exported model on a dataset split or a rosbag2 (``posenet-ros evaluate``).

One typed function, :func:`evaluate`, and a thin CLI, :func:`main`. A report folder holds:

* ``frames.csv`` - one row per frame: name, stamp, true and predicted pose (wxyz), translation
  (m) and rotation (deg) error, inference ms, raw quaternion norm, and the errors of every
  baseline (and of dense evaluation) on the same frame;
* ``summary.json`` / ``summary.md`` - median/mean/p90 errors, recall at (5 cm, 5 deg),
  (25 cm, 2 deg), (0.5 m, 5 deg), (1 m, 10 deg), ms p50/p95, for the model and each baseline
  (failed frames count as infinite error; see ``posenet_ros.metrics``);
* ``cdf.png`` (paper Fig. 7), ``map.png`` (Fig. 4), ``errors_over_time.png``;
* ``prediction.tum`` / ``ground_truth.tum`` - TUM trajectories for ``evo_ape tum``.

With a scene map (``map_path``, ``--map``), every frame is also verified and refined
(``posenet_ros.verify``, the same code path as the node): the method ``refined`` holds the
refined pose of verified frames (other frames count as failures), ``frames.csv`` gets the
status/inliers/ms of each frame, and ``summary.json`` a ``verification`` section: verified
fraction, median error of verified frames, how often a verified pose is wrong (> 0.25 m or
> 2 deg), and the refinement's ms per stage (p50/p95).

Baselines (``posenet_ros.baselines``) run on the very same frames: the mean training pose and
the nearest training frame in feature space. Dense evaluation (``dense=N``, the paper's Dense
PoseNet) averages the predictions of N crops spread over the resized frame; its cost is
reported next to the single centre crop's.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from posenet_ros.errors import EvaluationError, NonFiniteOutputError, PoseNetError
from posenet_ros.metrics import (
    RECALL_THRESHOLDS,
    frame_errors,
    json_safe,
    summarize,
    threshold_key,
)

__all__ = [
    'evaluate', 'main', 'MethodResult', 'GroundTruth', 'write_report', 'dense_windows',
    'dense_grid', 'format_markdown',
]

MODEL_METHOD = 'posenet'
REFINED_METHOD = 'refined'
# A verified pose farther than this from the truth is counted as wrong.
WRONG_VERIFIED = (0.25, 2.0)  # metres, degrees
STATUS_CODE = {'rejected': 0, 'unverified': 1, 'verified': 2}


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


# --- dense evaluation ------------------------------------------------------------------------
def dense_grid(n: int, free_h: int, free_w: int) -> list[tuple[int, int]]:
    """``n`` crop offsets (top, left) spread uniformly over a ``free_h x free_w`` range.

    The grid's aspect follows the free range (a 4:3 frame gets more columns than rows); with
    an odd count along an axis the centre offset is included.
    """
    n = max(int(n), 1)
    if free_h <= 0 and free_w <= 0:
        return [(0, 0)]
    if free_h <= 0:
        rows, cols = 1, n
    elif free_w <= 0:
        rows, cols = n, 1
    else:
        cols = max(1, round(math.sqrt(n * free_w / free_h)))
        rows = max(1, math.ceil(n / cols))
    tops = np.linspace(0, max(free_h, 0), rows).round().astype(int) if rows > 1 \
        else np.array([max(free_h, 0) // 2])
    lefts = np.linspace(0, max(free_w, 0), cols).round().astype(int) if cols > 1 \
        else np.array([max(free_w, 0) // 2])
    grid = [(int(t), int(lf)) for t in tops for lf in lefts]
    if len(grid) > n:  # trim symmetrically: keep the n offsets closest to the centre
        centre = np.array([free_h / 2, free_w / 2])
        order = np.argsort([np.hypot(*(np.array(g) - centre)) for g in grid], kind='stable')
        grid = [grid[i] for i in sorted(order[:n])]
    return grid


def dense_windows(frame: np.ndarray, resize: int, crop: int, n: int) -> np.ndarray:
    """``n`` uint8 windows ``(n, resize, resize, 3)`` whose centres are ``n`` different crops.

    Each window's centre ``crop`` x ``crop`` is one crop of the frame resized to shorter side
    ``resize``.

    An export always resizes its input's shorter side to ``resize`` and takes the centre crop.
    A ``resize x resize`` window passes the resize unchanged (scale 1), so its centre crop is
    exactly the chosen crop of the resized frame; the window border outside the crop (reflect
    padding near the frame edge) is cropped away by the model and never seen.
    """
    import torch

    from posenet_ros.preprocessing import resize_shorter_side_uint8

    resized = resize_shorter_side_uint8(torch.from_numpy(np.ascontiguousarray(frame)),
                                        resize).numpy()
    h, w = resized.shape[:2]
    margin = (resize - crop) // 2  # where the model's centre crop starts inside a window
    pad = resize  # generous: any window fits
    padded = np.pad(resized, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
    out = []
    for top, left in dense_grid(n, h - crop, w - crop):
        y0 = top + pad - margin
        x0 = left + pad - margin
        out.append(padded[y0:y0 + resize, x0:x0 + resize])
    return np.stack(out)


# --- predictions -----------------------------------------------------------------------------
def _load_relocalizer(model, device: str):
    from posenet_ros.relocalizer import Relocalizer

    return Relocalizer(model, device=device)


def _warm_up(reloc, frame: np.ndarray, resize: int, crop: int, dense: int) -> None:
    """Untimed calls at the evaluated frame size before timing anything.

    TorchScript re-optimises for each new input shape during its first calls, which would
    otherwise inflate the first frames' ms.
    """
    for _ in range(2):
        try:
            reloc.predict(frame)
            if dense:
                reloc.predict_batch(list(dense_windows(frame, resize, crop, dense)))
        except NonFiniteOutputError:
            return


def _predict_one(reloc, frame: np.ndarray):
    """``(position, wxyz, raw_qnorm, ms, ok)`` of one frame through the relocalizer."""
    t0 = time.perf_counter()
    try:
        pred = reloc.predict(frame)
    except NonFiniteOutputError:
        return None, None, math.nan, (time.perf_counter() - t0) * 1e3, False
    ms = float(getattr(pred, 'latency_ms', math.nan))
    if not math.isfinite(ms):
        ms = (time.perf_counter() - t0) * 1e3
    return (np.asarray(pred.position, np.float64), np.asarray(pred.quaternion_wxyz, np.float64),
            float(pred.raw_quat_norm), ms, True)


def _predict_dense(reloc, frame: np.ndarray, resize: int, crop: int, n: int):
    """Average of ``n`` crop predictions: ``(position, wxyz, ms, ok)``."""
    from posenet_ros.baselines import average_quaternions

    t0 = time.perf_counter()
    windows = dense_windows(frame, resize, crop, n)
    try:
        preds = reloc.predict_batch(list(windows))
    except NonFiniteOutputError:
        return None, None, (time.perf_counter() - t0) * 1e3, False
    ms = (time.perf_counter() - t0) * 1e3
    pos = np.array([p.position for p in preds], dtype=np.float64)
    quat = np.array([p.quaternion_wxyz for p in preds], dtype=np.float64)
    ok = np.all(np.isfinite(pos), 1) & np.all(np.isfinite(quat), 1)
    if not ok.any():
        return None, None, ms, False
    return pos[ok].mean(axis=0), average_quaternions(quat[ok]), ms, True


# --- report ----------------------------------------------------------------------------------
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
    for note in summary.get('notes', []):
        lines.append(f'- note: {note}')
    if summary.get('files'):
        lines += ['', 'Files: ' + ', '.join(f'[{v}]({v})' for v in summary['files'].values())]
    return '\n'.join(lines) + '\n'


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
    from posenet_ros import plots
    from posenet_ros.trajectory_io import write_tum

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(gt.names)
    errors, summaries = {}, {}
    for name, m in methods.items():
        if len(m.positions) != n:
            raise EvaluationError(f'method {name!r} has {len(m.positions)} predictions for {n} '
                                  'frames')
        t_err, r_err = frame_errors(m.positions, m.quaternions, gt.positions, gt.quaternions,
                                    m.valid)
        errors[name] = (t_err, r_err)
        ms = None if m.ms is None or not np.isfinite(m.ms).any() else m.ms
        summaries[name] = summarize(t_err, r_err, ms)
    main_name = next(iter(methods))
    main = methods[main_name]
    has_stamps = np.isfinite(gt.stamps).all()
    times = gt.stamps if has_stamps else np.arange(n, dtype=np.float64)

    # Per-frame CSV.
    csv_path = out / 'frames.csv'
    extra_cols = list(main.extra)
    header = ['name', 'stamp', 'true_x', 'true_y', 'true_z', 'true_qw', 'true_qx', 'true_qy',
              'true_qz', 'pred_x', 'pred_y', 'pred_z', 'pred_qw', 'pred_qx', 'pred_qy',
              'pred_qz', 'valid', 't_err_m', 'r_err_deg', 'ms', *extra_cols]
    others = [k for k in methods if k != main_name]
    for k in others:
        header += [f'{k}_t_err_m', f'{k}_r_err_deg']
    with open(csv_path, 'w', encoding='utf-8', newline='') as fh:
        w = csv.writer(fh, lineterminator='\n')
        w.writerow(header)
        for i in range(n):
            t_err, r_err = errors[main_name]
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

    # TUM trajectories (stamps: header stamps, or the frame index when unknown).
    write_tum(out / 'prediction.tum', times, main.positions,
              np.where(main.valid[:, None], main.quaternions, np.nan),
              comment=f'{main_name} predictions; failed frames omitted')
    write_tum(out / 'ground_truth.tum', times, gt.positions, gt.quaternions,
              comment='ground truth')

    # Plots.
    plots.plot_error_cdf(errors, out / 'cdf.png', title=title)
    pred_pos = np.where(main.valid[:, None], main.positions, np.nan)
    plots.plot_trajectory_map(train_positions, gt.positions, pred_pos, out / 'map.png',
                              title=f'{title}: top-down map')
    t0 = times[0] if n else 0.0
    plots.plot_error_over_time(times - t0, *errors[main_name], out / 'errors_over_time.png',
                               title=f'{title}: {main_name} error per frame',
                               time_label=(f'time since first frame (stamp {t0:.3f}) [s]'
                                           if has_stamps else 'frame index'))
    files = {'frames': csv_path.name, 'summary_json': 'summary.json', 'summary_md': 'summary.md',
             'cdf': 'cdf.png', 'map': 'map.png', 'errors_over_time': 'errors_over_time.png',
             'prediction_tum': 'prediction.tum', 'ground_truth_tum': 'ground_truth.tum'}
    plot_paths = {k: str((out / files[k]).resolve()) for k in ('cdf', 'map', 'errors_over_time')}
    summary = {
        'title': title,
        'source': dict(source or {}),
        'methods': summaries,
        'descriptions': {k: m.description for k, m in methods.items()},
        'notes': list(notes),
        'files': files,
        'plots': plot_paths,
        **(extra_summary or {}),
    }
    (out / 'summary.json').write_text(json.dumps(json_safe(summary), indent=2, allow_nan=False)
                                      + '\n', encoding='utf-8')
    (out / 'summary.md').write_text(format_markdown(summary), encoding='utf-8')
    return summary


def load_summary(path) -> dict:
    """Read a ``summary.json`` back with infinities restored as floats."""
    return _restore_inf(json.loads(Path(path).read_text(encoding='utf-8')))


# --- inputs ----------------------------------------------------------------------------------
def _open_test_samples(dataset, split, bag, image_topic, pose_topic, tf, max_gap):
    """``(iterable of test PoseSamples, BagDataset or None, total or None)``.

    A bag is opened here (topics and poses are validated now, before any model is loaded) and
    streamed: images are decoded one at a time. Close the BagDataset when done.
    """
    if bag is not None:
        from posenet_ros.datasets.rosbag_reader import BagDataset

        ds = BagDataset(bag, image_topic=image_topic, pose_topic=pose_topic, tf=tf,
                        max_gap=max_gap, split='test')
        return ds, ds, _count_bag_frames(bag, ds.image_topic)
    from posenet_ros.datasets import load_dataset

    samples = load_dataset(dataset, split)
    return samples, None, len(samples)


def _count_bag_frames(bag, image_topic) -> int | None:
    try:
        from rosbags.highlevel import AnyReader

        with AnyReader([Path(bag)]) as reader:
            topic = image_topic
            conns = [c for c in reader.connections if c.topic == topic]
            return sum(c.msgcount for c in conns) or None
    except Exception:  # noqa: BLE001 - only for the progress bar total
        return None


def _train_samples(dataset, split, train_dataset, meta, notes):
    """Training samples for the baselines, or [] (with a note) when none can be found."""
    from posenet_ros.datasets import load_dataset

    if train_dataset is not None:
        return load_dataset(train_dataset, 'train'), str(train_dataset)
    if dataset is not None and split != 'train':
        try:
            return load_dataset(dataset, 'train'), f'{dataset} (train split)'
        except PoseNetError as exc:
            notes.append(f'no training split in {dataset} for baselines: {exc}')
    training = meta.get('training') or {}
    recorded = training.get('dataset') or (meta.get('config') or {}).get('dataset')
    train_split = str(training.get('train_split') or 'train')
    if recorded and Path(recorded).exists():
        try:
            return (load_dataset(recorded, train_split),
                    f'{recorded} ({train_split} split, from the model metadata)')
        except PoseNetError as exc:
            notes.append(f'training set recorded in the model ({recorded}) unreadable: {exc}')
    notes.append('baselines skipped: no training set (pass --train-dataset DIR)')
    return [], ''


def evaluate(model, out_dir, *, dataset=None, split: str = 'test', bag=None,
             image_topic: str | None = None, pose_topic: str | None = None,
             tf: tuple[str, str] | None = None, max_gap: float = 0.1, dense: int = 0,
             train_dataset=None, baselines: bool = True, nn_features: str = 'auto',
             device: str = 'cpu', limit: int | None = None, progress: bool = True,
             title: str | None = None, map_path=None, verifier_config=None) -> dict:
    """Evaluate the export ``model`` on a dataset split or a bag; report to ``out_dir``.

    Returns the summary (see the module docstring for the files written).

    Give exactly one of ``dataset`` (any folder ``posenet_ros.datasets.load_dataset`` reads,
    with ``split``) or ``bag`` (with ``image_topic`` and ``pose_topic`` or ``tf=(map, cam)``;
    poses are interpolated within ``max_gap`` s). ``dense`` > 0 adds the average of that many
    crops per frame. Baselines use ``train_dataset``, else the dataset's train split, else the
    training set recorded in the model's metadata. ``limit`` evaluates only the first frames.
    ``map_path``: verify and refine every frame against this scene map (``posenet-ros map``);
    frames without intrinsics use the map's.
    """
    from posenet_ros.datasets import load_image
    from posenet_ros.progress import progress as _progress

    if (dataset is None) == (bag is None):
        raise EvaluationError('give exactly one of a dataset folder (--dataset) or a bag (--bag)')
    if dense < 0:
        raise EvaluationError(f'dense must be >= 0 crops, got {dense}')
    if not Path(model).is_file():
        from posenet_ros.errors import ModelNotFoundError

        raise ModelNotFoundError(f'model file {model} does not exist; export one with '
                                 "'posenet-ros train' or pass the right path")
    samples, bag_ds, total = _open_test_samples(dataset, split, bag, image_topic, pose_topic,
                                                tf, max_gap)
    notes: list[str] = []
    reloc = meta = extractor = None
    train, train_src = [], ''
    names, stamps, tpos, tquat = [], [], [], []
    rows: list[tuple] = []
    dense_rows: list[tuple] = []
    feats: list[np.ndarray] = []
    verifications: list = []
    try:
        bar = _progress(samples, total=total if limit is None else min(total or limit, limit),
                   desc='evaluate', unit='frame', disable=not progress)
        for k, s in enumerate(bar):
            if limit is not None and k >= limit:
                break
            frame = load_image(s)
            if reloc is None:  # lazily: a bag without usable frames fails before this
                reloc, meta, train, train_src, extractor = _setup_model(
                    model, device, baselines, dataset, split, train_dataset, nn_features, notes)
                resize, crop = int(meta['input']['resize']), int(meta['input']['crop'])
                _warm_up(reloc, frame, resize, crop, dense)
                if map_path is not None:
                    reloc.attach_map(map_path, verifier_config)
            names.append(s.name or f'{k:06d}')
            stamps.append(math.nan if s.stamp is None else float(s.stamp))
            tpos.append(s.position)
            tquat.append(s.quaternion)
            rows.append(_predict_one(reloc, frame))
            if map_path is not None:
                # seeded with this frame's coarse pose, as the node does
                verifications.append(reloc.verify(frame, s.intrinsics, *rows[-1][:2]))
            if dense:
                dense_rows.append(_predict_dense(reloc, frame, resize, crop, dense))
            if extractor is not None:
                feats.append(extractor([frame])[0])
        bar.close()
        if bag_ds is not None and (limit is None or len(names) < limit):
            bag_ds.check_overlap()
    finally:
        if bag_ds is not None:
            bag_ds.close()
    n = len(names)
    if n == 0:
        raise EvaluationError(f'no frame to evaluate in {dataset or bag}')
    resize, crop = int(meta['input']['resize']), int(meta['input']['crop'])
    gt = GroundTruth(names, np.asarray(stamps, np.float64), np.asarray(tpos).reshape(-1, 3),
                     np.asarray(tquat).reshape(-1, 4))

    methods: dict[str, MethodResult] = {}
    m = MethodResult.empty(n, f'{Path(model).name} ({meta.get("backbone")}, model_id '
                              f'{meta.get("model_id")}), centre crop {crop} of shorter side '
                              f'{resize}')
    m.extra['raw_qnorm'] = np.full(n, np.nan)
    for i, (p, q, qn, ms, ok) in enumerate(rows):
        m.ms[i] = ms
        m.valid[i] = ok
        m.extra['raw_qnorm'][i] = qn
        if ok:
            m.positions[i], m.quaternions[i] = p, q
    methods[MODEL_METHOD] = m
    if dense:
        d = MethodResult.empty(n, f'average of {dense} crops {crop}x{crop} spread over the '
                                  f'frame resized to shorter side {resize} (Dense PoseNet)')
        for i, (p, q, ms, ok) in enumerate(dense_rows):
            d.ms[i], d.valid[i] = ms, ok
            if ok:
                d.positions[i], d.quaternions[i] = p, q
        methods[f'{MODEL_METHOD}_dense{dense}'] = d
        m.extra['dense_ms'] = d.ms
    extra = {}
    if map_path is not None:
        extra['verification'] = _add_refined(methods, m, verifications, gt, map_path)
    if train:
        _add_baselines(methods, train, extractor, feats, n, progress, train_src)

    source = {'model': str(model), 'model_id': meta.get('model_id'),
              'backbone': meta.get('backbone'), 'device': device}
    if bag is not None:
        st = bag_ds.stats
        source.update({'bag': str(bag), 'image_topic': st.image_topic if st else image_topic,
                       'pose_source': st.pose_source if st else ''})
        if st is not None and (st.n_no_pose or st.n_undecodable):
            notes.append(f'{st.n_no_pose} image(s) without ground truth within {max_gap} s and '
                         f'{st.n_undecodable} undecodable image(s) were not evaluated')
    else:
        source.update({'dataset': str(dataset), 'split': split})
    if train_src:
        source['baseline_training_set'] = f'{train_src} ({len(train)} frames)'
    if dense:
        single = np.nanmedian(m.ms)
        dms = np.nanmedian(methods[f'{MODEL_METHOD}_dense{dense}'].ms)
        extra['dense_cost'] = {'crops': dense, 'ms_per_frame_median': float(dms),
                               'single_crop_ms_median': float(single),
                               'slowdown': float(dms / single) if single > 0 else math.nan}
        notes.append(f'dense evaluation ({dense} crops) costs {dms:.1f} ms per frame against '
                     f'{single:.1f} ms for the centre crop ({dms / max(single, 1e-9):.1f}x)')
    train_pos = np.array([s.position for s in train]) if train else None
    return write_report(out_dir, gt, methods, title=title or f'Evaluation of {Path(model).name}',
                        source=source, train_positions=train_pos, notes=notes,
                        extra_summary=extra)


def _add_refined(methods, coarse: MethodResult, vers: list, gt: GroundTruth, map_path) -> dict:
    """Add the ``refined`` method and per-frame columns; return the verification summary."""
    n = len(vers)
    r = MethodResult.empty(n, 'refined pose of frames verified against the scene map '
                              f'{Path(map_path).name} (other frames count as failures)')
    for i, v in enumerate(vers):
        r.ms[i] = v.ms.get('total', math.nan)
        if v.verified:
            r.valid[i] = True
            r.positions[i], r.quaternions[i] = v.position, v.quaternion_wxyz
    methods[REFINED_METHOD] = r
    coarse.extra['ver_status'] = np.array([STATUS_CODE[v.status] for v in vers], float)
    coarse.extra['ver_inliers'] = np.array([v.n_inliers for v in vers], float)
    coarse.extra['ver_ms'] = r.ms.copy()
    stages = {}
    for k in ('features', 'matching', 'pnp', 'total'):
        vals = np.array([v.ms.get(k, math.nan) for v in vers], float)
        vals = vals[np.isfinite(vals)]
        stages[k] = {'p50': float(np.percentile(vals, 50)) if len(vals) else math.nan,
                     'p95': float(np.percentile(vals, 95)) if len(vals) else math.nan}
    return verification_summary(coarse, r, gt, map_path, [v.status for v in vers],
                                np.array([v.n_inliers for v in vers], float), stages)


def verification_summary(coarse: MethodResult, refined: MethodResult, gt: GroundTruth, map_path,
                         statuses: list[str], inliers: np.ndarray, stages: dict) -> dict:
    """The ``verification`` section of a summary (offline and live evaluation).

    ``refined.valid`` marks the verified frames; ``statuses`` holds each frame's status;
    ``stages``: ms p50/p95 per refinement stage.
    """
    r = refined
    n = len(statuses)
    t_err, r_err = frame_errors(r.positions, r.quaternions, gt.positions, gt.quaternions,
                                r.valid)
    ct, cr = frame_errors(coarse.positions, coarse.quaternions, gt.positions, gt.quaternions,
                          coarse.valid)
    ok = r.valid
    wrong = ok & ((t_err > WRONG_VERIFIED[0]) | (r_err > WRONG_VERIFIED[1]))
    n_ok = int(ok.sum())

    def med(a):
        a = np.asarray(a, float)
        a = a[np.isfinite(a)]
        return float(np.median(a)) if len(a) else math.nan

    return {
        'map': str(map_path), 'n_frames': n, 'n_verified': n_ok,
        'n_unverified': statuses.count('unverified'), 'n_rejected': statuses.count('rejected'),
        'verified_fraction': n_ok / n if n else math.nan,
        'verified_median_t_m': med(t_err[ok]), 'verified_median_r_deg': med(r_err[ok]),
        'coarse_median_t_m_on_verified': med(ct[ok]),
        'coarse_median_r_deg_on_verified': med(cr[ok]),
        'wrong_threshold': {'m': WRONG_VERIFIED[0], 'deg': WRONG_VERIFIED[1]},
        'n_wrong_verified': int(wrong.sum()),
        'wrong_verified_fraction': float(wrong.sum() / n_ok) if n_ok else 0.0,
        'median_inliers_verified': med(np.asarray(inliers, float)[ok]),
        'ms': stages,
    }


def _setup_model(model, device, baselines, dataset, split, train_dataset, nn_features, notes):
    """Load the relocalizer, the baselines' training set and the NN feature extractor."""
    reloc = _load_relocalizer(model, device)
    meta = reloc.metadata
    train, train_src, extractor = [], '', None
    if baselines:
        train, train_src = _train_samples(dataset, split, train_dataset, meta, notes)
    if train:
        from posenet_ros.baselines import feature_extractor

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            loaded = reloc.loaded_module if Path(model).suffix.lower() == '.ts' else None
            extractor = feature_extractor(model, meta, nn_features, str(reloc.device),
                                          module=loaded)
        notes += [str(c.message) for c in caught if 'nearest-neighbour' in str(c.message)]
    return reloc, meta, train, train_src, extractor


def _add_baselines(methods, train, extractor, test_feats, n, progress, train_src):
    """Mean-pose and nearest-neighbour predictions for the ``n`` evaluated frames."""
    from posenet_ros.baselines import mean_pose, nearest_neighbour
    from posenet_ros.datasets import load_image
    from posenet_ros.progress import progress as _progress

    train_p = np.array([s.position for s in train])
    train_q = np.array([s.quaternion for s in train])
    p, q = mean_pose(train_p, train_q)
    methods['mean_pose'] = MethodResult(
        np.tile(p, (n, 1)), np.tile(q, (n, 1)), np.ones(n, bool), None,
        f'mean training pose of {train_src} ({len(train)} frames)')
    if extractor is None:
        return
    t0 = time.perf_counter()
    train_feats = []
    for s in _progress(train, desc='nn features', unit='frame', disable=not progress):
        train_feats.append(extractor([load_image(s)])[0])
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx = nearest_neighbour(np.stack(train_feats), np.stack(test_feats))
    search_ms = (time.perf_counter() - t0) * 1e3 / n
    methods['nearest_neighbour'] = MethodResult(
        train_p[idx], train_q[idx], np.ones(n, bool), np.full(n, search_ms),
        f'pose of the nearest training frame by cosine similarity of {extractor.description} '
        f'({len(train)} frames indexed in {build_s:.1f} s; ms = search only, feature '
        'extraction not included)')


# --- CLI -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``posenet-ros evaluate``."""
    ap = argparse.ArgumentParser(
        prog='posenet-ros evaluate',
        description='Evaluate an exported PoseNet on a dataset split or a rosbag2 and write a '
                    'report (CSV, JSON, Markdown, CDF/map plots, TUM trajectories).')
    ap.add_argument('--model', required=True, type=Path, help='exported model (.ts or .pt2)')
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument('--dataset', type=Path, help='dataset folder (manifest/Cambridge/7-Scenes)')
    src.add_argument('--bag', type=Path, help='rosbag2 folder or .db3/.mcap file')
    ap.add_argument('--split', default='test', help='dataset split to evaluate (default: test)')
    ap.add_argument('--image-topic', help='image topic of the bag (default: its only one)')
    ap.add_argument('--pose-topic', help='ground-truth pose topic of the bag (camera optical '
                    'frame in the map frame)')
    ap.add_argument('--tf', nargs=2, metavar=('MAP', 'CAM'),
                    help='take ground truth from /tf: map frame and camera optical frame')
    ap.add_argument('--max-gap', type=float, default=0.1,
                    help='largest gap (s) between the two ground-truth poses an image stamp is '
                         'interpolated between (default 0.1)')
    ap.add_argument('--out', required=True, type=Path, help='report folder')
    ap.add_argument('--dense', type=int, default=0, metavar='N',
                    help='also evaluate the average over N crops per frame (Dense PoseNet)')
    ap.add_argument('--train-dataset', type=Path,
                    help="training set for the baselines (default: the dataset's train split)")
    ap.add_argument('--no-baselines', action='store_true', help='skip the baselines')
    ap.add_argument('--nn-features', default='auto',
                    choices=('auto', 'network', 'imagenet', 'none'),
                    help='feature space of the nearest-neighbour baseline (default auto: the '
                         "network's own features, else ImageNet EfficientNet-Lite0)")
    ap.add_argument('--device', default='cpu', help="torch device, e.g. 'cpu' or 'cuda'")
    ap.add_argument('--limit', type=int, help='evaluate only the first N frames')
    ap.add_argument('--map', type=Path, dest='map_path',
                    help="scene map of the model ('posenet-ros map'): also verify and refine "
                         'every frame and report coarse and refined side by side')
    ap.add_argument('--live', action='store_true',
                    help='play the bag into a live relocalization node (started here) and '
                         'evaluate its published poses, with end-to-end latency')
    ap.add_argument('--rate', type=float, default=1.0,
                    help='--live only: playback rate factor (default 1.0 = real time)')
    ap.add_argument('--threads', type=int, default=0,
                    help='torch CPU threads (0 = torch default; 1 is often fastest for small '
                         'models on a busy CPU)')
    ap.add_argument('--quiet', action='store_true', help='no progress bar')
    return ap


def main(argv: list[str] | None = None) -> int:
    """``posenet-ros evaluate``; prints the Markdown summary and returns an exit code."""
    args = build_parser().parse_args(argv)
    if args.tf and args.pose_topic:
        raise EvaluationError('give either --pose-topic or --tf MAP CAM, not both')
    if args.dataset is not None and (args.tf or args.pose_topic or args.image_topic):
        raise EvaluationError('--image-topic/--pose-topic/--tf only apply to --bag')
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.live:
        if args.bag is None:
            raise EvaluationError('--live needs --bag (the node is fed by replaying a bag)')
        from posenet_ros.node.live_eval import live_evaluate

        summary = live_evaluate(args.model, args.bag, args.out, image_topic=args.image_topic,
                                pose_topic=args.pose_topic,
                                tf=tuple(args.tf) if args.tf else None, max_gap=args.max_gap,
                                rate=args.rate, device=args.device,
                                train_dataset=args.train_dataset,
                                baselines=not args.no_baselines, nn_features=args.nn_features,
                                progress=not args.quiet, map_path=args.map_path)
    else:
        summary = evaluate(args.model, args.out, dataset=args.dataset, split=args.split,
                           bag=args.bag, image_topic=args.image_topic,
                           pose_topic=args.pose_topic, tf=tuple(args.tf) if args.tf else None,
                           max_gap=args.max_gap, dense=args.dense,
                           train_dataset=args.train_dataset, baselines=not args.no_baselines,
                           nn_features=args.nn_features, device=args.device, limit=args.limit,
                           progress=not args.quiet, map_path=args.map_path)
    print(format_markdown(summary))
    print(f'report written to {args.out}')
    return 0
