"""Verify and refine a coarse PoseNet pose against the scene map: one code path for all users.

:class:`MapLocalizer` takes a frame, its camera's K, the coarse pose (``T_map_cam``: camera
centre + wxyz camera-to-map rotation) and optionally the network's global feature, and returns a
:class:`Verification`:

1. *features*: local features of the frame (the map's kind);
2. *matching*: candidate map frames = the ``k_pose`` frames nearest the coarse pose (optical
   axes within ``max_view_angle_deg``) plus the ``k_global`` nearest in network-feature space;
   the query is matched to each candidate's triangulated keypoints (mutual ratio test), giving
   2D-3D correspondences;
3. *pnp*: ``cv2.solvePnPRansac`` (USAC MAGSAC) with the query's K, Levenberg-Marquardt
   refinement on the inliers, covariance from the Jacobian;
4. the decision rule (``docs/verification.md``) labels the frame ``verified`` (refined pose
   can be trusted), ``unverified`` (not enough evidence: the coarse pose only) or ``rejected``
   (blank frame, or a degenerate/inconsistent solution). Only ``verified`` carries a pose.

OpenCV's rvec/tvec are ``T_cam_map`` (map points into the camera); poses returned here are
``T_map_cam`` like everywhere else in posenet_ros.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from posenet_ros.core.errors import MissingIntrinsicsError
from posenet_ros.core.geometry import invert, matrix_to_quat, quat_to_matrix
from posenet_ros.verify.features import (
    extract_features,
    grey_image,
    image_structure,
    match_descriptors,
    matcher_descriptors,
)
from posenet_ros.verify.mapfile import SceneMap
from posenet_ros.verify.pairs import optical_axes
from posenet_ros.verify.sessions import frame_sessions, session_names

__all__ = ['VerifierConfig', 'Verification', 'MapLocalizer', 'STATUSES', 'pose_covariance']

STATUSES = ('verified', 'unverified', 'rejected')


@dataclass
class VerifierConfig:
    """Candidate selection, matching, PnP and decision-rule thresholds (docs/verification.md)."""

    k_pose: int = 5  # candidate map frames nearest the coarse pose
    k_global: int = 3  # ... plus the nearest in network-feature space
    max_view_angle_deg: float = 60.0  # pose candidates: optical axes at most this far apart
    ratio: float = 0.8  # Lowe's ratio test (mutual) between query and candidate keypoints
    # query local features: the strongest 1,000 (a 640x480 frame after CLAHE has ~1,250, a
    # 320x240 one ~500-650 under any condition); matching cost grows with their number
    max_features: int = 1000
    pnp_threshold_px: float = 3.0  # RANSAC inlier threshold (reprojection error)
    pnp_iterations: int = 2000
    pnp_confidence: float = 0.9999
    # decision rule
    # band-pass contrast of the frame, grey levels (features.image_structure); lower: rejected
    # (blank or covered: a lens cap, a hand, a smeared lens ~0-1.5; dusk at 1/4 brightness ~5)
    min_structure: float = 2.0
    min_query_features: int = 30  # fewer: unverified (too dark or too blurred to match)
    min_matches: int = 12  # fewer 2D-3D matches: unverified
    min_inliers: int = 30  # fewer PnP inliers: unverified
    min_inlier_ratio: float = 0.2  # lower inliers / matches: rejected (ambiguous)
    max_rms_px: float = 2.0  # larger inlier reprojection RMS: rejected
    min_spread: float = 0.05  # inliers' minor-axis std / shorter image side; lower: rejected
    max_position_sigma_m: float = 0.1  # largest position std of the covariance; larger: rejected
    max_coarse_deviation_m: float | None = None  # off by default (PoseNet is often 0.5 m off)


@dataclass
class Verification:
    """Result of verifying one frame.

    ``position`` (3,) / ``quaternion_wxyz`` (4,): refined ``T_map_cam``, set only when
    ``status == 'verified'``. ``covariance`` (6, 6): ROS pose covariance order x, y, z, then
    rotations about the map's fixed x, y, z axes (roll, pitch, yaw for small angles), in m^2,
    m rad and rad^2; sigma^2 is scaled by the inliers' reprojection residual.
    ``ms``: per-stage milliseconds ``features``, ``matching``, ``pnp``, ``total``.
    """

    status: str
    reason: str
    position: np.ndarray | None = None
    quaternion_wxyz: np.ndarray | None = None
    covariance: np.ndarray | None = None
    n_inliers: int = 0
    inlier_ratio: float = 0.0
    reproj_rms_px: float = float('nan')
    n_matches: int = 0
    n_query_features: int = 0
    structure: float = float('nan')
    spread: float = float('nan')
    session: str | None = None  # map session most inliers were observed in (when verified)
    candidates: list = field(default_factory=list)
    ms: dict = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        """True when the refined pose passed every check."""
        return self.status == 'verified'

    def to_dict(self) -> dict:
        """JSON-friendly dict (arrays as lists)."""
        d = asdict(self)
        for k in ('position', 'quaternion_wxyz', 'covariance'):
            if d[k] is not None:
                d[k] = np.asarray(d[k]).tolist()
        return d


def _rot_log(R: np.ndarray) -> np.ndarray:
    """Rotation vector of R (cv2.Rodrigues returns exactly 0 below ~1e-5 rad: too coarse)."""
    w = 0.5 * np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    s = np.linalg.norm(w)
    angle = np.arctan2(s, (np.trace(R) - 1.0) / 2.0)
    return w if s < 1e-12 else w * (angle / s)


def _pose_of(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    """``T_map_cam`` (4x4) of OpenCV's ``T_cam_map`` (rvec, tvec)."""
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(np.asarray(rvec, np.float64).reshape(3, 1))[0]
    T[:3, 3] = np.asarray(tvec, np.float64).reshape(3)
    return invert(T)


def pose_covariance(obj: np.ndarray, img: np.ndarray, rvec, tvec, K) -> np.ndarray:
    """6x6 covariance of the pose ``T_map_cam`` from the PnP solution's Jacobian.

    ``Sigma_rt = s^2 (J^T J)^-1`` for OpenCV's (rvec, tvec) with ``s^2`` the residual variance
    (sum of squared residuals / (2N - 6)); propagated to (camera centre, small rotation about
    the map's x, y, z axes: ``R_map_cam' = exp(delta) R_map_cam``) with a numerical Jacobian.
    """
    rvec = np.asarray(rvec, np.float64).reshape(3)
    tvec = np.asarray(tvec, np.float64).reshape(3)
    proj, J = cv2.projectPoints(obj, rvec, tvec, K, None)
    J = J[:, :6]
    res = proj.reshape(-1, 2) - img
    dof = max(2 * len(obj) - 6, 1)
    s2 = float(np.sum(res ** 2)) / dof
    cov_rt = s2 * np.linalg.inv(J.T @ J)
    T0 = _pose_of(rvec, tvec)

    def f(x):
        T = _pose_of(x[:3], x[3:])
        return np.concatenate([T[:3, 3], _rot_log(T[:3, :3] @ T0[:3, :3].T)])

    x0 = np.concatenate([rvec, tvec])
    G = np.zeros((6, 6))
    eps = 1e-6
    for k in range(6):
        dx = np.zeros(6)
        dx[k] = eps
        G[:, k] = (f(x0 + dx) - f(x0 - dx)) / (2 * eps)
    cov = G @ cov_rt @ G.T
    return (cov + cov.T) / 2


class MapLocalizer:
    """Verification and refinement against one :class:`SceneMap` (thread-compatible, not safe).

    ``config`` tunes candidate selection, matching, PnP and the decision rule.
    """

    def __init__(self, scene_map: SceneMap, config: VerifierConfig | None = None):
        self.map = scene_map
        self.cfg = config or VerifierConfig()
        self.kind = scene_map.feature
        self.spec = scene_map.feature_spec
        self.axes = optical_axes(scene_map.frame_quaternion)
        g = np.asarray(scene_map.frame_global, np.float32)
        self.global_unit = (g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
                            if g.size else None)
        self._desc_cache: dict[int, np.ndarray] = {}
        self.sessions = session_names(scene_map.header)
        self.frame_session = frame_sessions(scene_map.header, scene_map.n_frames)

    # -- helpers ------------------------------------------------------------------------------
    def default_intrinsics(self, width: int, height: int) -> np.ndarray:
        """K for a ``width x height`` frame from the map's first frame (scaled if needed)."""
        if not self.map.n_frames:
            raise MissingIntrinsicsError('the map has no frames to take intrinsics from')
        K = self.map.frame_K[0].copy()
        w0, h0 = (int(v) for v in self.map.frame_size[0])
        if (w0, h0) != (width, height):
            sx, sy = width / w0, height / h0
            if abs(sx - sy) > 0.01 * max(sx, sy):
                raise MissingIntrinsicsError(
                    f'frame is {width}x{height} but the map was built from {w0}x{h0} frames '
                    '(another aspect ratio); pass the camera intrinsics K (camera_info)')
            # pixel centres at integer coordinates: scale about the (-0.5, -0.5) image corner
            K[0, 0] *= sx
            K[1, 1] *= sy
            K[0, 2] = (K[0, 2] + 0.5) * sx - 0.5
            K[1, 2] = (K[1, 2] + 0.5) * sy - 0.5
        return K

    def _frame_desc(self, f: int) -> np.ndarray:
        d = self._desc_cache.get(f)
        if d is None:
            if len(self._desc_cache) > 512:
                self._desc_cache.pop(next(iter(self._desc_cache)))
            d = matcher_descriptors(self.map.obs_desc[self.map.frame_slice(f)], self.kind)
            self._desc_cache[f] = d
        return d

    def candidates(self, position=None, quaternion_wxyz=None, global_feature=None) -> list[int]:
        """Map frame indices to match against (pose neighbours first, then retrieval)."""
        c = self.cfg
        out: list[int] = []
        if position is not None and quaternion_wxyz is not None:
            dist = np.linalg.norm(self.map.frame_position - np.asarray(position), axis=1)
            axis = quat_to_matrix(quaternion_wxyz)[:, 2]
            cos = self.axes @ axis
            ok = np.flatnonzero(cos >= np.cos(np.radians(c.max_view_angle_deg)))
            pool = ok if len(ok) else np.arange(self.map.n_frames)
            order = pool[np.argsort(dist[pool], kind='stable')]
            # the nearest frames of each session: a session added under another condition
            # must not push the frames that match this one out of the candidates
            for k in range(len(self.sessions)):
                mine = order[self.frame_session[order] == k] if len(self.sessions) > 1 else order
                out += [int(i) for i in mine[:c.k_pose]]
        if global_feature is not None and self.global_unit is not None and c.k_global > 0:
            g = np.asarray(global_feature, np.float32).reshape(-1)
            if g.shape[0] == self.global_unit.shape[1]:
                sim = self.global_unit @ (g / max(float(np.linalg.norm(g)), 1e-12))
                out += [int(i) for i in np.argsort(-sim, kind='stable')[:c.k_global]]
        seen = set()
        return [i for i in out if not (i in seen or seen.add(i))]

    # -- stages -------------------------------------------------------------------------------
    def _correspondences(self, q, cand: list[int]) -> np.ndarray:
        """``(M, 3)`` unique (query keypoint, map point) pairs and a map frame that saw each."""
        qd = matcher_descriptors(q.desc, self.kind)
        rows = np.concatenate([np.arange(self.map.frame_offsets[f], self.map.frame_offsets[f + 1])
                               for f in cand]) if cand else np.zeros(0, np.int64)
        if len(rows) < 2:
            return np.zeros((0, 3), np.int64)
        db = np.concatenate([self._frame_desc(f) for f in cand])
        pid = self.map.obs_point[rows]
        # one product against every candidate observation; the ratio test's second
        # neighbour must be another 3D point (a point seen in several candidates is not
        # ambiguous with itself)
        m = match_descriptors(qd, db, self.kind, self.cfg.ratio, mutual=True, labels2=pid)
        frame = np.repeat(cand, np.diff(self.map.frame_offsets)[cand])[m[:, 1]]
        _, first = np.unique(np.stack([m[:, 0], pid[m[:, 1]]], axis=1), axis=0,
                             return_index=True)
        return np.stack([m[first, 0], pid[m[first, 1]], frame[first]], axis=1).astype(np.int64)

    def _pnp(self, obj: np.ndarray, img: np.ndarray, K: np.ndarray):
        """RANSAC + LM pose; ``None`` or ``(rvec, tvec, inliers, errors, n behind)``.

        Inliers of the refined pose: small reprojection error AND in front of the camera.
        """
        c = self.cfg
        ok, rvec, tvec, inl = cv2.solvePnPRansac(
            obj, img, K, None, iterationsCount=c.pnp_iterations,
            reprojectionError=c.pnp_threshold_px, confidence=c.pnp_confidence,
            flags=cv2.USAC_MAGSAC)
        if not ok or inl is None or len(inl) < 4:
            return None
        inl = inl.reshape(-1)
        rvec, tvec = cv2.solvePnPRefineLM(obj[inl], img[inl], K, None, rvec, tvec)
        R = cv2.Rodrigues(rvec)[0]
        depth = obj @ R[2] + float(np.ravel(tvec)[2])
        proj = cv2.projectPoints(obj, rvec, tvec, K, None)[0].reshape(-1, 2)
        err = np.linalg.norm(proj - img, axis=1)
        close = err <= c.pnp_threshold_px
        behind = int(np.sum(close & (depth <= 0)))
        return rvec, tvec, np.flatnonzero(close & (depth > 0)), err, behind

    def _problems(self, T, cov, n_in, behind, ratio, rms, spread, position) -> list[str]:
        """The decision rule's reasons to reject a solved pose (empty: verified)."""
        c = self.cfg
        sigma = float(np.sqrt(np.max(np.diag(cov)[:3]))) if np.all(np.isfinite(cov)) else np.inf
        problems = []
        if not (np.all(np.isfinite(T)) and np.all(np.isfinite(cov))):
            problems.append('non-finite pose or covariance')
        if behind > 0.1 * n_in:
            problems.append(f'{behind} matched points behind the camera')
        if ratio < c.min_inlier_ratio:
            problems.append(f'inlier ratio {ratio:.2f} < {c.min_inlier_ratio}')
        if not rms <= c.max_rms_px:
            problems.append(f'reprojection RMS {rms:.2f} px > {c.max_rms_px}')
        if spread < c.min_spread:
            problems.append(f'inliers clustered or collinear (spread {spread:.3f} < '
                            f'{c.min_spread})')
        if not sigma <= c.max_position_sigma_m:
            problems.append(f'position sigma {sigma:.3f} m > {c.max_position_sigma_m}')
        if c.max_coarse_deviation_m is not None and position is not None:
            dev = float(np.linalg.norm(T[:3, 3] - np.asarray(position)))
            if dev > c.max_coarse_deviation_m:
                problems.append(f'{dev:.2f} m from the coarse pose > {c.max_coarse_deviation_m}')
        return problems

    # -- main entry ---------------------------------------------------------------------------
    def localize(self, frame: np.ndarray, K: np.ndarray | None = None, position=None,
                 quaternion_wxyz=None, global_feature=None) -> Verification:
        """Verify one RGB uint8 ``(H, W, 3)`` frame near the coarse pose (see module doc)."""
        c = self.cfg
        t_start = time.perf_counter()
        h, w = frame.shape[:2]
        K = self.default_intrinsics(w, h) if K is None else np.asarray(K, np.float64)
        ms = {}

        t0 = time.perf_counter()
        structure = image_structure(grey_image(frame))
        q = (extract_features(frame, self.spec, c.max_features)
             if structure >= c.min_structure else ())
        ms['features'] = (time.perf_counter() - t0) * 1e3

        def done(status, reason, **kw):
            ms.setdefault('matching', 0.0)
            ms.setdefault('pnp', 0.0)
            ms['total'] = (time.perf_counter() - t_start) * 1e3
            return Verification(status, reason, n_query_features=len(q), structure=structure,
                                ms=ms, **kw)

        # a covered lens is told by what the image holds, not by a feature count that a dark
        # or blurred frame also fails
        if not structure >= c.min_structure:
            return done('rejected', f'image structure {structure:.1f} < {c.min_structure} grey '
                                    'levels: blank or covered frame (nothing to see)')
        if len(q) < c.min_query_features:
            return done('unverified', f'{len(q)} local features < {c.min_query_features}: too '
                                      'dark or too blurred to match')
        t0 = time.perf_counter()
        cand = self.candidates(position, quaternion_wxyz, global_feature)
        corr = self._correspondences(q, cand)
        ms['matching'] = (time.perf_counter() - t0) * 1e3
        n_m = len(corr)
        if n_m < c.min_matches:
            return done('unverified', f'{n_m} 2D-3D matches < {c.min_matches}',
                        n_matches=n_m, candidates=cand)

        t0 = time.perf_counter()
        obj = self.map.points[corr[:, 1]].astype(np.float64)
        img = q.xy[corr[:, 0]].astype(np.float64)
        solved = self._pnp(obj, img, K)
        common = {'n_matches': n_m, 'candidates': cand}
        if solved is None:
            ms['pnp'] = (time.perf_counter() - t0) * 1e3
            return done('unverified', 'PnP + RANSAC found no pose', **common)
        rvec, tvec, inl, err, behind = solved
        n_in = len(inl)
        ratio = n_in / n_m
        rms = float(np.sqrt(np.mean(err[inl] ** 2))) if n_in else float('nan')
        common.update(n_inliers=n_in, inlier_ratio=ratio, reproj_rms_px=rms)
        if n_in < c.min_inliers:
            ms['pnp'] = (time.perf_counter() - t0) * 1e3
            why = f'{n_in} inliers < {c.min_inliers}'
            if behind:
                why += f' ({behind} more behind the camera)'
            return done('unverified', why, **common)
        try:
            cov = pose_covariance(obj[inl], img[inl], rvec, tvec, K)
        except np.linalg.LinAlgError:
            cov = np.full((6, 6), np.nan)
        T = _pose_of(rvec, tvec)
        evals = np.linalg.eigvalsh(np.cov(img[inl].T)) if n_in > 2 else np.zeros(2)
        spread = float(np.sqrt(max(evals.min(), 0.0)) / min(w, h))
        ms['pnp'] = (time.perf_counter() - t0) * 1e3
        common['spread'] = spread
        problems = self._problems(T, cov, n_in, behind, ratio, rms, spread, position)
        if problems:
            return done('rejected', '; '.join(problems), **common)
        sessions = np.bincount(self.frame_session[corr[inl, 2]], minlength=len(self.sessions))
        common['session'] = self.sessions[int(np.argmax(sessions))]
        return done('verified', f'{n_in} inliers ({ratio:.0%}), RMS {rms:.2f} px',
                    position=T[:3, 3].copy(), quaternion_wxyz=matrix_to_quat(T[:3, :3]),
                    covariance=cov, **common)
