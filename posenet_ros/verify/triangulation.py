"""Multi-view triangulation with known poses: tracks, DLT, and the filters that keep a map honest.

Conventions: a frame's pose is ``T_map_cam`` (camera optical frame -> map). Projection uses
``T_cam_map = T_map_cam^-1`` (what OpenCV's rvec/tvec hold): ``x ~ K (R_cam_map X + t_cam_map)``.

Pipeline (:func:`triangulate_tracks`):

1. tracks = connected components (union-find) of the pairwise matches;
2. a track that holds two different keypoints of one frame is inconsistent and dropped;
3. each track is triangulated from all its views (linear DLT in normalised coordinates);
4. observations whose reprojection error exceeds ``max_reproj_px`` are removed (also those
   behind the camera) and the track is re-triangulated; this repeats once more;
5. a point survives with at least ``min_views`` views, every remaining view within
   ``max_reproj_px``, and a triangulation angle (the widest angle between two of its viewing
   rays) of at least ``min_angle_deg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ['sampson_distance', 'fundamental_from_poses', 'UnionFind', 'Tracks',
           'triangulate_tracks', 'project']


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def fundamental_from_poses(T_map_cam1, T_map_cam2, K1, K2) -> np.ndarray:
    """F with ``x2^T F x1 = 0`` for pixels x1 of camera 1 and x2 of camera 2."""
    T_c2_c1 = np.linalg.inv(T_map_cam2) @ T_map_cam1  # maps camera-1 points into camera 2
    R, t = T_c2_c1[:3, :3], T_c2_c1[:3, 3]
    E = _skew(t) @ R
    return np.linalg.inv(K2).T @ E @ np.linalg.inv(K1)


def sampson_distance(F: np.ndarray, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
    """First-order geometric (Sampson) distance in pixels of correspondences (N, 2) <-> (N, 2)."""
    h1 = np.hstack([x1, np.ones((len(x1), 1))])
    h2 = np.hstack([x2, np.ones((len(x2), 1))])
    Fx1 = h1 @ F.T
    Ftx2 = h2 @ F
    num = np.sum(h2 * Fx1, axis=1) ** 2
    den = Fx1[:, 0] ** 2 + Fx1[:, 1] ** 2 + Ftx2[:, 0] ** 2 + Ftx2[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-12))


class UnionFind:
    """Disjoint sets over ``n`` integer nodes (path halving, union by size)."""

    def __init__(self, n: int):
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, a: int) -> int:
        """Root of node ``a``."""
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return int(a)

    def union(self, a: int, b: int) -> None:
        """Merge the sets of ``a`` and ``b``."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]

    def roots(self) -> np.ndarray:
        """Root of every node (N,)."""
        return np.array([self.find(i) for i in range(len(self.parent))], dtype=np.int64)


@dataclass
class Tracks:
    """Triangulated points and their observations.

    ``points`` (P, 3) map coordinates; ``obs_frame``, ``obs_kp``, ``obs_point`` (M,) the frame,
    keypoint index within the frame and point id of each kept observation; per point
    ``n_views`` (P,), ``angle_deg`` (P,) triangulation angle, ``max_error_px`` (P,).
    """

    points: np.ndarray
    obs_frame: np.ndarray
    obs_kp: np.ndarray
    obs_point: np.ndarray
    n_views: np.ndarray
    angle_deg: np.ndarray
    max_error_px: np.ndarray
    stats: dict


def project(K: np.ndarray, T_cam_map: np.ndarray, X: np.ndarray):
    """Pixels (N, 2) and depths (N,) of map points X (N, 3) in a camera."""
    pc = X @ T_cam_map[:3, :3].T + T_cam_map[:3, 3]
    z = pc[:, 2]
    uv = pc @ K.T
    with np.errstate(divide='ignore', invalid='ignore'):
        return uv[:, :2] / uv[:, 2:3], z


def _dlt(P: np.ndarray, xn: np.ndarray) -> np.ndarray:
    """Batched linear triangulation: P (B, n, 3, 4) normalised cameras, xn (B, n, 2) -> (B, 3)."""
    rows1 = xn[..., 0:1] * P[..., 2, :] - P[..., 0, :]
    rows2 = xn[..., 1:2] * P[..., 2, :] - P[..., 1, :]
    A = np.concatenate([rows1, rows2], axis=1)  # (B, 2n, 4)
    _, _, vt = np.linalg.svd(A)
    X = vt[:, -1]
    with np.errstate(divide='ignore', invalid='ignore'):
        return X[:, :3] / X[:, 3:4]


def _initial_tracks(roots: np.ndarray, node_frame: np.ndarray, stats: dict) -> list:
    """Tracks (node index arrays) of >= 2 nodes, without those seeing one frame twice."""
    order = np.argsort(roots, kind='stable')
    r_sorted = roots[order]
    starts = np.flatnonzero(np.r_[True, r_sorted[1:] != r_sorted[:-1]])
    lengths = np.diff(np.r_[starts, len(order)])
    multi = lengths >= 2
    stats['tracks'] = int(multi.sum())
    tracks = []
    inconsistent = 0
    for s, n in zip(starts[multi], lengths[multi]):
        nodes = order[s:s + n]
        frames = node_frame[nodes]
        if len(np.unique(frames)) != len(frames):
            inconsistent += 1  # two keypoints of one frame: ambiguous track, drop it
            continue
        tracks.append(nodes)
    stats['inconsistent_tracks'] = inconsistent
    return tracks


@dataclass
class _Views:
    """Every node's (keypoint's) frame, pixels and normalised coordinates; every camera."""

    node_frame: np.ndarray
    node_xy: np.ndarray
    node_xn: np.ndarray
    T_cam_map: np.ndarray
    K: np.ndarray
    centres: np.ndarray


def _triangulate_group(nodes: np.ndarray, v: _Views, max_reproj_px: float,
                       min_angle_deg: float, min_views: int, kept: dict, next_tracks: list):
    """Triangulate equally long tracks ``nodes`` (B, n).

    The good ones go to ``kept``, those that lost observations to ``next_tracks``.
    """
    fr = v.node_frame[nodes]
    X = _dlt(v.T_cam_map[fr][..., :3, :], v.node_xn[nodes])  # (B, 3)
    # reprojection error and depth in every view
    Tc = v.T_cam_map[fr]
    pc = np.einsum('bnij,bj->bni', Tc[..., :3, :3], X) + Tc[..., :3, 3]
    uv = np.einsum('bnij,bnj->bni', v.K[fr], pc)
    with np.errstate(divide='ignore', invalid='ignore'):
        proj = uv[..., :2] / uv[..., 2:3]
    err = np.linalg.norm(proj - v.node_xy[nodes], axis=-1)
    good = np.isfinite(err) & (err <= max_reproj_px) & (pc[..., 2] > 0)
    all_good = good.all(axis=1)
    for b in np.flatnonzero(~all_good):
        sub = nodes[b][good[b]]
        if len(sub) >= max(2, min_views):
            next_tracks.append(sub)
    if not all_good.any():
        return
    Xg, nodes_g, err_g = X[all_good], nodes[all_good], err[all_good]
    rays = Xg[:, None, :] - v.centres[v.node_frame[nodes_g]]
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    cos = np.einsum('bni,bmi->bnm', rays, rays)
    angle = np.degrees(np.arccos(np.clip(cos.min(axis=(1, 2)), -1.0, 1.0)))
    ok = angle >= min_angle_deg
    kept['pts'].append(Xg[ok])
    kept['nodes'].extend(list(nodes_g[ok]))
    kept['angle'].append(angle[ok])
    kept['err'].append(err_g[ok].max(axis=1))


def triangulate_tracks(xy: list[np.ndarray], T_map_cam: np.ndarray, K: np.ndarray,
                       matches: dict[tuple[int, int], np.ndarray], *, min_views: int = 3,
                       min_angle_deg: float = 2.0, max_reproj_px: float = 2.0) -> Tracks:
    """Triangulate the tracks of pairwise ``matches`` ``{(i, j): (M, 2) kp indices}``.

    ``xy``: keypoints (N_i, 2) per frame; ``T_map_cam`` (F, 4, 4); ``K`` (F, 3, 3).
    """
    n_frames = len(xy)
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in xy])]).astype(np.int64)
    uf = UnionFind(int(offsets[-1]))
    for (i, j), m in matches.items():
        for a, b in zip(offsets[i] + m[:, 0], offsets[j] + m[:, 1]):
            uf.union(int(a), int(b))
    node_frame = np.repeat(np.arange(n_frames), np.diff(offsets))
    node_kp = np.arange(offsets[-1]) - offsets[node_frame]
    stats = {'matches': int(sum(len(m) for m in matches.values()))}
    tracks = _initial_tracks(uf.roots(), node_frame, stats)

    # normalised image coordinates of every node
    node_xy = np.concatenate(xy).astype(np.float64) if offsets[-1] else np.zeros((0, 2))
    h = np.hstack([node_xy, np.ones((len(node_xy), 1))])
    Kinv = np.linalg.inv(K)
    node_xn = np.einsum('nij,nj->ni', Kinv[node_frame], h)[:, :2] if len(h) else h[:, :2]
    views = _Views(node_frame, node_xy, node_xn, np.linalg.inv(T_map_cam), K,
                   T_map_cam[:, :3, 3])

    kept = {'pts': [], 'nodes': [], 'angle': [], 'err': []}
    for _ in range(3):  # triangulate, drop bad observations, re-triangulate
        by_len: dict[int, list[np.ndarray]] = {}
        for t in tracks:
            if len(t) >= max(2, min_views):
                by_len.setdefault(len(t), []).append(t)
        next_tracks: list = []
        kept = {'pts': [], 'nodes': [], 'angle': [], 'err': []}
        for group in by_len.values():
            _triangulate_group(np.stack(group), views, max_reproj_px, min_angle_deg, min_views,
                               kept, next_tracks)
        if not next_tracks:
            break
        # tracks that lost observations are re-triangulated next round (the kept ones again too)
        tracks = kept['nodes'] + next_tracks
    kept_nodes = kept['nodes']
    pts = np.concatenate(kept['pts']) if kept['pts'] else np.zeros((0, 3))
    n_views = np.array([len(t) for t in kept_nodes], np.int64)
    obs_point = np.repeat(np.arange(len(kept_nodes)), n_views)
    obs_nodes = np.concatenate(kept_nodes) if kept_nodes else np.zeros(0, np.int64)
    stats.update({'points': int(len(pts)), 'observations': int(len(obs_nodes))})
    return Tracks(points=pts, obs_frame=node_frame[obs_nodes], obs_kp=node_kp[obs_nodes],
                  obs_point=obs_point, n_views=n_views,
                  angle_deg=np.concatenate(kept['angle']) if kept['angle'] else np.zeros(0),
                  max_error_px=np.concatenate(kept['err']) if kept['err'] else np.zeros(0),
                  stats=stats)
