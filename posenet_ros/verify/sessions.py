"""Multi-session maps: ``posenet-ros map --add`` adds the posed frames of another session.

A session recorded under other conditions (a dusk drive, another season, frames the node
verified and logged with their poses) is added to an existing map without rebuilding it:

1. the new frames' local features (the map's :class:`~posenet_ros.verify.features.FeatureSpec`)
   and, when the map has them, the network's retrieval features;
2. *links*: each new frame is matched to the existing observations of the map frames near its
   known pose (mutual ratio test, the second neighbour another 3D point); a match is kept when
   the existing point reprojects within ``max_reproj_px`` of the keypoint with the new frame's
   pose. A linked keypoint is a new observation of an existing point: the point now carries the
   new condition's descriptor;
3. *new points*: the keypoints left are matched among the new frames (pairs from their poses,
   epipolar check) and triangulated as in a build;
4. the frames, observations and points are appended; the header records the session (name,
   dataset, frame range, links, points added). Sessions own contiguous frame ranges, so the
   session of a map frame is a lookup (:func:`frame_sessions`).

The map's model id, format version and frame fingerprint (now over all frames) stay.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from posenet_ros.core.errors import MapBuildError
from posenet_ros.core.geometry import quat_to_matrix
from posenet_ros.verify.features import match_descriptors, matcher_descriptors
from posenet_ros.verify.mapfile import SceneMap, frames_fingerprint, load_map, save_map
from posenet_ros.verify.pairs import optical_axes
from posenet_ros.verify.triangulation import project

__all__ = ['add_session', 'frame_sessions', 'session_names']


def session_names(header: dict) -> list[str]:
    """Names of a map's sessions, in order (a map built in one go has one)."""
    return [str(s['name']) for s in header.get('sessions') or [{'name': 'session 0'}]]


def frame_sessions(header: dict, n_frames: int) -> np.ndarray:
    """Session index (into :func:`session_names`) of each of ``n_frames`` map frames."""
    out = np.zeros(n_frames, np.int32)
    for k, s in enumerate(header.get('sessions') or []):
        out[int(s['first_frame']):int(s['first_frame']) + int(s['frames'])] = k
    return out


def _neighbours(m: SceneMap, pos: np.ndarray, quat: np.ndarray, k: int, max_angle_deg: float):
    axes = optical_axes(m.frame_quaternion)
    axis = quat_to_matrix(quat)[:, 2]
    ok = np.flatnonzero(axes @ axis >= np.cos(np.radians(max_angle_deg)))
    dist = np.linalg.norm(m.frame_position[ok] - pos, axis=1)
    return ok[np.argsort(dist, kind='stable')[:k]]


def _links(m: SceneMap, feats, T, quat, K, cfg, k: int = 6) -> list[np.ndarray]:
    """Per new frame ``(L, 2)`` (keypoint, existing point) pairs consistent with its pose."""
    out = []
    for q, Tf, qf, Kf in zip(feats, T, quat, K):
        near = _neighbours(m, Tf[:3, 3], qf, k, cfg.max_view_angle_deg)
        rows = np.concatenate([np.arange(m.frame_offsets[i], m.frame_offsets[i + 1])
                               for i in near]) if len(near) else np.zeros(0, np.int64)
        if len(rows) < 2 or len(q) < 2:
            out.append(np.zeros((0, 2), np.int64))
            continue
        pid = m.obs_point[rows]
        mm = match_descriptors(matcher_descriptors(q.desc, cfg.feature),
                               matcher_descriptors(m.obs_desc[rows], cfg.feature), cfg.feature,
                               cfg.ratio, mutual=True, labels2=pid)
        pairs = np.unique(np.stack([mm[:, 0], pid[mm[:, 1]]], axis=1), axis=0)
        uv, z = project(Kf, np.linalg.inv(Tf), m.points[pairs[:, 1]])
        err = np.linalg.norm(uv - q.xy[pairs[:, 0]], axis=1)
        pairs = pairs[(z > 0) & (err <= cfg.max_reproj_px)]
        # one observation per point and per keypoint in a frame
        pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
        pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
        out.append(pairs.astype(np.int64))
    return out


def _new_points(feats, T, pos, quat, K, links, cfg, steps):
    """Tracks triangulated among the new frames from the keypoints no link took."""
    from posenet_ros.verify.build import _geometric_matches
    from posenet_ros.verify.pairs import select_pairs
    from posenet_ros.verify.triangulation import triangulate_tracks

    pairs = select_pairs(pos, quat, cfg.max_view_angle_deg, tuple(cfg.ranks))
    matches, _ = _geometric_matches(feats, T, K, pairs, cfg, steps)
    taken = [set(map(int, lk[:, 0])) for lk in links]
    free = {}
    for (i, j), mm in matches.items():
        keep = np.array([a not in taken[i] and b not in taken[j] for a, b in mm], bool)
        if keep.any():
            free[(i, j)] = mm[keep]
    return triangulate_tracks([f.xy for f in feats], T, K, free, min_views=cfg.min_views,
                              min_angle_deg=cfg.min_angle_deg, max_reproj_px=cfg.max_reproj_px)


def _append(m: SceneMap, feats, links, tracks, frames: dict) -> SceneMap:
    """``m`` with the new frames, their observations and the new points appended."""
    n_old_pts = len(m.points)
    obs = []  # (frame, kp, point)
    for f, lk in enumerate(links):
        obs += [(f, int(a), int(b)) for a, b in lk]
    obs += [(int(f), int(k), n_old_pts + int(p))
            for f, k, p in zip(tracks.obs_frame, tracks.obs_kp, tracks.obs_point)]
    obs = np.array(sorted(obs), np.int64).reshape(-1, 3)
    n_new = len(feats)
    offsets = np.searchsorted(obs[:, 0], np.arange(n_new + 1)).astype(np.int64)
    xy = np.concatenate([feats[f].xy[obs[offsets[f]:offsets[f + 1], 1]] for f in range(n_new)])
    desc = np.concatenate([feats[f].desc[obs[offsets[f]:offsets[f + 1], 1]]
                           for f in range(n_new)])
    views = np.concatenate([m.point_views, tracks.n_views.astype(np.int32)])
    np.add.at(views, obs[obs[:, 2] < n_old_pts, 2], 1)
    return SceneMap(
        header=m.header, path=m.path,
        frame_position=np.concatenate([m.frame_position, frames['pos']]),
        frame_quaternion=np.concatenate([m.frame_quaternion, frames['quat']]),
        frame_K=np.concatenate([m.frame_K, frames['K']]),
        frame_size=np.concatenate([m.frame_size, frames['size']]),
        frame_global=np.concatenate([m.frame_global, frames['global']]),
        frame_offsets=np.concatenate([m.frame_offsets[:-1], m.frame_offsets[-1] + offsets]),
        obs_xy=np.concatenate([m.obs_xy, xy.astype(np.float32)]),
        obs_desc=np.concatenate([m.obs_desc, desc.astype(np.uint8)]),
        obs_point=np.concatenate([m.obs_point, obs[:, 2].astype(np.int32)]),
        points=np.concatenate([m.points, tracks.points.astype(np.float64)]), point_views=views)


def add_session(map_path, model, dataset, *, split: str = 'train', dataset_kind: str = 'auto',
                intrinsics=None, name: str | None = None, device: str = 'cpu',
                progress: bool = True) -> tuple[Path, dict]:
    """Add the posed frames of ``dataset`` (``split``) to the map at ``map_path``; rewrite it.

    ``model``: the export the map belongs to (checked; it gives the retrieval features).
    Returns (path, header); the header's ``sessions`` gains one entry.
    """
    from posenet_ros.verify.build import (
        MapConfig,
        _feature_model,
        _frame_features,
        _frame_intrinsics,
        _load_frames,
        _open_model,
        _Steps,
    )

    t_start = time.perf_counter()
    model, meta = _open_model(model)
    m = load_map(map_path, model_id=str(meta['model_id']))
    stored = dict(m.header.get('config') or {})
    cfg = MapConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in stored.items()})
    samples, source, split = _load_frames(dataset, split, dataset_kind, meta)
    K = _frame_intrinsics(samples, intrinsics, source)
    steps = _Steps(progress)
    reloc = _feature_model(model, device, m.frame_global.shape[1] > 0)
    feats, sizes, globals_ = _frame_features(samples, K, cfg, steps, reloc)
    T = np.stack([s.matrix for s in samples])
    pos = np.stack([s.position for s in samples])
    quat = np.stack([s.quaternion for s in samples])
    links = _links(m, feats, T, quat, K, cfg)
    tracks = _new_points(feats, T, pos, quat, K, links, cfg, steps)
    n_links = int(sum(len(lk) for lk in links))
    if n_links + len(tracks.points) < cfg.min_points:
        raise MapBuildError(
            f'the {len(samples)} frames of {source} link to {n_links} map points and add '
            f'{len(tracks.points)} new ones (at least {cfg.min_points} needed): they do not '
            'see the mapped scene, or their poses are not in the map frame')
    gdim = m.frame_global.shape[1]
    frames = {'pos': pos, 'quat': quat, 'K': K, 'size': np.asarray(sizes, np.int32),
              'global': (np.stack(globals_).astype(np.float16) if globals_ and gdim
                         else np.zeros((len(samples), gdim), np.float16))}
    new = _append(m, feats, links, tracks, frames)
    header = dict(m.header)
    sessions = list(header.get('sessions') or [
        {'name': 'session 0', 'dataset': header.get('dataset'), 'split': header.get('split'),
         'first_frame': 0, 'frames': m.n_frames}])
    sessions.append({'name': name or f'session {len(sessions)}', 'dataset': source,
                     'split': split, 'first_frame': m.n_frames, 'frames': len(samples),
                     'links': n_links, 'points_added': int(len(tracks.points)),
                     'seconds': round(time.perf_counter() - t_start, 3)})
    names = list(header.get('frame_names') or []) + [s.name for s in samples]
    header.update(sessions=sessions, frame_names=names,
                  frames_fingerprint=frames_fingerprint(names, new.frame_position))
    header['stats'] = dict(header.get('stats') or {}, frames=new.n_frames,
                           points=int(len(new.points)), observations=int(len(new.obs_xy)))
    new.header = header
    path = save_map(new, map_path)
    return path, header
