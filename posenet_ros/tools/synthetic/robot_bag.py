"""The synthetic courtyard recorded as a Nav2 robot running AMCL would record it.

What makes a robot's bag hard to label, and what the plain synthetic bag does not have:

* ``map -> odom`` comes from AMCL once per laser scan (:attr:`RobotProfile.laser_rate`, 5 Hz),
  future-dated by ``transform_tolerance`` (header stamp = scan time + 1.0 s, recorded at the
  scan time plus a little latency), as Nav2's AMCL publishes it;
* wheel odometry ``odom -> base_footprint`` at 50 Hz (/tf and /odom), drifting slowly against
  the map (:func:`~posenet_ros.tools.synthetic.rig.t_map_odom`), so ``map -> odom`` matters;
* the mount ``base_footprint -> base_link -> camera_link -> camera_color_optical_frame`` on
  /tf_static;
* JPEG images at 15 Hz with camera_info, under a RealSense-like topic name;
* ``/amcl_pose`` (PoseWithCovarianceStamped of base_footprint) on filter updates only: a scan
  after the robot moved ``update_min_d`` or turned ``update_min_a``.

The first scan comes ``first_scan`` seconds after the first image (the recording started
between two scans), so the first image has no ``map -> odom`` before it, as in a real bag.
``/ground_truth/pose`` (camera) and ``/ground_truth/base_pose`` (base_footprint), stamped with
the images, are there for the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

import posenet_ros.tools.synthetic.rig as rig
from posenet_ros.core.geometry import (
    compose,
    invert,
    matrix_to_pose,
    pose_to_matrix,
    rotation_error_deg,
)
from posenet_ros.tools.synthetic.raycast import render
from posenet_ros.tools.synthetic.rig import SceneConfig, t_map_odom

__all__ = ['RobotProfile', 'ROBOT_TOPICS', 'T_FOOTPRINT_BASE', 'T_FOOTPRINT_CAM',
           'robot_config', 'write_robot_frames']

#: base_footprint -> base_link: the base 10 cm above its footprint (a URDF's usual joint).
T_FOOTPRINT_BASE = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0],
                             [0.0, 0.0, 1.0, 0.10], [0.0, 0.0, 0.0, 1.0]])
T_FOOTPRINT_CAM = T_FOOTPRINT_BASE @ rig.T_BASE_CAM  # base_footprint -> camera optical frame

ROBOT_TOPICS = {
    'image': '/camera/color/image_raw/compressed',
    'camera_info': '/camera/color/camera_info',
    'odom': '/odom',
    'amcl_pose': '/amcl_pose',
}


@dataclass
class RobotProfile:
    """Rates and AMCL settings of the robot-like bag (Nav2's defaults where it has one)."""

    image_rate: float = 15.0  # Hz
    odom_rate: float = 50.0  # Hz
    laser_rate: float = 5.0  # Hz, AMCL publishes map -> odom once per scan
    transform_tolerance: float = 1.0  # s, AMCL's future-dating of map -> odom
    first_scan: float = 0.05  # s after the first image
    latency: float = 0.01  # s between a scan and the recording of its map -> odom
    update_min_d: float = 0.25  # m, AMCL filter update threshold
    update_min_a: float = 0.2  # rad


def robot_config(cfg: SceneConfig, profile: RobotProfile | None = None) -> SceneConfig:
    """``cfg`` with Nav2's frame names and the profile's image rate."""
    from dataclasses import replace

    profile = profile or RobotProfile()
    return replace(cfg, rate=profile.image_rate, base_frame='base_footprint',
                   camera_frame='camera_color_optical_frame')


class _Motion:
    """The base_footprint's continuous motion: the camera driving its laps between frames."""

    def __init__(self, cfg: SceneConfig, frames):
        self.cfg, self.frames = cfg, frames
        self.counts = {'train': cfg.n_train, 'test': cfg.n_test}
        self._foot = invert(T_FOOTPRINT_CAM)

    def t_map_foot(self, t: float) -> np.ndarray:
        x = (t - self.frames[0][4]) * self.cfg.rate  # fractional frame index in the bag
        j = min(max(int(math.floor(x + 0.5)), 0), len(self.frames) - 1)
        split, i = self.frames[j][:2]
        p, q = rig.trajectory_at(split, self.counts[split], self.cfg.seed, i + (x - j))
        return compose(pose_to_matrix(p, q), self._foot)


def _ticks(start: float, end: float, rate: float, past_end: bool = False) -> list[float]:
    """``start, start + 1/rate, ...`` up to ``end`` (``past_end``: up to one tick after it)."""
    n = int((math.ceil if past_end else math.floor)((end - start) * rate - 1e-9 * (
        1 if past_end else -1)))
    return [start + k / rate for k in range(n + 1)]


def _timeline(cfg: SceneConfig, frames, profile: RobotProfile):
    """``(record time, kind, stamp)`` of every message, in record order."""
    t0, t1 = frames[0][4], frames[-1][4]
    events = [(t, 'odom', t) for t in _ticks(t0, t1, profile.odom_rate, past_end=True)]
    events += [(t + profile.latency, 'scan', t)
               for t in _ticks(t0 + profile.first_scan, t1, profile.laser_rate)]
    events += [(f[4], 'image', k) for k, f in enumerate(frames)]
    # TF before an image of the same time: a node looking the image up finds it buffered.
    order = {'odom': 0, 'scan': 1, 'image': 2}
    return sorted(events, key=lambda e: (e[0], order[e[1]]))


def write_robot_frames(bag, cfg: SceneConfig, which: str, scene, K, profile: RobotProfile,
                       progress) -> None:
    """Write the robot-like recording of trajectory ``which`` into an open RosbagWriter."""
    frames = list(rig.iter_frames(cfg, which))
    motion = _Motion(cfg, frames)
    odom, base, cam = cfg.odom_frame, cfg.base_frame, cfg.camera_frame
    bag.tf(frames[0][4], [(base, 'base_link', T_FOOTPRINT_BASE),
                          ('base_link', cfg.camera_link_frame, rig.T_BASE_CAMLINK),
                          (cfg.camera_link_frame, cam, rig.T_CAMLINK_OPTICAL)], static=True)
    last_update = None
    for rec, kind, arg in progress(_timeline(cfg, frames, profile)):
        if kind == 'odom':
            t_odom_foot = invert(t_map_odom(arg - cfg.start_time)) @ motion.t_map_foot(arg)
            bag.tf(arg, [(odom, base, t_odom_foot)])
            bag.pose(ROBOT_TOPICS['odom'], arg, *matrix_to_pose(t_odom_foot), frame_id=odom,
                     msgtype='nav_msgs/msg/Odometry', child_frame_id=base)
        elif kind == 'scan':
            # AMCL's estimate at the scan (perfect here), stamped transform_tolerance ahead.
            bag.tf(arg + profile.transform_tolerance,
                   [(cfg.map_frame, odom, t_map_odom(arg - cfg.start_time))], record=rec)
            pose = motion.t_map_foot(arg)
            if last_update is None or _moved(last_update, pose, profile):
                last_update = pose
                bag.pose(ROBOT_TOPICS['amcl_pose'], arg, *matrix_to_pose(pose),
                         frame_id=cfg.map_frame, msgtype='geometry_msgs/msg/'
                         'PoseWithCovarianceStamped', record=rec)
        else:
            _, _, p, q, stamp = frames[arg]
            img = render(scene, p, q, K, cfg.width, cfg.height)
            bag.compressed(ROBOT_TOPICS['image'], stamp, img, frame_id=cam)
            bag.camera_info(ROBOT_TOPICS['camera_info'], stamp, K, cfg.width, cfg.height,
                            frame_id=cam)
            bag.pose('/ground_truth/pose', stamp, p, q, frame_id=cfg.map_frame)
            bag.pose('/ground_truth/base_pose', stamp, *matrix_to_pose(motion.t_map_foot(stamp)),
                     frame_id=cfg.map_frame)


def _moved(before: np.ndarray, now: np.ndarray, profile: RobotProfile) -> bool:
    """AMCL's update rule: moved ``update_min_d`` or turned ``update_min_a`` since the last."""
    dist = float(np.linalg.norm(now[:2, 3] - before[:2, 3]))
    turn = float(rotation_error_deg(matrix_to_pose(now)[1], matrix_to_pose(before)[1]))
    return dist >= profile.update_min_d or math.radians(turn) >= profile.update_min_a
