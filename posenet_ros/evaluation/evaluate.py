"""Evaluate an exported model on a dataset split or a rosbag2 (``posenet-ros evaluate``).

One typed function, :func:`evaluate`, and a thin CLI, :func:`main`. A report folder holds:

* ``frames.csv`` - one row per frame: name, stamp, true and predicted pose (wxyz), translation
  (m) and rotation (deg) error, inference ms, raw quaternion norm, and the errors of every
  baseline (and of dense evaluation) on the same frame;
* ``summary.json`` / ``summary.md`` - median/mean/p90 errors, recall at (5 cm, 5 deg),
  (25 cm, 2 deg), (0.5 m, 5 deg), (1 m, 10 deg), ms p50/p95, for the model and each baseline
  (failed frames count as infinite error; see ``posenet_ros.evaluation.metrics``);
* ``cdf.png`` (paper Fig. 7), ``map.png`` (Fig. 4), ``errors_over_time.png``;
* ``prediction.tum`` / ``ground_truth.tum`` - TUM trajectories for ``evo_ape tum``; with a
  map also ``verified.tum`` (verified frames only). Each leaves out the frames without a pose,
  which evo cannot show: ``summary.json``'s ``trajectories`` counts them.

With a scene map (``map_path``, ``--map``), every frame is also verified and refined
(``posenet_ros.verify``, the same code path as the node): the method ``refined`` holds the
refined pose of verified frames (other frames count as failures), ``frames.csv`` gets the
status/inliers/ms of each frame, and ``summary.json`` a ``verification`` section: verified
fraction, median error of verified frames, how often a verified pose is wrong (> 0.25 m or
> 2 deg), and the refinement's ms per stage (p50/p95).

Baselines (``posenet_ros.evaluation.baselines``) run on the very same frames: the mean
training pose and the nearest training frame in feature space. Dense evaluation (``dense=N``,
the paper's Dense PoseNet) averages the predictions of N crops spread over the resized frame;
its cost is reported next to the single centre crop's.

Every model call on a frame is in :func:`_localize_frames`; the report (ground truth,
baselines, verification section, files) is assembled by
``posenet_ros.evaluation.builder.ReportBuilder``, as in the live evaluation.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import EvaluationError, NonFiniteOutputError
from posenet_ros.datasets.bagio import add_frame_args, frame_kwargs
from posenet_ros.datasets.tf_timing import parse_max_gap
from posenet_ros.evaluation.builder import Baselines, ReportBuilder
from posenet_ros.evaluation.report import (
    MODEL_METHOD,
    REFINED_METHOD,
    STATUS_CODE,
    GroundTruth,
    MethodResult,
    format_markdown,
    load_summary,
    selection_warning,
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


# --- the model on each frame ----------------------------------------------------------------
@dataclass
class FrameResult:
    """What the model gave for one frame; ``ok`` False = failure (non-finite output)."""

    position: np.ndarray | None
    quaternion_wxyz: np.ndarray | None
    raw_qnorm: float
    ms: float
    ok: bool
    dense: tuple | None = None  # (position, wxyz, ms, ok) of the dense average
    verification: object = None  # posenet_ros.verify Verification, with a scene map


def _load_relocalizer(model, device: str):
    from posenet_ros.model.relocalizer import Relocalizer

    return Relocalizer(model, device=device)


def _localize_frames(reloc, frames: Iterable, *, dense: int = 0, map_path=None,
                     verifier_config=None) -> Iterator[FrameResult]:
    """Every model call of the offline evaluation: one :class:`FrameResult` per frame.

    ``frames``: ``(image, K or None)`` pairs, consumed lazily. Before the first frame: untimed
    warm-up calls at its size, and the scene map attached. With a map, each frame is verified
    seeded with its own coarse pose, as the node does. ``dense`` > 0 adds the average of that
    many crops.
    """
    from posenet_ros.localizer import Localizer

    loc = Localizer(reloc)
    resize = int(reloc.metadata['input']['resize'])
    crop = int(reloc.metadata['input']['crop'])
    for k, (frame, K) in enumerate(frames):
        if k == 0:
            _warm_up(reloc, frame, resize, crop, dense)
            if map_path is not None:
                loc.attach_map(map_path, verifier_config)
        result, localized = _predict_one(loc, frame)
        if map_path is not None:
            result.verification = _verify_one(loc, localized, frame, K)
        if dense:
            result.dense = _predict_dense(reloc, frame, resize, crop, dense)
        yield result


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


def _predict_one(loc, frame: np.ndarray):
    """The centre-crop pose of one frame, timed: ``(FrameResult, Localizer result or None)``."""
    t0 = time.perf_counter()
    try:
        res = loc.localize(frame)
    except NonFiniteOutputError:
        return FrameResult(None, None, math.nan, (time.perf_counter() - t0) * 1e3, False), None
    ms = float(res.latency_ms)
    if not math.isfinite(ms):
        ms = (time.perf_counter() - t0) * 1e3
    return FrameResult(np.asarray(res.camera.position, np.float64),
                       np.asarray(res.camera.quaternion_wxyz, np.float64),
                       float(res.raw_quat_norm), ms, True), res


def _verify_one(loc, localized, frame: np.ndarray, K):
    """The frame's ``Verification``, seeded with its own coarse pose (as the node does)."""
    if localized is None:  # no coarse pose: nothing to seed the candidate map frames with
        return loc.map_localizer.localize(frame, K, None, None, None)
    return loc.verify(localized, frame, K).verification


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


def _recorded(report: ReportBuilder, samples: Iterable) -> Iterator[tuple]:
    """``(image, K)`` of each sample, once its ground truth is recorded in ``report``."""
    from posenet_ros.datasets import load_image

    for s in samples:
        frame = load_image(s)
        report.add_frame(s, frame)
        yield frame, s.intrinsics


# --- evaluation ------------------------------------------------------------------------------
def evaluate(model, out_dir, *, dataset=None, split: str = 'test', bag=None,
             image_topic: str | None = None, pose_topic: str | None = None,
             tf: tuple[str, str] | None = None, max_gap=None, dense: int = 0,
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

    _check_arguments(model, dataset, bag, dense)
    samples, bag_ds, total = _open_test_samples(
        dataset, split, bag, image_topic, pose_topic, tf, max_gap,
        {'camera_frame': camera_frame, 'pose_frame': pose_frame,
         'camera_in_base': camera_in_base})
    report = None
    try:
        bar = _progress(samples, total=total if limit is None else min(total or limit, limit),
                        desc='evaluate', unit='frame', disable=not progress)
        todo = iter(bar if limit is None else itertools.islice(bar, limit))
        first = next(todo, None)
        if first is not None:  # the model is loaded once the input gave a usable frame
            reloc, report = _setup_model(
                model, device, dataset=dataset, split=split, baselines=baselines,
                train_dataset=train_dataset, nn_features=nn_features)
            results = list(_localize_frames(
                reloc, _recorded(report, itertools.chain([first], todo)), dense=dense,
                map_path=map_path, verifier_config=verifier_config))
        bar.close()
        n = report.n_frames if report is not None else 0
        if bag_ds is not None and (limit is None or n < limit):  # the whole bag was read
            bag_ds.check_overlap()
    finally:
        if bag_ds is not None:
            bag_ds.close()
    if report is None:
        raise EvaluationError(f'no frame to evaluate in {dataset or bag}')
    _add_model_methods(report, results, dense=dense, map_path=map_path)
    if bag is not None:
        report.describe_bag(bag, bag_ds.stats, image_topic, max_gap)
    else:
        report.source.update({'dataset': str(dataset), 'split': split})
    return report.write(out_dir, title or f'Evaluation of {Path(model).name}', progress)


def _check_arguments(model, dataset, bag, dense: int) -> None:
    if (dataset is None) == (bag is None):
        raise EvaluationError('give exactly one of a dataset folder (--dataset) or a bag (--bag)')
    if dense < 0:
        raise EvaluationError(f'dense must be >= 0 crops, got {dense}')
    if not Path(model).is_file():
        from posenet_ros.core.errors import ModelNotFoundError

        raise ModelNotFoundError(f'model file {model} does not exist; export one with '
                                 "'posenet-ros train' or pass the right path")


def _setup_model(model, device: str, *, dataset, split: str, baselines: bool, train_dataset,
                 nn_features: str) -> tuple:
    """``(relocalizer, ReportBuilder)``: the model loaded, the baselines prepared."""
    reloc = _load_relocalizer(model, device)
    meta = reloc.metadata
    notes: list[str] = []
    warning = selection_warning(meta, dataset, split, model)
    if warning:
        log.warning(warning)
        notes.append(warning)
    base = Baselines()
    if baselines:
        loaded = reloc.loaded_module if Path(model).suffix.lower() == '.ts' else None
        base = Baselines.prepare(model, meta, notes, dataset=dataset, split=split,
                                 train_dataset=train_dataset, nn_features=nn_features,
                                 device=str(reloc.device), module=loaded)
    return reloc, ReportBuilder(model, meta, device=device, baselines=base, notes=notes)


def _fill(method: MethodResult, i: int, position, quaternion, ms: float, ok: bool) -> None:
    method.ms[i], method.valid[i] = ms, ok
    if ok:
        method.positions[i], method.quaternions[i] = position, quaternion


def _add_model_methods(report: ReportBuilder, results: list[FrameResult], *, dense: int,
                       map_path) -> None:
    """The model (centre crop), its dense average and its refined poses, as report methods."""
    n = len(results)
    inp = report.meta['input']
    resize, crop = int(inp['resize']), int(inp['crop'])
    m = report.add_method(MODEL_METHOD, MethodResult.empty(
        n, f'{report.model_label}, centre crop {crop} of shorter side {resize}'))
    m.extra['raw_qnorm'] = np.array([r.raw_qnorm for r in results], float)
    for i, r in enumerate(results):
        _fill(m, i, r.position, r.quaternion_wxyz, r.ms, r.ok)
    if dense:
        d = report.add_method(f'{MODEL_METHOD}_dense{dense}', MethodResult.empty(
            n, f'average of {dense} crops {crop}x{crop} spread over the frame resized to '
               f'shorter side {resize} (Dense PoseNet)'))
        for i, r in enumerate(results):
            _fill(d, i, *r.dense)
        m.extra['dense_ms'] = d.ms
        single, dms = float(np.nanmedian(m.ms)), float(np.nanmedian(d.ms))
        report.sections['dense_cost'] = {
            'crops': dense, 'ms_per_frame_median': dms, 'single_crop_ms_median': single,
            'slowdown': dms / single if single > 0 else math.nan}
        report.notes.append(f'dense evaluation ({dense} crops) costs {dms:.1f} ms per frame '
                            f'against {single:.1f} ms for the centre crop '
                            f'({dms / max(single, 1e-9):.1f}x)')
    if map_path is not None:
        _add_refined(report, m, [r.verification for r in results], map_path)


def _add_refined(report: ReportBuilder, coarse: MethodResult, vers: list, map_path) -> None:
    """Add the ``refined`` method, the per-frame verification columns and section."""
    r = MethodResult.empty(len(vers), 'refined pose of frames verified against the scene map '
                                      f'{Path(map_path).name} (other frames count as failures)')
    for i, v in enumerate(vers):
        _fill(r, i, v.position, v.quaternion_wxyz, v.ms.get('total', math.nan), v.verified)
    coarse.extra['ver_status'] = np.array([STATUS_CODE[v.status] for v in vers], float)
    coarse.extra['ver_inliers'] = np.array([v.n_inliers for v in vers], float)
    coarse.extra['ver_ms'] = r.ms.copy()
    # which map session (index into the map header's sessions) each verified frame matched
    from posenet_ros.verify import load_map
    from posenet_ros.verify.sessions import session_names

    names = session_names(load_map(map_path).header)
    coarse.extra['ver_session'] = np.array(
        [names.index(v.session) if v.session in names else -1 for v in vers], float)
    stages = {}
    for k in ('features', 'matching', 'pnp', 'total'):
        vals = np.array([v.ms.get(k, math.nan) for v in vers], float)
        vals = vals[np.isfinite(vals)]
        stages[k] = {'p50': float(np.percentile(vals, 50)) if len(vals) else math.nan,
                     'p95': float(np.percentile(vals, 95)) if len(vals) else math.nan}
    report.add_verification(REFINED_METHOD, r, coarse=coarse, map_path=map_path,
                            statuses=[v.status for v in vers],
                            inliers=coarse.extra['ver_inliers'], stages=stages)


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
    ap.add_argument('--max-gap', nargs='+', metavar='[FRAME=]SECONDS',
                    help='largest gap (s) between two ground-truth samples of a pose edge an '
                         'image stamp is interpolated between: one value, or per edge by child '
                         "frame, e.g. odom=0.5 (default: each edge's own, from its rate)")
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
                                tf=tuple(args.tf) if args.tf else None,
                                max_gap=parse_max_gap(args.max_gap),
                                rate=args.rate, device=args.device,
                                train_dataset=args.train_dataset,
                                baselines=not args.no_baselines, nn_features=args.nn_features,
                                progress=not args.quiet, map_path=args.map_path)
    else:
        summary = evaluate(args.model, args.out, dataset=args.dataset, split=args.split,
                           bag=args.bag, image_topic=args.image_topic,
                           pose_topic=args.pose_topic, tf=tuple(args.tf) if args.tf else None,
                           max_gap=parse_max_gap(args.max_gap), dense=args.dense,
                           train_dataset=args.train_dataset, baselines=not args.no_baselines,
                           nn_features=args.nn_features, device=args.device, limit=args.limit,
                           progress=not args.quiet, map_path=args.map_path, **frames)
    print(format_markdown(summary))
    print(f'report written to {args.out}')
    return 0
