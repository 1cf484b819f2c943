"""Evaluate an exported model on a dataset split or a rosbag2 (``posenet-ros evaluate``).

One typed function, :func:`evaluate`, and a thin CLI, :func:`main`. A report folder holds:

* ``frames.csv`` - one row per frame: name, stamp, true and predicted pose (wxyz), translation
  (m) and rotation (deg) error, inference ms, raw quaternion norm, and the errors of every
  baseline (and of dense evaluation) on the same frame;
* ``summary.json`` / ``summary.md`` - median/mean/p90 errors, recall at (5 cm, 5 deg),
  (25 cm, 2 deg), (0.5 m, 5 deg), (1 m, 10 deg), ms p50/p95, for the model and each baseline
  (failed frames count as infinite error; see ``posenet_ros.evaluation.metrics``);
* ``cdf.png`` (paper Fig. 7), ``map.png`` (Fig. 4), ``errors_over_time.png``;
* ``prediction.tum`` / ``ground_truth.tum`` - TUM trajectories for ``evo_ape tum``.

With a scene map (``map_path``, ``--map``), every frame is also verified and refined
(``posenet_ros.verify``, the same code path as the node): the method ``refined`` holds the
refined pose of verified frames (other frames count as failures), ``frames.csv`` gets the
status/inliers/ms of each frame, and ``summary.json`` a ``verification`` section: verified
fraction, median error of verified frames, how often a verified pose is wrong (> 0.25 m or
> 2 deg), and the refinement's ms per stage (p50/p95).

Baselines (``posenet_ros.evaluation.baselines``) run on the very same
frames: the mean training pose and
the nearest training frame in feature space. Dense evaluation (``dense=N``, the paper's Dense
PoseNet) averages the predictions of N crops spread over the resized frame; its cost is
reported next to the single centre crop's.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import EvaluationError, NonFiniteOutputError
from posenet_ros.datasets.bagio import add_frame_args, frame_kwargs
from posenet_ros.evaluation.report import (
    MODEL_METHOD,
    REFINED_METHOD,
    STATUS_CODE,
    GroundTruth,
    MethodResult,
    add_baselines,
    baseline_training_set,
    format_markdown,
    load_summary,
    selection_warning,
    verification_summary,
    write_report,
)

# The report names are re-exported: ``posenet_ros.evaluation.report`` is where they live.
__all__ = [
    'evaluate', 'main', 'MethodResult', 'GroundTruth', 'write_report', 'dense_windows',
    'dense_grid', 'format_markdown', 'load_summary',
]
log = logging.getLogger('posenet_ros.evaluation.evaluate')

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

    from posenet_ros.model.preprocessing import resize_shorter_side_uint8

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
    from posenet_ros.model.relocalizer import Relocalizer

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
    from posenet_ros.evaluation.baselines import average_quaternions

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


# --- inputs ----------------------------------------------------------------------------------
def _open_test_samples(dataset, split, bag, image_topic, pose_topic, tf, max_gap, frames):
    """``(iterable of test PoseSamples, BagDataset or None, total or None)``.

    A bag is opened here (topics and poses are validated now, before any model is loaded) and
    streamed: images are decoded one at a time. Close the BagDataset when done.
    """
    if bag is not None:
        from posenet_ros.datasets.rosbag_reader import BagDataset

        ds = BagDataset(bag, image_topic=image_topic, pose_topic=pose_topic, tf=tf,
                        max_gap=max_gap, split='test', **frames)
        return ds, ds, _count_bag_frames(bag, ds.image_topic)
    from posenet_ros.datasets import load_dataset

    samples = load_dataset(dataset, split)
    return samples, None, len(samples)


def _count_bag_frames(bag, image_topic) -> int | None:
    try:
        from posenet_ros.datasets.bagio import bag_reader

        with bag_reader(bag, typed=False) as (reader, _):
            topic = image_topic
            conns = [c for c in reader.connections if c.topic == topic]
            return sum(c.msgcount for c in conns) or None
    except Exception:  # noqa: BLE001 - only for the progress bar total
        return None


def evaluate(model, out_dir, *, dataset=None, split: str = 'test', bag=None,
             image_topic: str | None = None, pose_topic: str | None = None,
             tf: tuple[str, str] | None = None, max_gap: float = 0.1, dense: int = 0,
             train_dataset=None, baselines: bool = True, nn_features: str = 'auto',
             device: str = 'cpu', limit: int | None = None, progress: bool = True,
             title: str | None = None, map_path=None, verifier_config=None,
             camera_frame: str | None = None, pose_frame: str | None = None,
             camera_in_base=None) -> dict:
    """Evaluate the export ``model`` on a dataset split or a bag; report to ``out_dir``.

    Returns the summary (see the module docstring for the files written).

    Give exactly one of ``dataset`` (any folder ``posenet_ros.datasets.load_dataset`` reads,
    with ``split``) or ``bag`` (with ``image_topic`` and ``pose_topic`` or ``tf=(map, cam)``;
    poses are interpolated within ``max_gap`` s; a pose source of another frame than the camera,
    e.g. base_link odometry, is composed with ``camera_in_base`` or the bag's /tf_static, see
    :class:`~posenet_ros.datasets.rosbag_reader.BagDataset`). ``dense`` > 0 adds the average of
    that many crops per frame. Baselines use ``train_dataset``, else the dataset's train split,
    else the training set recorded in the model's metadata. ``limit`` evaluates only the first
    frames. ``map_path``: verify and refine every frame against this scene map
    (``posenet-ros map``); frames without intrinsics use the map's.
    """
    from posenet_ros.core.progress import progress as _progress
    from posenet_ros.datasets import load_image

    if (dataset is None) == (bag is None):
        raise EvaluationError('give exactly one of a dataset folder (--dataset) or a bag (--bag)')
    if dense < 0:
        raise EvaluationError(f'dense must be >= 0 crops, got {dense}')
    if not Path(model).is_file():
        from posenet_ros.core.errors import ModelNotFoundError

        raise ModelNotFoundError(f'model file {model} does not exist; export one with '
                                 "'posenet-ros train' or pass the right path")
    frames = {'camera_frame': camera_frame, 'pose_frame': pose_frame,
              'camera_in_base': camera_in_base}
    samples, bag_ds, total = _open_test_samples(dataset, split, bag, image_topic, pose_topic,
                                                tf, max_gap, frames)
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
        add_baselines(methods, train, extractor, feats, n, progress, train_src)

    source = {'model': str(model), 'model_id': meta.get('model_id'),
              'backbone': meta.get('backbone'), 'device': device}
    if bag is not None:
        st = bag_ds.stats
        source.update({'bag': str(bag), 'image_topic': st.image_topic if st else image_topic,
                       'pose_source': st.pose_source if st else ''})
        if st is not None and st.extrinsic:
            source['ground_truth_frames'] = (f'{st.pose_of} poses in {st.pose_frame} composed '
                                             f'with {st.extrinsic} to {st.camera_frame}')
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


def _setup_model(model, device, baselines, dataset, split, train_dataset, nn_features, notes):
    """Load the relocalizer, the baselines' training set and the NN feature extractor."""
    reloc = _load_relocalizer(model, device)
    meta = reloc.metadata
    warning = selection_warning(meta, dataset, split)
    if warning:
        log.warning(warning)
        notes.append(warning)
    train, train_src, extractor = [], '', None
    if baselines:
        train, train_src = baseline_training_set(dataset, split, train_dataset, meta, notes)
    if train:
        from posenet_ros.evaluation.baselines import feature_extractor

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            loaded = reloc.loaded_module if Path(model).suffix.lower() == '.ts' else None
            extractor = feature_extractor(model, meta, nn_features, str(reloc.device),
                                          module=loaded)
        notes += [str(c.message) for c in caught if 'nearest-neighbour' in str(c.message)]
    return reloc, meta, train, train_src, extractor


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
    ap.add_argument('--pose-topic', help='ground-truth pose topic of the bag (PoseStamped, '
                    'PoseWithCovarianceStamped or Odometry in the map frame; see --pose-frame)')
    ap.add_argument('--tf', nargs=2, metavar=('MAP', 'CAM'),
                    help='take ground truth from /tf: map frame and camera optical frame')
    add_frame_args(ap)
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
    frames = frame_kwargs(args)
    if args.dataset is not None and (args.tf or args.pose_topic or args.image_topic
                                     or any(v is not None for v in frames.values())):
        raise EvaluationError('--image-topic/--pose-topic/--tf/--pose-frame/--camera-frame/'
                              '--camera-in-base only apply to --bag')
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.live:
        if args.bag is None:
            raise EvaluationError('--live needs --bag (the node is fed by replaying a bag)')
        if any(v is not None for v in frames.values()):
            raise EvaluationError('--live reads frames from the bag only (/tf_static for a '
                                  'pose source of another frame); --pose-frame/--camera-frame/'
                                  '--camera-in-base are not supported with --live: run without '
                                  '--live, or extract-bag with them first')
        from posenet_ros.ros.live_eval import live_evaluate

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
                           progress=not args.quiet, map_path=args.map_path, **frames)
    print(format_markdown(summary))
    print(f'report written to {args.out}')
    return 0
