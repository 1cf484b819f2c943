"""Nav2's AMCL as the supervision tests and benchmark meet it, without Nav2.

The particle filter, motion and laser models are nav2_amcl's, through the ``amcl`` bindings
(PyPI 0.1.2, GPLv3: a pinned test dependency in requirements/test.txt; ``posenet_ros`` never
imports it). :class:`Nav2Amcl` is the loop ``nav2_amcl``'s node runs around that filter:

* nothing happens before an initial pose (``set_initial_pose: false``): no update, no
  ``map -> odom``;
* ``/initialpose`` re-seeds the particles from its x, y, yaw and their covariance, after
  moving the pose by the odometry between its stamp and now (as ``handleInitialPose`` does);
  the next scan then updates the filter whatever the motion;
* a scan updates the filter only when the odometry moved more than ``update_min_d`` along x or
  y, or turned more than ``update_min_a``, since the last update;
* the recovery alphas are 0 (Nav2's defaults): no random particles, so a kidnapped filter stays
  lost until someone sends an initial pose.

One difference from Nav2's defaults: the bindings implement the beam laser model, not
``likelihood_field``; the parameters are otherwise nav2_bringup's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import amcl
import numpy as np

__all__ = ['NAV2_DEFAULTS', 'Nav2Amcl', 'AmclParams']


@dataclass(frozen=True)
class AmclParams:
    """nav2_bringup's ``amcl`` parameters (the ones the bindings take)."""

    alpha1: float = 0.2
    alpha2: float = 0.2
    alpha3: float = 0.2
    alpha4: float = 0.2
    alpha5: float = 0.2
    min_particles: int = 500
    max_particles: int = 2000
    recovery_alpha_slow: float = 0.0
    recovery_alpha_fast: float = 0.0
    z_hit: float = 0.5
    z_short: float = 0.05
    z_max: float = 0.05
    z_rand: float = 0.5
    sigma_hit: float = 0.2
    lambda_short: float = 0.1
    chi_outlier: float = 0.05
    max_beams: int = 60
    update_min_d: float = 0.25
    update_min_a: float = 0.2
    transform_tolerance: float = 1.0


NAV2_DEFAULTS = AmclParams()


def _matrix(x: float, y: float, yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, x], [s, c, y], [0.0, 0.0, 1.0]])


def _pose(m: np.ndarray) -> np.ndarray:
    return np.array([m[0, 2], m[1, 2], math.atan2(m[1, 0], m[0, 0])])


class Nav2Amcl:
    """nav2_amcl's filter loop (see the module docstring), ROS-free.

    ``grid``: a :class:`posenet_ros.tools.synthetic.robot.GridMap` (or anything with ``cells``
    (rows = y; 100 occupied, 0 free), ``resolution`` and ``origin``); ``angles``: the scan's
    bearings (rad, laser frame); ``range_max``: its maximum range; ``laser_pose``: the laser in
    the base frame (x, y, yaw).
    """

    def __init__(self, grid, angles, range_max: float, params: AmclParams = NAV2_DEFAULTS,
                 laser_pose=(0.0, 0.0, 0.0)):
        p = self.params = params
        motion = amcl.MotionParameters(alpha1=p.alpha1, alpha2=p.alpha2, alpha3=p.alpha3,
                                       alpha4=p.alpha4, alpha5=p.alpha5)
        laser = amcl.LaserParameters(z_hit=p.z_hit, z_short=p.z_short, z_max=p.z_max,
                                     z_rand=p.z_rand, sigma_hit=p.sigma_hit,
                                     lambda_short=p.lambda_short, chi_outlier=p.chi_outlier,
                                     max_beams=p.max_beams)
        self.filter = amcl.AMCL(min_particles=p.min_particles, max_particles=p.max_particles,
                                alpha_slow=p.recovery_alpha_slow,
                                alpha_fast=p.recovery_alpha_fast, motion_params=motion,
                                laser_params=laser, robot_model_type='differential')
        cells = np.asarray(grid.cells).astype(int).tolist()
        self.filter.set_map(amcl.create_occupancy_grid_from_list(
            cells, float(grid.resolution), float(grid.origin[0]), float(grid.origin[1])))
        self.filter.set_laser_pose(amcl.Vector3D(*(float(v) for v in laser_pose)))
        self.angles = np.asarray(angles, float)
        self.range_max = float(range_max)
        self.initialized = False  # an initial pose was received
        self.force_update = False
        self.last_odom = None  # odometry pose of the last filter update
        self.t_map_odom = None  # 3x3 planar, None before the first update
        self.updates = 0
        self.initial_poses = 0

    def initial_pose(self, pose, covariance, odom_at_stamp=None, odom_now=None) -> None:
        """Re-seed the filter at ``pose`` (x, y, yaw) with the 3x3 ``covariance`` (x, y, yaw).

        ``odom_at_stamp`` / ``odom_now``: the odometry pose at the message's stamp and now; the
        pose is moved by the motion between them (nav2_amcl integrates it the same way).
        """
        pose = np.asarray(pose, float)
        if odom_at_stamp is not None and odom_now is not None:
            moved = np.linalg.solve(_matrix(*odom_at_stamp), _matrix(*odom_now))
            pose = _pose(_matrix(*pose) @ moved)
        cov = np.asarray(covariance, float).reshape(3, 3)
        m = amcl.Matrix3D()
        m.from_list(cov.tolist())
        self.filter.set_initial_pose(amcl.Vector3D(*(float(v) for v in pose)), m)
        self.initialized = True
        self.force_update = True
        self.initial_poses += 1

    def _moved_enough(self, odom) -> bool:
        if self.last_odom is None or self.force_update:
            return True
        d = np.asarray(odom, float) - self.last_odom
        turn = abs(math.atan2(math.sin(d[2]), math.cos(d[2])))
        return (abs(d[0]) > self.params.update_min_d or abs(d[1]) > self.params.update_min_d
                or turn > self.params.update_min_a)

    def scan(self, ranges, odom) -> bool:
        """One laser scan at odometry pose ``odom`` (x, y, yaw); True when the filter updated."""
        if not self.initialized or not self._moved_enough(odom):
            return False
        r = np.clip(np.nan_to_num(np.asarray(ranges, float), nan=self.range_max,
                                  posinf=self.range_max), 0.0, self.range_max)
        scan = amcl.create_laser_scan_from_list(np.stack([r, self.angles], 1).tolist(),
                                                self.range_max)
        odom = np.asarray(odom, float)
        self.filter.update(scan, amcl.Vector3D(*(float(v) for v in odom)))
        self.last_odom = odom
        self.force_update = False
        self.updates += 1
        self.t_map_odom = _matrix(*self.pose) @ np.linalg.inv(_matrix(*odom))
        return True

    @property
    def pose(self) -> np.ndarray:
        """The filter's mean ``(x, y, yaw)`` of the base in the map."""
        p = self.filter.get_pose_mean()
        return np.array([p.x, p.y, p.theta])

    @property
    def covariance(self) -> np.ndarray:
        """The filter's 3x3 covariance (x, y, yaw)."""
        return np.array(self.filter.get_pose_covariance().to_list())

    def base_in_map(self, odom) -> np.ndarray | None:
        """What AMCL believes: ``(x, y, yaw)`` of the base at odometry pose ``odom``."""
        if self.t_map_odom is None:
            return None
        return _pose(self.t_map_odom @ _matrix(*odom))
