"""The synthetic rig: its camera, its mount on the robot, its odometry and the laps it drives."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from posenet_ros.core.errors import ConfigError
from posenet_ros.core.geometry import matrix_to_quat
from posenet_ros.datasets.types import intrinsics_matrix

__all__ = [
    'SceneConfig', 'camera_matrix', 'look_rotation', 'trajectory', 'trajectory_at',
    'iter_frames', 't_map_odom',
    'T_BASE_CAM', 'T_BASE_CAMLINK', 'T_CAMLINK_OPTICAL',
]

# The synthetic rig's camera mount (REP 103 bodies: x forward, y left, z up). camera_link sits
# 0.2 m ahead of and 1.0 m above base_link, pitched down 10 deg (a positive rotation about y
# turns x towards -z). The optical frame (REP 103: z forward, x right, y down) is camera_link
# rotated by the quaternion xyzw (-0.5, 0.5, -0.5, 0.5): optical z = link x, optical x =
# -link y, optical y = -link z. docs/node.md ("Camera extrinsic") works this example through.
_PITCH = math.radians(10.0)
T_BASE_CAMLINK = np.array([[math.cos(_PITCH), 0.0, math.sin(_PITCH), 0.20],
                           [0.0, 1.0, 0.0, 0.0],
                           [-math.sin(_PITCH), 0.0, math.cos(_PITCH), 1.00],
                           [0.0, 0.0, 0.0, 1.0]])
T_CAMLINK_OPTICAL = np.array([[0.0, 0.0, 1.0, 0.0],
                              [-1.0, 0.0, 0.0, 0.0],
                              [0.0, -1.0, 0.0, 0.0],
                              [0.0, 0.0, 0.0, 1.0]])
T_BASE_CAM = T_BASE_CAMLINK @ T_CAMLINK_OPTICAL  # base_link -> camera_optical


def t_map_odom(t: float) -> np.ndarray:
    """The synthetic odometry's error: ``T_map_odom`` ``t`` seconds into a bag.

    Starts at 0.4 m, -0.25 m, 3 deg and drifts 1 cm/s, 0.5 cm/s and 0.2 deg/s: not the identity,
    and slow against the frame rate, like wheel odometry's slip.
    """
    yaw = math.radians(3.0 + 0.2 * t)
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0, 0.40 + 0.010 * t],
                     [s, c, 0.0, -0.25 + 0.005 * t],
                     [0.0, 0.0, 1.0, 0.0],
                     [0.0, 0.0, 0.0, 1.0]])


@dataclass
class SceneConfig:
    """Everything that defines a synthetic dataset (stored in its dataset.json)."""

    seed: int = 0
    width: int = 320
    height: int = 240
    fx: float = 277.0  # ~60 deg horizontal field of view at 320 px
    fy: float | None = None  # None: same as fx
    n_train: int = 300
    n_test: int = 100
    rate: float = 30.0  # Hz, header stamps of consecutive frames
    start_time: float = 1_700_000_000.0  # seconds, stamp of the first frame
    map_frame: str = 'map'
    camera_frame: str = 'camera_optical'
    base_frame: str = 'base_link'
    odom_frame: str = 'odom'
    camera_link_frame: str = 'camera_link'

    def K(self) -> np.ndarray:  # noqa: N802 (K is the standard name of the intrinsics)
        """Intrinsics with the principal point at the image centre."""
        return camera_matrix(self.width, self.height, self.fx, self.fy)


def camera_matrix(width: int, height: int, fx: float, fy: float | None = None) -> np.ndarray:
    """K with (cx, cy) at the image centre in pixel-centre coordinates."""
    return intrinsics_matrix(fx, fx if fy is None else fy, (width - 1) / 2.0, (height - 1) / 2.0)


def look_rotation(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """R_map_cam of an optical camera looking along (yaw, pitch) in a z-up map (radians)."""
    f = np.array([math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch),
                  math.sin(pitch)])
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    R = np.stack([right, down, f], axis=1)  # columns: optical x (right), y (down), z (forward)
    c, s = math.cos(roll), math.sin(roll)
    return R @ np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


# Per lap: (height m, ellipse scale, heading offset deg, sweep phase). Test laps sit between the
# training laps in height, radius and heading, and are sampled at other phases.
_LAPS = {
    'train': [(1.30, 1.00, 0.0, 0.0), (1.55, 0.82, -55.0, 1.0), (1.80, 1.12, 50.0, 2.0)],
    'test': [(1.42, 0.92, -25.0, 0.5), (1.68, 1.06, 25.0, 1.5)],
}
_ELLIPSE = (5.0, 3.6)


def trajectory(kind: str = 'train', n: int = 300, seed: int = 0) -> list[tuple[np.ndarray,
                                                                               np.ndarray]]:
    """``n`` camera poses (position, wxyz) along the train or test laps of the courtyard."""
    if kind not in _LAPS:
        raise ConfigError(f"trajectory kind must be 'train' or 'test', got {kind!r}")
    if n < 1:
        raise ConfigError(f'trajectory needs n >= 1 frames, got {n}')
    return [trajectory_at(kind, n, seed, i) for i in range(n)]


def _lap_of(kind: str, n: int, x: float) -> tuple[float, int]:
    s = (x + (0.5 if kind == 'test' else 0.0)) / n * len(_LAPS[kind])
    return s, min(max(int(s), 0), len(_LAPS[kind]) - 1)


def trajectory_at(kind: str, n: int, seed: int, x: float) -> tuple[np.ndarray, np.ndarray]:
    """The camera pose at fractional frame index ``x`` of :func:`trajectory` (its motion).

    Between two frames the camera drives along its lap; a lap ends with a jump to the next one,
    placed halfway between the two frames around it (each frame keeps its own lap's motion).
    """
    laps = _LAPS[kind]
    rng = np.random.default_rng(seed + (0 if kind == 'train' else 7919))
    phase0 = rng.uniform(0, 2 * math.pi)
    s, _ = _lap_of(kind, n, x)
    lap = _lap_of(kind, n, min(max(math.floor(x + 0.5), 0), n - 1))[1]
    theta = phase0 + 2 * math.pi * (s - lap) + lap * 0.9
    h, scale, offset, ph = laps[lap]
    a, b = _ELLIPSE[0] * scale, _ELLIPSE[1] * scale
    pos = np.array([a * math.cos(theta), b * math.sin(theta),
                    h + 0.08 * math.sin(3 * theta + ph)])
    tangent = math.atan2(b * math.cos(theta), -a * math.sin(theta))
    yaw = tangent + math.radians(offset + 30.0 * math.sin(2 * theta + ph))
    pitch = math.radians(-6.0 + 5.0 * math.sin(3 * theta + ph))
    roll = math.radians(3.0 * math.sin(5 * theta + ph))
    return pos, matrix_to_quat(look_rotation(yaw, pitch, roll))


def iter_frames(cfg: SceneConfig, which: str):
    """(split, index, position, quaternion, stamp) for 'train', 'test' or 'all' (train first)."""
    kinds = ['train', 'test'] if which == 'all' else [which]
    counts = {'train': cfg.n_train, 'test': cfg.n_test}
    k = 0
    for kind in kinds:
        for i, (p, q) in enumerate(trajectory(kind, counts[kind], cfg.seed)):
            yield kind, i, p, q, cfg.start_time + k / cfg.rate
            k += 1
