"""A simulated wheeled robot in the courtyard: its drive, laser, wheel odometry and camera.

No ROS: the closed-loop test's robot node, and the supervision benchmark, drive this object and
turn its outputs into messages (or feed them straight into a filter).

Frames (REP 105): ``map`` is the scene's frame; the robot's ``base_link`` moves in the plane
``z = 0`` (x forward, y left); ``odom`` is where the wheel odometry started, and it drifts from
the truth as the noisy increments add up. A kidnap moves the truth only: the odometry never
knows, as when a robot is carried.

* :func:`occupancy_grid`: the courtyard's walls and crates cut at the laser's height, as a
  ``nav_msgs/OccupancyGrid``-style array (row = y, 100 occupied, 0 free);
* :class:`Laser`: a planar scan ray-cast analytically against the same walls and crates
  (vectorised over beams and boxes: this is the simulation's hot path);
* :class:`WheelOdometry`: the true motion increments with proportional noise;
* :class:`LapDrive`: the base's pose along one of the training laps of the camera, so that the
  camera stays inside the views a courtyard model was trained on;
* :class:`SimRobot`: all of the above, stepped in simulated time, with :meth:`SimRobot.kidnap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from posenet_ros.core.geometry import matrix_to_pose
from posenet_ros.tools.synthetic.raycast import render
from posenet_ros.tools.synthetic.rig import T_CAMLINK_OPTICAL, camera_matrix
from posenet_ros.tools.synthetic.scene import ROOM, Scene

__all__ = ['LASER_HEIGHT', 'GridMap', 'occupancy_grid', 'Laser', 'WheelOdometry', 'LapDrive',
           'SimRobot', 'robot_mount', 'planar_matrix', 'planar_of', 'planar_error',
           'wrap_angle']

LASER_HEIGHT = 0.30  # m above the ground, as a planar lidar on a small base


def wrap_angle(a):
    """Angle(s) wrapped to [-pi, pi)."""
    return (np.asarray(a) + math.pi) % (2 * math.pi) - math.pi


def planar_matrix(x: float, y: float, yaw: float) -> np.ndarray:
    """4x4 ``T`` of a planar pose (rotation about z)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0, x], [s, c, 0.0, y], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def planar_of(T: np.ndarray) -> np.ndarray:
    """``(x, y, yaw)`` of a 4x4 transform (its projection onto the plane)."""
    T = np.asarray(T, float)
    return np.array([T[0, 3], T[1, 3], math.atan2(T[1, 0], T[0, 0])])


def planar_error(a, b) -> tuple[float, float]:
    """Distance (m) and absolute heading difference (deg) of two ``(x, y, yaw)`` poses."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return (float(math.hypot(a[0] - b[0], a[1] - b[1])),
            float(abs(math.degrees(wrap_angle(a[2] - b[2])))))


def robot_mount(height: float = 1.30, pitch_deg: float = -6.0, forward: float = 0.10
                ) -> np.ndarray:
    """``T_base_cam`` of the robot's camera: optical frame ``height`` m up, pitched down.

    The defaults put the camera where the courtyard's first training lap flew it (1.30 m, -6 deg
    pitch on average): a model trained on those laps has seen what this camera sees.
    ``pitch_deg`` < 0 looks down (REP 103 body: a positive rotation about y tilts x towards -z).
    """
    p = math.radians(-pitch_deg)
    link = np.array([[math.cos(p), 0.0, math.sin(p), forward],
                     [0.0, 1.0, 0.0, 0.0],
                     [-math.sin(p), 0.0, math.cos(p), height],
                     [0.0, 0.0, 0.0, 1.0]])
    return link @ T_CAMLINK_OPTICAL


@dataclass(frozen=True)
class GridMap:
    """An occupancy grid: ``cells`` (rows = y, columns = x) 100 occupied / 0 free.

    ``origin``: map position (x, y) of the corner of cell (0, 0) (as ``nav_msgs/MapMetaData``).
    """

    cells: np.ndarray
    resolution: float
    origin: tuple[float, float]

    @property
    def width(self) -> int:
        """Cells along x."""
        return int(self.cells.shape[1])

    @property
    def height(self) -> int:
        """Cells along y."""
        return int(self.cells.shape[0])


def _boxes_at(scene: Scene, z: float) -> np.ndarray:
    """(N, 4) ``x0, y0, x1, y1`` of the crates that cross height ``z``."""
    out = [(lo[0], lo[1], hi[0], hi[1]) for lo, hi, _ in scene.boxes if lo[2] <= z <= hi[2]]
    return np.array(out, float).reshape(-1, 4)


def occupancy_grid(scene: Scene, resolution: float = 0.05, height: float = LASER_HEIGHT,
                   margin: float = 0.5) -> GridMap:
    """The walls and crates at ``height`` as an occupancy grid, ``margin`` m beyond the walls.

    A cell is occupied when its centre lies in a crate or beyond a wall (the courtyard's outside
    is solid: a wall is as thick as the margin).
    """
    x0, x1, y0, y1 = ROOM
    ox, oy = x0 - margin, y0 - margin
    nx = int(math.ceil((x1 - x0 + 2 * margin) / resolution))
    ny = int(math.ceil((y1 - y0 + 2 * margin) / resolution))
    cx = ox + (np.arange(nx) + 0.5) * resolution
    cy = oy + (np.arange(ny) + 0.5) * resolution
    X, Y = np.meshgrid(cx, cy)
    occ = (X <= x0) | (X >= x1) | (Y <= y0) | (Y >= y1)
    for bx0, by0, bx1, by1 in _boxes_at(scene, height):
        occ |= (X >= bx0) & (X <= bx1) & (Y >= by0) & (Y <= by1)
    return GridMap(np.where(occ, 100, 0).astype(np.int8), float(resolution), (ox, oy))


@dataclass
class Laser:
    """A planar scanner: ``n_beams`` over 360 deg, ranges in [``range_min``, ``range_max``].

    ``noise_std``: Gaussian range noise (m). A beam that hits nothing within ``range_max``
    returns ``range_max`` (as ``sensor_msgs/LaserScan`` consumers read a max-range reading).
    """

    n_beams: int = 180
    range_min: float = 0.1
    range_max: float = 20.0
    noise_std: float = 0.01

    @property
    def angles(self) -> np.ndarray:
        """Beam bearings in the laser frame (rad), ``angle_min = -pi``."""
        return -math.pi + np.arange(self.n_beams) * (2 * math.pi / self.n_beams)

    @property
    def angle_increment(self) -> float:
        """Angle between beams (rad)."""
        return 2 * math.pi / self.n_beams

    def scan(self, scene_boxes: np.ndarray, pose, rng: np.random.Generator) -> np.ndarray:
        """Ranges (m) from a laser at planar ``pose`` (x, y, yaw), ray-cast exactly.

        ``scene_boxes``: (N, 4) crate rectangles (:func:`_boxes_at`). The courtyard is convex, so
        each beam's wall range is its exit distance; crates are slabs.
        """
        x, y, yaw = (float(v) for v in pose)
        a = self.angles + yaw
        dx, dy = np.cos(a), np.sin(a)
        with np.errstate(divide='ignore', invalid='ignore'):
            inv_x, inv_y = 1.0 / dx, 1.0 / dy
            x0, x1, y0, y1 = ROOM
            tx = np.where(dx > 0, (x1 - x) * inv_x, (x0 - x) * inv_x)
            ty = np.where(dy > 0, (y1 - y) * inv_y, (y0 - y) * inv_y)
            r = np.fmin(np.where(np.isfinite(tx), tx, np.inf), np.where(np.isfinite(ty), ty,
                                                                          np.inf))
            if len(scene_boxes):
                b = scene_boxes
                t1x = (b[None, :, 0] - x) * inv_x[:, None]
                t2x = (b[None, :, 2] - x) * inv_x[:, None]
                t1y = (b[None, :, 1] - y) * inv_y[:, None]
                t2y = (b[None, :, 3] - y) * inv_y[:, None]
                tmin = np.maximum(np.fmin(t1x, t2x), np.fmin(t1y, t2y))
                tmax = np.minimum(np.fmax(t1x, t2x), np.fmax(t1y, t2y))
                hit = (tmax >= tmin) & (tmin > 0)
                r = np.minimum(r, np.where(hit, tmin, np.inf).min(axis=1))
        r = r + rng.normal(0.0, self.noise_std, size=r.shape)
        return np.clip(r, self.range_min, self.range_max)


@dataclass
class WheelOdometry:
    """``T_odom_base`` integrated from true motion increments with proportional noise.

    Each step's forward distance is scaled by ``1 + N(0, trans_noise)`` and its turn by
    ``1 + N(0, rot_noise)``, plus ``yaw_drift`` rad per metre: slip, never a jump.
    """

    trans_noise: float = 0.02
    rot_noise: float = 0.02
    yaw_drift: float = 0.005
    pose: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def step(self, delta_base, rng: np.random.Generator) -> None:
        """Add the true increment ``(dx, dy, dyaw)`` given in the previous base frame."""
        dx, dy, dth = (float(v) for v in delta_base)
        k = 1.0 + rng.normal(0.0, self.trans_noise)
        dist = math.hypot(dx, dy)
        dth = dth * (1.0 + rng.normal(0.0, self.rot_noise)) + self.yaw_drift * dist
        x, y, th = self.pose
        c, s = math.cos(th), math.sin(th)
        self.pose = np.array([x + k * (c * dx - s * dy), y + k * (s * dx + c * dy),
                              float(wrap_angle(th + dth))])


@dataclass
class LapDrive:
    """The base's planar pose along an ellipse of the courtyard, heading along its tangent.

    ``scale`` and ``speed`` (m/s): the default follows the first training lap of
    :func:`~posenet_ros.tools.synthetic.rig.trajectory` (5.0 m x 3.6 m semi-axes, counter-
    clockwise), the one :func:`robot_mount`'s camera height matches. ``wobble`` (m): a slow
    sideways weave, so that laps do not repeat exactly.
    """

    scale: float = 1.0
    speed: float = 0.5
    wobble: float = 0.15
    axes: tuple[float, float] = (5.0, 3.6)

    def pose_at(self, theta: float, t: float = 0.0) -> np.ndarray:
        """``(x, y, yaw)`` at ellipse angle ``theta``, weave phase from ``t`` seconds."""
        a, b = self.axes[0] * self.scale, self.axes[1] * self.scale
        tx, ty = -a * math.sin(theta), b * math.cos(theta)
        n = math.hypot(tx, ty)
        off = self.wobble * math.sin(0.21 * t) * math.sin(0.07 * t + 1.0)
        # The outward normal (ty, -tx) / n moves the base sideways without turning it.
        return np.array([a * math.cos(theta) + off * ty / n, b * math.sin(theta) - off * tx / n,
                         math.atan2(ty, tx)])

    def advance(self, theta: float, dt: float) -> float:
        """Ellipse angle after driving ``dt`` seconds at ``speed`` from ``theta``."""
        a, b = self.axes[0] * self.scale, self.axes[1] * self.scale
        return theta + self.speed * dt / math.hypot(a * math.sin(theta), b * math.cos(theta))


class SimRobot:
    """The robot: truth, odometry, laser and camera, stepped by :meth:`step` in simulated time.

    ``scene``: the courtyard it drives in (the camera renders it; the laser sees its walls and
    crates). ``camera_in_base``: ``T_base_cam`` (default :func:`robot_mount`). ``start_theta``:
    where on the lap it starts; ``seed``: the noise of odometry and laser.
    """

    def __init__(self, scene: Scene, *, drive: LapDrive | None = None, laser: Laser | None = None,
                 odometry: WheelOdometry | None = None, camera_in_base=None,
                 width: int = 320, height: int = 240, fx: float = 277.0,
                 start_theta: float = 0.0, seed: int = 0):
        self.scene = scene
        self.drive = drive or LapDrive()
        self.laser = laser or Laser()
        self.odometry = odometry or WheelOdometry()
        self.camera_in_base = np.asarray(robot_mount() if camera_in_base is None
                                         else camera_in_base, float)
        self.width, self.height = width, height
        self.K = camera_matrix(width, height, fx)
        self.rng = np.random.default_rng(seed)
        self.boxes = _boxes_at(scene, LASER_HEIGHT)
        self.t = 0.0
        self.theta = float(start_theta)
        self.truth = self.drive.pose_at(self.theta, 0.0)

    def step(self, dt: float) -> None:
        """Drive ``dt`` seconds: the truth moves along the lap, the odometry adds the increment."""
        before = self.truth
        self.t += dt
        self.theta = self.drive.advance(self.theta, dt)
        self.truth = self.drive.pose_at(self.theta, self.t)
        rel = np.linalg.solve(planar_matrix(*before), planar_matrix(*self.truth))
        self.odometry.step(planar_of(rel), self.rng)

    def kidnap(self, theta: float) -> None:
        """Carry the robot to ellipse angle ``theta`` (the odometry does not notice)."""
        self.theta = float(theta)
        self.truth = self.drive.pose_at(self.theta, self.t)

    @property
    def t_map_odom(self) -> np.ndarray:
        """The true ``T_map_odom`` (truth composed with the odometry's inverse)."""
        return planar_matrix(*self.truth) @ np.linalg.inv(planar_matrix(*self.odometry.pose))

    def scan(self) -> np.ndarray:
        """One laser scan (ranges, m) from the true pose (the laser sits on the base)."""
        return self.laser.scan(self.boxes, self.truth, self.rng)

    def camera_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """The true camera pose ``T_map_cam`` as (position, quaternion wxyz)."""
        return matrix_to_pose(planar_matrix(*self.truth) @ self.camera_in_base)

    def frame(self, scene: Scene | None = None) -> np.ndarray:
        """The camera's RGB frame (H, W, 3) uint8; ``scene``: render another scene instead."""
        p, q = self.camera_pose()
        return render(scene or self.scene, p, q, self.K, self.width, self.height)
