"""Build the scene map from posed frames (``posenet-ros map``).

:func:`build_map` reads the frames of any dataset the trainer reads (manifest, Cambridge,
7-Scenes, rosbag2; by default the training set recorded in the export), then

1. extracts local features (SIFT by default, ``--features orb`` for speed) of every frame,
2. computes the network's global (retrieval) feature of every frame (the export's feature
   output, the same pass a query frame gets at run time),
3. chooses covisible pairs from the known poses (:mod:`~posenet_ros.verify.pairs`),
4. matches each pair (mutual ratio test) and keeps matches within ``epipolar_px`` of the
   epipolar line given by the known relative pose (Sampson distance),
5. triangulates multi-view tracks with the known poses and filters them
   (:mod:`~posenet_ros.verify.triangulation`),
6. writes one versioned map file beside the export (:mod:`~posenet_ros.verify.mapfile`).
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import MapBuildError, MissingIntrinsicsError
from posenet_ros.verify.features import (
    DEFAULT_MAX_FEATURES,
    FEATURE_KINDS,
    FeatureSpec,
    extract_features,
    match_descriptors,
    matcher_descriptors,
)
from posenet_ros.verify.mapfile import (
    SceneMap,
    default_map_path,
    frames_fingerprint,
    save_map,
)
from posenet_ros.verify.pairs import DEFAULT_RANKS, select_pairs
from posenet_ros.verify.triangulation import (
    fundamental_from_poses,
    sampson_distance,
    triangulate_tracks,
)

__all__ = ['MapConfig', 'build_map', 'parse_intrinsics', 'main']

log = logging.getLogger(__name__)


@dataclass
class MapConfig:
    """Mapping parameters (stored in the map header)."""

    feature: str = 'sift'
    max_features: int = DEFAULT_MAX_FEATURES
    preprocess: str = 'clahe'  # grey-image preparation before detection (features.PREPROCESSING)
    contrast_threshold: float = 0.04  # SIFT's, on the prepared image
    relative_contrast: bool = True  # scale it down on low-contrast frames
    ratio: float = 0.8  # Lowe's ratio test, both directions
    epipolar_px: float = 2.0  # Sampson distance to the epipolar line of the known poses
    max_view_angle_deg: float = 40.0  # pairs: optical axes at most this far apart
    ranks: tuple = DEFAULT_RANKS  # pairs: which nearest covisible frames (log-spaced)
    min_views: int = 3  # a point needs this many consistent views
    min_angle_deg: float = 3.0  # ... and this triangulation angle
    max_reproj_px: float = 2.0  # ... with every view within this reprojection error
    min_points: int = 100  # fewer triangulated points: the map is unusable, fail


def parse_intrinsics(text: str):
    """``'fx,fy,cx,cy'`` (pixels of the stored images) -> 3x3 K."""
    from posenet_ros.datasets.types import intrinsics_matrix

    try:
        vals = [float(v) for v in str(text).replace(' ', '').split(',')]
    except ValueError:
        vals = []
    if len(vals) != 4 or not all(np.isfinite(vals)) or vals[0] <= 0 or vals[1] <= 0:
        raise MissingIntrinsicsError(f'--intrinsics {text!r} is not valid; give four numbers '
                                     'fx,fy,cx,cy in pixels of the stored images, e.g. '
                                     '--intrinsics 525,525,319.5,239.5')
    return intrinsics_matrix(*vals)


class _Steps:
    """Progress per step (``core.progress``: a tqdm bar on a terminal, else log lines)."""

    def __init__(self, show: bool):
        self.show = show

    def __call__(self, iterable, desc: str, total: int):
        from posenet_ros.core.progress import progress

        yield from progress(iterable, total=total, desc=f'map: {desc}', unit='it',
                            disable=not self.show)


def _frame_intrinsics(samples, K_override, source) -> np.ndarray:
    if K_override is not None:
        return np.repeat(np.asarray(K_override, np.float64)[None], len(samples), axis=0)
    missing = [s.name for s in samples if s.intrinsics is None]
    if missing:
        raise MissingIntrinsicsError(
            f'{len(missing)} of {len(samples)} frames of {source} have no camera intrinsics '
            f'(first: {missing[0]}); the map needs them to triangulate. Pass --intrinsics '
            'fx,fy,cx,cy (pixels of the stored images), add fx,fy,cx,cy columns to the '
            "manifest's poses.csv, or record the camera's sensor_msgs/CameraInfo in the bag "
            '(<image namespace>/camera_info)')
    return np.stack([s.intrinsics for s in samples])


def _load_frames(dataset, split, kind, model_meta, model_path=None):
    from posenet_ros.datasets import load_dataset

    if dataset is None:
        from posenet_ros.model.paths import recorded_dataset, recorded_dataset_candidates

        training = model_meta.get('training') or {}
        split = training.get('train_split') or split
        kind = training.get('dataset_kind') or kind
        dataset = recorded_dataset(model_meta, model_path)
        if dataset is None:
            tried = [str(p) for p in recorded_dataset_candidates(model_meta, model_path)]
            raise MapBuildError(
                'the export records no training set that exists here (tried '
                f'{", ".join(tried) or "none recorded"}); pass --dataset DIR_OR_BAG with the '
                'posed frames to map')
    samples = load_dataset(dataset, split, kind=kind)
    if not samples:
        raise MapBuildError(f'{dataset} ({split} split) has no frames to map; pass a dataset '
                            'with posed frames')
    return samples, str(dataset), split


def _feature_model(model: Path, device: str, enabled: bool):
    """The export as loaded for inference, when it gives the map its retrieval features."""
    if not enabled:
        return None
    from posenet_ros.model.relocalizer import Relocalizer

    reloc = Relocalizer(model, device, warmup=1)
    if not reloc.feature_dim:
        log.warning('%s returns no retrieval feature (exported before the export returned '
                    'one); the map gets none and candidate frames are chosen by the coarse '
                    'pose only: re-export the model to get retrieval', model)
        return None
    return reloc


def _frame_features(samples, K, cfg: MapConfig, steps, reloc):
    """Local features, image sizes and (with ``reloc``) retrieval features of every frame.

    The retrieval feature is the export's own feature output, the pass a query frame gets at
    run time, so map and query features live in one space.
    """
    from posenet_ros.datasets import load_image

    feats, sizes, globals_ = [], [], []
    spec = feature_spec(cfg)
    for s, k in steps(zip(samples, K), 'local and global features', len(samples)):
        img = load_image(s)
        h, w = img.shape[:2]
        if not (0 <= k[0, 2] < w and 0 <= k[1, 2] < h):
            raise MissingIntrinsicsError(
                f'frame {s.name}: principal point ({k[0, 2]:.1f}, {k[1, 2]:.1f}) lies outside '
                f'the {w}x{h} image; the intrinsics are for another resolution. Pass '
                '--intrinsics fx,fy,cx,cy for the stored images')
        sizes.append((w, h))
        feats.append(extract_features(img, spec))
        if reloc is not None:
            globals_.append(reloc.predict(img).feature)
    return feats, sizes, globals_


def feature_spec(cfg: MapConfig) -> FeatureSpec:
    """The local-feature settings of a map built with ``cfg`` (the query uses the same)."""
    return FeatureSpec(kind=cfg.feature, max_features=cfg.max_features, preprocess=cfg.preprocess,
                       contrast_threshold=cfg.contrast_threshold,
                       relative=cfg.relative_contrast)


def _geometric_matches(feats, T, K, pairs, cfg: MapConfig, steps):
    """``({(i, j): matches (M, 2)}, raw match count)``: matches on their epipolar lines."""
    matches = {}
    n_raw = 0
    cache: dict[int, np.ndarray] = {}

    def mdesc(i):
        if i not in cache:
            if len(cache) > 64:
                cache.pop(next(iter(cache)))
            cache[i] = matcher_descriptors(feats[i].desc, cfg.feature)
        return cache[i]

    for i, j in steps(pairs, 'match pairs', len(pairs)):
        m = match_descriptors(mdesc(i), mdesc(j), cfg.feature, cfg.ratio, mutual=True)
        n_raw += len(m)
        if len(m) < 8:
            continue
        F = fundamental_from_poses(T[i], T[j], K[i], K[j])
        d = sampson_distance(F, feats[i].xy[m[:, 0]].astype(np.float64),
                             feats[j].xy[m[:, 1]].astype(np.float64))
        m = m[d <= cfg.epipolar_px]
        if len(m):
            matches[(int(i), int(j))] = m
    return matches, n_raw


def _observations(tracks, feats, n_frames: int):
    """Per-frame observations sorted by frame: ``(offsets, xy, desc, point ids)``."""
    order = np.lexsort((tracks.obs_kp, tracks.obs_frame))
    of, ok_, op = tracks.obs_frame[order], tracks.obs_kp[order], tracks.obs_point[order]
    width = feats[0].desc.shape[1]
    obs_xy = np.zeros((len(of), 2), np.float32)
    obs_desc = np.zeros((len(of), width), np.uint8)
    offsets = np.searchsorted(of, np.arange(n_frames + 1)).astype(np.int64)
    for f in np.flatnonzero(np.diff(offsets)):  # sorted by frame: each frame's rows are a slice
        rows = slice(offsets[f], offsets[f + 1])
        obs_xy[rows] = feats[f].xy[ok_[rows]]
        obs_desc[rows] = feats[f].desc[ok_[rows]]
    return offsets, obs_xy, obs_desc, op


def _check_points(tracks, cfg: MapConfig, n_frames: int, n_pairs: int, source: str) -> None:
    n_pts = len(tracks.points)
    if n_pts < cfg.min_points:
        raise MapBuildError(
            f'only {n_pts} points triangulated from {n_frames} frames of {source} '
            f'({n_pairs} pairs, {tracks.stats["matches"]} geometric matches; at least '
            f'{cfg.min_points} needed). Check the poses and intrinsics (a wrong K or pose '
            'convention leaves no match on its epipolar line), map more frames with wider '
            'baselines, or relax --min-angle / --epipolar-px')


def _header(meta, model: Path, source, split, cfg, names, pos, offsets, tracks, extra) -> dict:
    """The map header: provenance, configuration and statistics."""
    return {
        'model_id': str(meta['model_id']), 'model_file': model.name,
        'backbone': meta.get('backbone'), 'dataset': source, 'split': split,
        'feature': cfg.feature, 'feature_spec': feature_spec(cfg).to_dict(),
        'global_feature': extra['global_feature'],
        'config': {k: (list(v) if isinstance(v, tuple) else v)
                   for k, v in vars(cfg).items()},
        'frames_fingerprint': frames_fingerprint(names, pos), 'frame_names': names,
        'sessions': [{'name': 'session 0', 'dataset': source, 'split': split, 'first_frame': 0,
                      'frames': len(names)}],
        'intrinsics_source': extra['intrinsics_source'],
        'stats': {
            'frames': len(names), 'pairs': extra['pairs'], 'raw_matches': extra['raw_matches'],
            **tracks.stats,
            'frames_with_points': int(np.sum(np.diff(offsets) > 0)),
            'median_track_views': float(np.median(tracks.n_views)),
            'median_angle_deg': float(np.median(tracks.angle_deg)),
            'median_max_error_px': float(np.median(tracks.max_error_px)),
        },
        'timings_s': {k: round(v, 3) for k, v in extra['timings'].items()},
    }


def _open_model(model) -> tuple[Path, dict]:
    from posenet_ros.core.errors import ModelNotFoundError
    from posenet_ros.model.export import read_metadata

    model = Path(model)
    if not model.is_file():
        raise ModelNotFoundError(f'model file {model} does not exist; export one with '
                                 "'posenet-ros train' or pass the right path")
    return model, read_metadata(model)


def build_map(model, out=None, *, dataset=None, split: str = 'train', dataset_kind: str = 'auto',
              intrinsics=None, config: MapConfig | None = None, device: str = 'cpu',
              global_features: bool = True, progress: bool = True) -> tuple[Path, dict]:
    """Build the map of ``dataset`` for the export ``model``; returns (path, header).

    ``out`` defaults to ``<model stem>.map.npz`` beside the export. ``intrinsics``: a 3x3 K
    for every frame (overrides the dataset's). ``global_features=False`` stores no network
    features (candidate selection then uses the coarse pose only).
    """
    from posenet_ros.model.export import FEATURE_SPACE

    cfg = config or MapConfig()
    if cfg.feature not in FEATURE_KINDS:
        raise MapBuildError(f'unknown feature {cfg.feature!r}; choose one of {FEATURE_KINDS}')
    model, meta = _open_model(model)
    out = Path(out) if out else default_map_path(model)
    t_start = time.perf_counter()
    samples, source, split = _load_frames(dataset, split, dataset_kind, meta, model)
    K = _frame_intrinsics(samples, intrinsics, source)
    steps = _Steps(progress)
    timings = {}

    t0 = time.perf_counter()
    reloc = _feature_model(model, device, global_features)
    feats, sizes, globals_ = _frame_features(samples, K, cfg, steps, reloc)
    timings['features_s'] = time.perf_counter() - t0

    t0 = time.perf_counter()
    pos = np.stack([s.position for s in samples])
    quat = np.stack([s.quaternion for s in samples])
    T = np.stack([s.matrix for s in samples])  # T_map_cam per frame
    pairs = select_pairs(pos, quat, cfg.max_view_angle_deg, cfg.ranks)
    if not len(pairs):
        raise MapBuildError(f'no covisible frame pairs among the {len(samples)} frames of '
                            f'{source}: map with more frames, or frames that look at the same '
                            'places (optical axes within '
                            f'{cfg.max_view_angle_deg:.0f} deg)')
    matches, n_raw = _geometric_matches(feats, T, K, pairs, cfg, steps)
    timings['matching_s'] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tracks = triangulate_tracks([f.xy for f in feats], T, K, matches, min_views=cfg.min_views,
                                min_angle_deg=cfg.min_angle_deg,
                                max_reproj_px=cfg.max_reproj_px)
    timings['triangulation_s'] = time.perf_counter() - t0
    _check_points(tracks, cfg, len(samples), len(pairs), source)

    offsets, obs_xy, obs_desc, op = _observations(tracks, feats, len(samples))
    header = _header(meta, model, source, split, cfg, [s.name for s in samples], pos, offsets,
                     tracks, {'global_feature': FEATURE_SPACE if globals_ else None,
                              'intrinsics_source': ('flag --intrinsics' if intrinsics is not None
                                                    else 'dataset'),
                              'pairs': int(len(pairs)), 'raw_matches': int(n_raw),
                              'timings': timings})
    gdim = len(globals_[0]) if globals_ else 0
    scene_map = SceneMap(
        header=header, frame_position=pos, frame_quaternion=quat, frame_K=K,
        frame_size=np.asarray(sizes, np.int32).reshape(-1, 2),
        frame_global=(np.stack(globals_).astype(np.float16) if globals_
                      else np.zeros((len(samples), gdim), np.float16)),
        frame_offsets=offsets, obs_xy=obs_xy, obs_desc=obs_desc,
        obs_point=op.astype(np.int32), points=tracks.points.astype(np.float64),
        point_views=tracks.n_views.astype(np.int32))
    header['timings_s']['total_s'] = round(time.perf_counter() - t_start, 3)
    save_map(scene_map, out)
    return out, header


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``posenet-ros map``."""
    d = MapConfig()
    ap = argparse.ArgumentParser(
        prog='posenet-ros map',
        description='Build the scene map (local features triangulated with the known poses) '
                    'that verifies and refines the poses of an exported PoseNet.')
    ap.add_argument('--model', required=True, type=Path, help='exported model (.ts)')
    ap.add_argument('--dataset', type=Path,
                    help='posed frames to map: dataset folder or rosbag2 (default: the '
                         'training set recorded in the export)')
    ap.add_argument('--split', default='train', help='split to map (default train)')
    ap.add_argument('--dataset-kind', default='auto',
                    choices=('auto', 'manifest', 'cambridge', '7scenes', 'bag'))
    ap.add_argument('--out', type=Path, help='map file (default: <model>.map.npz beside it)')
    ap.add_argument('--add', action='store_true',
                    help="add --dataset's posed frames (another session: dusk, another "
                         'season, verified frames) to the existing map --out instead of '
                         'building a new one')
    ap.add_argument('--session', help='name of the session --add adds (default: session N)')
    ap.add_argument('--intrinsics', metavar='FX,FY,CX,CY',
                    help='pinhole intrinsics in pixels of the stored images, for datasets '
                         'without them (applies to every frame)')
    ap.add_argument('--features', default=d.feature, choices=FEATURE_KINDS,
                    help='local features: sift (default, accurate) or orb (faster)')
    ap.add_argument('--max-features', type=int, default=d.max_features)
    ap.add_argument('--min-angle', type=float, default=d.min_angle_deg,
                    help=f'minimum triangulation angle in degrees (default {d.min_angle_deg})')
    ap.add_argument('--min-views', type=int, default=d.min_views,
                    help=f'minimum views per 3D point (default {d.min_views})')
    ap.add_argument('--epipolar-px', type=float, default=d.epipolar_px,
                    help='largest Sampson distance of a match to the epipolar line of the '
                         f'known poses, px (default {d.epipolar_px})')
    ap.add_argument('--no-global-features', action='store_true',
                    help='store no network features (candidates by coarse pose only)')
    ap.add_argument('--device', default='cpu', help='torch device of the network features')
    ap.add_argument('--quiet', action='store_true', help='no progress output')
    return ap


def main(argv: list[str] | None = None) -> int:
    """``posenet-ros map``: build a map and print its summary."""
    args = build_parser().parse_args(argv)
    cfg = MapConfig(feature=args.features, max_features=args.max_features,
                    min_angle_deg=args.min_angle, min_views=args.min_views,
                    epipolar_px=args.epipolar_px)
    K = parse_intrinsics(args.intrinsics) if args.intrinsics else None
    if args.add:
        return _main_add(args, K)
    path, header = build_map(args.model, args.out, dataset=args.dataset, split=args.split,
                             dataset_kind=args.dataset_kind, intrinsics=K, config=cfg,
                             device=args.device, global_features=not args.no_global_features,
                             progress=not args.quiet)
    st = header['stats']
    size_mb = path.stat().st_size / 1e6
    print(f'map {path} ({size_mb:.1f} MB) for model {header["model_id"]}: {st["frames"]} frames, '
          f'{st["pairs"]} pairs, {st["points"]} points from {st["observations"]} observations '
          f'(median {st["median_track_views"]:.0f} views, {st["median_angle_deg"]:.1f} deg), '
          f'built in {header["timings_s"]["total_s"]:.1f} s')
    return 0


def _main_add(args, K) -> int:
    from posenet_ros.verify.sessions import add_session

    if args.dataset is None:
        raise MapBuildError("'posenet-ros map --add' needs --dataset with the posed frames of "
                            'the session to add')
    path, header = add_session(args.out or default_map_path(args.model), args.model,
                               args.dataset, split=args.split, dataset_kind=args.dataset_kind,
                               intrinsics=K, name=args.session, device=args.device,
                               progress=not args.quiet)
    s = header['sessions'][-1]
    print(f'map {path}: added {s["name"]!r} ({s["frames"]} frames of {s["dataset"]}): '
          f'{s["links"]} observations of existing points, {s["points_added"]} new points, '
          f'{s["seconds"]:.1f} s; {len(header["sessions"])} sessions, '
          f'{header["stats"]["frames"]} frames, {header["stats"]["points"]} points')
    return 0
