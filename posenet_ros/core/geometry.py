"""Pose conventions and SE(3) helpers used everywhere in posenet_ros.

The one convention
------------------
A pose is ``T_map_cam``: it maps points from the camera optical frame (REP 103 optical axes:
z forward, x right, y down) into the map frame::

    X_map = R_map_cam @ X_cam + t_map_cam

* ``position`` (3,)     = ``t_map_cam`` = the camera centre in the map frame, in metres.
* ``quaternion`` (4,)   = ``R_map_cam`` (camera-to-map rotation) as a unit quaternion in
  **wxyz** order (transforms3d's order). Canonical form has ``w >= 0`` (q and -q are the same
  rotation). Outputs (exports, ROS messages) are canonical. Training targets are not
  necessarily: camera-optical orientations in a z-up map cross ``w = 0`` at some headings, so
  canonical labels of neighbouring views can be ``q`` and ``-q``. The trainer therefore puts
  labels in the hemisphere of a per-scene reference rotation (:func:`mean_quaternion`,
  :func:`to_hemisphere`) and/or uses a sign-invariant loss (``posenet_ros.training.losses``).
* ROS messages (``geometry_msgs/Quaternion``) are **xyzw**. Convert only at the ROS boundary with
  :func:`wxyz_to_xyzw` / :func:`xyzw_to_wxyz`; everything inside the core is wxyz.

Dataset readers convert their own conventions into this one (see ``posenet_ros.datasets``).
"""

from __future__ import annotations

import numpy as np
import transforms3d.quaternions as tq

from posenet_ros.core.errors import InvalidPoseError

__all__ = [
    'normalize_quaternion', 'canonicalize_quaternion', 'wxyz_to_xyzw', 'xyzw_to_wxyz',
    'quat_to_matrix', 'matrix_to_quat', 'pose_to_matrix', 'matrix_to_pose', 'compose',
    'invert', 'transform_points', 'slerp', 'interpolate_pose', 'translation_error',
    'rotation_error_deg', 'mean_quaternion', 'to_hemisphere', 'base_in_map', 'map_to_odom',
    'covariance_through_mount',
]


def normalize_quaternion(q: np.ndarray) -> np.ndarray:
    """Return ``q`` (..., 4) scaled to unit norm; raise on zero or non-finite input."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(norm < 1e-12):
        raise InvalidPoseError(f'quaternion {q.tolist()} is zero or not finite; cannot normalise')
    return q / norm


def canonicalize_quaternion(q: np.ndarray) -> np.ndarray:
    """Normalise ``q`` (..., 4, wxyz) and flip it to the hemisphere ``w >= 0``."""
    q = normalize_quaternion(q)
    sign = np.where(q[..., :1] < 0, -1.0, 1.0)
    return q * sign


def mean_quaternion(q: np.ndarray) -> np.ndarray:
    """Chordal mean rotation of wxyz quaternions ``q`` (N, 4), canonical (w >= 0) unit (4,).

    Markley et al. 2007: the top eigenvector of ``sum q q^T``, which ignores the sign of each
    quaternion (q and -q contribute the same outer product).
    """
    q = normalize_quaternion(np.asarray(q, dtype=np.float64).reshape(-1, 4))
    if len(q) == 0:
        raise InvalidPoseError('mean_quaternion needs at least one quaternion')
    _, vecs = np.linalg.eigh(q.T @ q)  # eigenvalues ascending: the last vector is the top one
    return canonicalize_quaternion(vecs[:, -1])


def to_hemisphere(q: np.ndarray, q_ref: np.ndarray) -> np.ndarray:
    """Normalise ``q`` (..., 4, wxyz) and flip each one to ``<q, q_ref> >= 0``.

    Every rotation is unchanged (q and -q are the same rotation); only the sign is chosen so
    that all quaternions lie in the hemisphere of ``q_ref``. A rotation 180 deg from ``q_ref``
    sits on that hemisphere's boundary, far from a scene's typical views.
    """
    q = normalize_quaternion(q)
    ref = normalize_quaternion(np.asarray(q_ref, dtype=np.float64).reshape(4))
    sign = np.where(np.sum(q * ref, axis=-1, keepdims=True) < 0, -1.0, 1.0)
    return q * sign


def wxyz_to_xyzw(q: np.ndarray) -> np.ndarray:
    """Reorder a quaternion from wxyz (core) to xyzw (ROS messages)."""
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([q[..., 1:], q[..., :1]], axis=-1)


def xyzw_to_wxyz(q: np.ndarray) -> np.ndarray:
    """Reorder a quaternion from xyzw (ROS messages) to wxyz (core)."""
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([q[..., 3:], q[..., :3]], axis=-1)


def quat_to_matrix(q_wxyz: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of a wxyz quaternion (normalised first)."""
    return tq.quat2mat(normalize_quaternion(q_wxyz))


def matrix_to_quat(rot: np.ndarray) -> np.ndarray:
    """Canonical (w >= 0) wxyz quaternion of a rotation matrix (3, 3)."""
    rot = np.asarray(rot, dtype=np.float64)
    if rot.shape != (3, 3) or not np.all(np.isfinite(rot)):
        raise InvalidPoseError(f'expected a finite 3x3 rotation matrix, got shape {rot.shape}')
    return canonicalize_quaternion(tq.mat2quat(rot))


def pose_to_matrix(position: np.ndarray, q_wxyz: np.ndarray) -> np.ndarray:
    """Homogeneous 4x4 ``T_map_cam`` from a position and a wxyz quaternion."""
    mat = np.eye(4)
    mat[:3, :3] = quat_to_matrix(q_wxyz)
    mat[:3, 3] = np.asarray(position, dtype=np.float64).reshape(3)
    return mat


def matrix_to_pose(mat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split a 4x4 transform into (position (3,), canonical wxyz quaternion (4,))."""
    mat = np.asarray(mat, dtype=np.float64)
    if mat.shape != (4, 4):
        raise InvalidPoseError(f'expected a 4x4 transform, got shape {mat.shape}')
    return mat[:3, 3].copy(), matrix_to_quat(mat[:3, :3])


def compose(t_a_b: np.ndarray, t_b_c: np.ndarray) -> np.ndarray:
    """``T_a_c = T_a_b @ T_b_c`` (T_x_y maps points from frame y into frame x)."""
    return np.asarray(t_a_b, dtype=np.float64) @ np.asarray(t_b_c, dtype=np.float64)


def invert(t_a_b: np.ndarray) -> np.ndarray:
    """``T_b_a`` from ``T_a_b`` using the rigid-body structure (no general matrix inverse)."""
    t_a_b = np.asarray(t_a_b, dtype=np.float64)
    out = np.eye(4)
    rot_t = t_a_b[:3, :3].T
    out[:3, :3] = rot_t
    out[:3, 3] = -rot_t @ t_a_b[:3, 3]
    return out


def transform_points(t_a_b: np.ndarray, points_b: np.ndarray) -> np.ndarray:
    """Map points (N, 3) from frame b into frame a."""
    points_b = np.asarray(points_b, dtype=np.float64).reshape(-1, 3)
    return points_b @ t_a_b[:3, :3].T + t_a_b[:3, 3]


def slerp(q0: np.ndarray, q1: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation between wxyz quaternions along the shorter arc (canonical out)."""
    q0 = normalize_quaternion(q0)
    q1 = normalize_quaternion(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:  # nearly parallel: linear interpolation is exact enough and stable
        return canonicalize_quaternion(q0 + alpha * (q1 - q0))
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    out = (np.sin((1 - alpha) * theta) * q0 + np.sin(alpha * theta) * q1) / np.sin(theta)
    return canonicalize_quaternion(out)


def interpolate_pose(p0, q0, p1, q1, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Linear position / slerp orientation interpolation, ``alpha`` in [0, 1]."""
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    return p0 + alpha * (p1 - p0), slerp(q0, q1, alpha)


def translation_error(p_est: np.ndarray, p_true: np.ndarray) -> np.ndarray:
    """Euclidean position error in metres, vectorised over leading dimensions."""
    diff = np.asarray(p_est, dtype=np.float64) - np.asarray(p_true, dtype=np.float64)
    return np.linalg.norm(diff, axis=-1)


def rotation_error_deg(q_est: np.ndarray, q_true: np.ndarray) -> np.ndarray:
    """Angle of the relative rotation in degrees: ``2 * acos(|<q1, q2>|)`` (sign-invariant).

    This is the corrected PoseNet metric; the original paper printed half of it.
    """
    q_est = normalize_quaternion(q_est)
    q_true = normalize_quaternion(q_true)
    dot = np.abs(np.sum(q_est * q_true, axis=-1))
    return np.degrees(2.0 * np.arccos(np.clip(dot, 0.0, 1.0)))


# --- the camera mount: camera poses to base poses (T_base_cam is the mount extrinsic) ---------
def map_to_odom(t_map_cam: np.ndarray, t_odom_cam: np.ndarray) -> np.ndarray:
    """``T_map_odom = T_map_cam @ T_odom_cam^-1`` (both camera poses at the same stamp)."""
    return compose(t_map_cam, invert(t_odom_cam))


def covariance_through_mount(cov_cam: np.ndarray, t_map_cam: np.ndarray,
                             t_cam_base: np.ndarray) -> np.ndarray:
    """6x6 covariance of ``T_map_base = T_map_cam T_cam_base`` from that of the camera pose.

    Both covariances are in ROS order (x, y, z, then small rotations about the *map's* fixed
    x, y, z axes, i.e. a left perturbation ``R' = exp(dtheta) R``). Then the base rotation
    takes the same ``dtheta``, and the base position ``p_b = p_c + R_c t_cb`` moves by
    ``dp - [R_c t_cb]_x dtheta``: the lever arm turns rotation uncertainty into position
    uncertainty (first order).
    """
    lever = t_map_cam[:3, :3] @ t_cam_base[:3, 3]
    skew = np.array([[0.0, -lever[2], lever[1]], [lever[2], 0.0, -lever[0]],
                     [-lever[1], lever[0], 0.0]])
    jac = np.eye(6)
    jac[:3, 3:] = -skew
    out = jac @ np.asarray(cov_cam, np.float64).reshape(6, 6) @ jac.T
    return 0.5 * (out + out.T)


def base_in_map(t_map_cam: np.ndarray, t_base_cam: np.ndarray) -> np.ndarray:
    """``T_map_base = T_map_cam @ T_base_cam^-1`` from the camera pose and the mount extrinsic."""
    return compose(t_map_cam, invert(t_base_cam))
