"""Similarity (Sim(3)) alignment of an SfM reconstruction to a metric reference frame.

SfM recovers poses only up to a similarity: an unknown scale, rotation and origin. Given the
same cameras' positions in a reference frame (surveyed points, odometry, ground truth),
:func:`estimate_sim3` finds ``dst = s R src + t`` in the least-squares sense (Umeyama 1991), with
an optional RANSAC-free robust mode (iterative re-fitting on the points whose residual is within
3 robust standard deviations), and :meth:`Sim3.apply_pose` maps a pose: the camera centre goes
through the full transform, the camera-to-map rotation is pre-multiplied by ``R`` (a pure
rotation is scale-free).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from posenet_ros.core.errors import AlignmentError
from posenet_ros.core.geometry import matrix_to_quat, quat_to_matrix

__all__ = ['Sim3', 'umeyama', 'estimate_sim3', 'align_poses', 'residual_stats',
           'scale_from_distance', 'apply_to_samples']


@dataclass
class Sim3:
    """``dst = scale * rotation @ src + translation`` (maps SfM coordinates into the reference)."""

    scale: float = 1.0
    rotation: np.ndarray = None  # (3, 3)
    translation: np.ndarray = None  # (3,)

    def __post_init__(self):
        self.scale = float(self.scale)
        self.rotation = np.eye(3) if self.rotation is None else np.asarray(
            self.rotation, dtype=np.float64).reshape(3, 3)
        self.translation = np.zeros(3) if self.translation is None else np.asarray(
            self.translation, dtype=np.float64).reshape(3)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Map points (N, 3) or (3,)."""
        points = np.asarray(points, dtype=np.float64)
        return self.scale * points @ self.rotation.T + self.translation

    def apply_pose(self, position, quaternion) -> tuple[np.ndarray, np.ndarray]:
        """Map a pose (centre, wxyz): ``C' = s R C + t``, ``R_map_cam' = R @ R_map_cam``.

        I.e. the centre goes through the full similarity, the rotation only through ``R``.

        The camera frame itself is not scaled: only where it sits and how it is turned change.
        """
        pos = self.apply(np.asarray(position, dtype=np.float64).reshape(3))
        rot = self.rotation @ quat_to_matrix(quaternion)
        return pos, matrix_to_quat(rot)

    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix ``[[sR, t], [0, 1]]``."""
        out = np.eye(4)
        out[:3, :3] = self.scale * self.rotation
        out[:3, 3] = self.translation
        return out

    def inverse(self) -> Sim3:
        """The transform from the reference back into SfM coordinates."""
        rot_t = self.rotation.T
        return Sim3(1.0 / self.scale, rot_t, -rot_t @ self.translation / self.scale)

    def as_dict(self) -> dict:
        """JSON-friendly form (stored in dataset.json)."""
        return {'scale': self.scale, 'rotation': self.rotation.tolist(),
                'translation': self.translation.tolist()}


def _check_pairs(src, dst, minimum: int):
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if src.shape != dst.shape:
        raise AlignmentError(f'need as many reference points as SfM points, got {len(src)} '
                             f'and {len(dst)}')
    if len(src) < minimum:
        raise AlignmentError(f'a similarity alignment needs at least {minimum} cameras with a '
                             f'reference position, got {len(src)}; survey more frames or use a '
                             'reference topic that covers the registered frames')
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise AlignmentError('alignment points contain NaN or inf')
    return src, dst


def _spread(points: np.ndarray) -> np.ndarray:
    """Singular values of the centred point cloud (how far it spans each direction)."""
    return np.linalg.svd(points - points.mean(axis=0), compute_uv=False)


def umeyama(src, dst, with_scale: bool = True, weights=None) -> Sim3:
    """Least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991), optional point weights.

    Needs >= 3 points that are not all on one line (else the rotation about that line is free).
    """
    src, dst = _check_pairs(src, dst, 3)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    xs, xd = src - mu_s, dst - mu_d
    sv = _spread(src)
    if sv[0] < 1e-12:
        raise AlignmentError('all SfM camera centres used for alignment coincide; use frames '
                             'taken from different places')
    if sv[1] < 1e-6 * sv[0]:
        raise AlignmentError('the cameras used for alignment lie on one straight line, so the '
                             'rotation about it is undetermined; add references off that line '
                             '(or a reference with orientations, e.g. a pose topic)')
    cov = (xd * w[:, None]).T @ xs
    u, d, vt = np.linalg.svd(cov)
    s_fix = np.eye(3)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:  # reflection -> closest proper rotation
        s_fix[2, 2] = -1.0
    rot = u @ s_fix @ vt
    var_s = float(w @ np.sum(xs * xs, axis=1))
    scale = float(np.trace(np.diag(d) @ s_fix) / var_s) if with_scale else 1.0
    if scale <= 0:
        raise AlignmentError('the estimated scale is not positive; check that reference and '
                             'SfM points are listed in the same order')
    return Sim3(scale, rot, mu_d - scale * rot @ mu_s)


def residual_stats(sim: Sim3, src, dst, inliers=None) -> dict:
    """Residual distances ``|sim(src) - dst|`` (reference units): n, rmse, median, p90, max."""
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    res = np.linalg.norm(sim.apply(src) - dst, axis=1)
    out = {'n': int(len(res))}
    if len(res):
        out.update(rmse=float(np.sqrt(np.mean(res ** 2))), median=float(np.median(res)),
                   p90=float(np.percentile(res, 90)), max=float(res.max()))
    if inliers is not None:
        out['n_inliers'] = int(np.count_nonzero(inliers))
    return out


def estimate_sim3(src, dst, robust: bool = True, with_scale: bool = True, k_sigma: float = 3.0,
                  min_threshold: float = 0.0, max_iter: int = 20):
    """Fit ``dst ~ s R src + t``; returns ``(Sim3, inlier mask)``.

    ``robust``: re-fit on the points whose residual is at most
    ``max(k_sigma * 1.4826 * median residual, min_threshold)`` until the inlier set is stable
    (no RANSAC: deterministic and enough for a few gross outliers such as a mis-registered frame
    or a mistyped survey point). Needs >= 3 non-collinear inliers.
    """
    src, dst = _check_pairs(src, dst, 3)
    mask = np.ones(len(src), dtype=bool)
    sim = umeyama(src, dst, with_scale)
    if not robust:
        return sim, mask
    for _ in range(max_iter):
        res = np.linalg.norm(sim.apply(src) - dst, axis=1)
        thr = max(k_sigma * 1.4826 * float(np.median(res[mask])), min_threshold, 1e-12)
        new = res <= thr
        if np.count_nonzero(new) < 3:
            break
        if np.array_equal(new, mask):
            break
        mask = new
        sim = umeyama(src[mask], dst[mask], with_scale)
    return sim, mask


def align_poses(src_positions, dst_positions, src_quaternions=None, dst_quaternions=None,
                robust: bool = True):
    """Align SfM camera centres to reference centres; orientations help when they are collinear.

    When every centre lies on one line (a straight drive), positions leave the rotation about
    that line free. If both quaternion sets (camera-to-map, wxyz) are given, the scale is first
    taken from the positions, then each camera adds three points one metre along its own axes
    (``C + R e_k``, ``1/s`` SfM units on the SfM side), which fixes the rotation.
    Returns ``(Sim3, inlier mask over the cameras)``.
    """
    src, dst = _check_pairs(src_positions, dst_positions, 2)
    sv = _spread(src)
    collinear = len(src) < 3 or sv[1] < 1e-6 * max(sv[0], 1e-300)
    if not collinear or src_quaternions is None or dst_quaternions is None:
        return estimate_sim3(src, dst, robust=robust)
    d_src = np.linalg.norm(src - src.mean(axis=0), axis=1)
    d_dst = np.linalg.norm(dst - dst.mean(axis=0), axis=1)
    if d_src.sum() < 1e-12:
        raise AlignmentError('all SfM camera centres used for alignment coincide')
    scale = float(d_dst.sum() / d_src.sum())
    aug_s, aug_d = [src], [dst]
    rs = np.stack([quat_to_matrix(q) for q in src_quaternions])
    rd = np.stack([quat_to_matrix(q) for q in dst_quaternions])
    for k in range(3):
        aug_s.append(src + rs[:, :, k] / scale)
        aug_d.append(dst + rd[:, :, k])
    sim = umeyama(np.concatenate(aug_s), np.concatenate(aug_d))
    return sim, np.ones(len(src), dtype=bool)


def scale_from_distance(pos_a, pos_b, metres: float) -> Sim3:
    """Scale-only Sim3 making the distance between two SfM camera centres equal ``metres``."""
    if not metres > 0:
        raise AlignmentError(f'the known distance must be positive, got {metres}')
    d = float(np.linalg.norm(np.asarray(pos_a, dtype=np.float64) - np.asarray(pos_b)))
    if d < 1e-9:
        raise AlignmentError('the two frames of --known-distance have the same SfM position; '
                             'pick two frames taken further apart')
    return Sim3(metres / d)


def apply_to_samples(sim: Sim3, samples: list) -> list:
    """New :class:`PoseSample` list with every pose mapped by ``sim``."""
    out = []
    for s in samples:
        pos, quat = sim.apply_pose(s.position, s.quaternion)
        out.append(replace(s, position=pos, quaternion=quat))
    return out
