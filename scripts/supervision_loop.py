"""The supervision loop without ROS: simulated robot, Nav2's AMCL, the Localizer, a Supervisor.

One process and simulated time, for the benchmark (``scripts/bench_supervision.py``) and the
tests that must show a broken supervisor fails (``test/test_supervision_loop.py``). It wires
the same pieces the node and the closed-loop test wire over DDS:

* the robot (:class:`posenet_ros.tools.synthetic.robot.SimRobot`) drives its lap; each step
  gives odometry ``odom -> base_link`` and a laser scan from the true pose;
* :class:`nav2_amcl.Nav2Amcl` (GPL bindings: this file lives in ``scripts/``, never in the
  package) updates on Nav2's motion thresholds; its ``map -> odom`` goes into a
  :class:`~posenet_ros.core.transforms.TfTree` future-dated by ``transform_tolerance``, as
  nav2_amcl publishes it, and what AMCL believes at a frame's stamp is looked up there;
* at ``verify_rate`` frames per second a camera frame is rendered through the mount, localized
  and verified (:class:`~posenet_ros.localizer.Localizer`), and the :class:`Supervisor` gets
  it; every other frame only advances its time. An :class:`Action` becomes AMCL's initial pose.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from nav2_amcl import NAV2_DEFAULTS, AmclParams, Nav2Amcl  # noqa: E402

from posenet_ros.core.errors import ExtrapolationError, TransformLookupError  # noqa: E402
from posenet_ros.core.geometry import matrix_to_pose  # noqa: E402
from posenet_ros.core.transforms import TfTree  # noqa: E402
from posenet_ros.tools.synthetic.robot import (  # noqa: E402
    SimRobot,
    occupancy_grid,
    planar_error,
    planar_matrix,
    planar_of,
)

__all__ = ['LoopConfig', 'SupervisionLoop', 'recovered_at', 'RECOVERED_M', 'RECOVERED_DEG']

RECOVERED_M, RECOVERED_DEG = 0.3, 5.0  # AMCL is "back" within these of the truth
_NS = 1_000_000_000


@dataclass
class LoopConfig:
    """Rates (Hz), the AMCL parameters, and where the robot starts."""

    rate: float = 10.0  # camera and laser
    verify_rate: float = 2.0  # the node's supervision_rate default
    amcl: AmclParams = NAV2_DEFAULTS
    start_theta: float = 0.0
    seed: int = 0


@dataclass
class LoopRecord:
    """What happened: per step (t s, truth, AMCL's belief, its error, supervisor state)."""

    t: list = field(default_factory=list)
    truth: list = field(default_factory=list)
    belief: list = field(default_factory=list)  # (x, y, yaw) or NaNs before AMCL has a pose
    error: list = field(default_factory=list)  # (m, deg) or NaNs
    state: list = field(default_factory=list)
    sends: list = field(default_factory=list)  # dicts: t, kind, attempt, error of the sent pose
    kidnaps: list = field(default_factory=list)  # dicts: t, distance m, turn deg
    verified: list = field(default_factory=list)  # dicts: t, error m, deg of verified frames
    verify_cpu_s: list = field(default_factory=list)  # CPU s of each verification
    coarse_cpu_s: list = field(default_factory=list)  # CPU s of the coarse pass before it
    frames_tried: int = 0


class SupervisionLoop:
    """The loop (see the module docstring); :meth:`run` it, read :attr:`record`.

    ``localizer``: a :class:`~posenet_ros.localizer.Localizer` with the scene's map;
    ``supervisor``: a :class:`~posenet_ros.supervision.Supervisor` (or anything with its
    ``observe``); ``other_scene``: what the camera sees in ``'other'`` mode.
    """

    def __init__(self, localizer, scene, supervisor, config: LoopConfig | None = None,
                 other_scene=None):
        self.cfg = cfg = config or LoopConfig()
        self.localizer, self.scene, self.supervisor = localizer, scene, supervisor
        self.other_scene = other_scene
        self.robot = SimRobot(scene, start_theta=cfg.start_theta, seed=cfg.seed)
        laser = self.robot.laser
        self.amcl = Nav2Amcl(occupancy_grid(scene), laser.angles, laser.range_max, cfg.amcl)
        self.tf = TfTree(cache_time=30.0)
        self.tf.set_transform('base_link', 'camera_optical', 0,
                              *matrix_to_pose(self.robot.camera_in_base), static=True)
        self.t_ns = 0
        self.camera = 'scene'  # 'scene' | 'other' | 'blank'
        self._next_verify_ns = 0
        self.record = LoopRecord()
        self._add_odom()

    # --- the world ------------------------------------------------------------------------------
    def _add_odom(self) -> None:
        odom = planar_matrix(*self.robot.odometry.pose)
        self.tf.set_transform('odom', 'base_link', self.t_ns, *matrix_to_pose(odom))

    def _lookup(self, target: str, source: str, t_ns: int):
        try:
            return self.tf.matrix(target, source, t_ns)
        except (ExtrapolationError, TransformLookupError):
            return None

    def kidnap(self, theta: float) -> None:
        """Carry the robot to lap angle ``theta``; its odometry does not notice."""
        before = self.robot.truth
        self.robot.kidnap(theta)
        m, deg = planar_error(before, self.robot.truth)
        self.record.kidnaps.append({'t': self.t_ns / _NS, 'distance_m': m, 'turn_deg': deg})

    def frame(self) -> np.ndarray:
        """What the camera sees now: the scene, another scene, or a blank grey frame."""
        if self.camera == 'blank':
            return np.full((self.robot.height, self.robot.width, 3), 128, np.uint8)
        return self.robot.frame(self.other_scene if self.camera == 'other' else None)

    # --- one step -------------------------------------------------------------------------------
    def step(self) -> None:
        """``1 / rate`` seconds: drive, scan, (maybe) verify a frame, supervise."""
        dt_ns = int(round(_NS / self.cfg.rate))
        self.robot.step(dt_ns / _NS)
        self.t_ns += dt_ns
        self._add_odom()
        odom = self.robot.odometry.pose
        self.amcl.scan(self.robot.scan(), odom)
        if self.amcl.t_map_odom is not None:  # republished on every scan, future-dated
            tol_ns = int(self.amcl.params.transform_tolerance * _NS)
            m = np.eye(4)
            m[:2, :2], m[:2, 3] = self.amcl.t_map_odom[:2, :2], self.amcl.t_map_odom[:2, 2]
            self.tf.set_transform('map', 'odom', self.t_ns + tol_ns, *matrix_to_pose(m))
        verified = None
        if self.t_ns >= self._next_verify_ns:
            self._next_verify_ns = self.t_ns + int(round(_NS / self.cfg.verify_rate))
            verified = self._verify()
        action = self.supervisor.observe(self.t_ns, verified,
                                         self._lookup('map', 'base_link', self.t_ns),
                                         self._lookup('odom', 'base_link', self.t_ns))
        if action is not None:
            self._send(action)
        self._log()

    def _verify(self):
        """The verified base pose of the frame at the current stamp, or None."""
        rgb = self.frame()
        t0 = time.process_time()
        result = self.localizer.localize(rgb, self.t_ns,
                                         camera_in_base=self.robot.camera_in_base)
        t1 = time.process_time()  # the coarse pass runs on every frame in the node anyway
        result = self.localizer.verify(result, rgb, self.robot.K)
        self.record.verify_cpu_s.append(time.process_time() - t1)
        self.record.coarse_cpu_s.append(t1 - t0)
        self.record.frames_tried += 1
        if not result.verified:
            return None
        m, deg = planar_error(planar_of(result.refined_base.matrix), self.robot.truth)
        self.record.verified.append({'t': self.t_ns / _NS, 'error_m': m, 'error_deg': deg,
                                     'camera': self.camera})
        return result.refined_base

    def _send(self, action) -> None:
        """Publish the action's pose as AMCL's initial pose (x, y, yaw and their covariance)."""
        pose = planar_of(action.pose.matrix)
        cov6 = np.asarray(action.pose.covariance, float).reshape(6, 6)
        cov = cov6[np.ix_([0, 1, 5], [0, 1, 5])]
        then = self._lookup('odom', 'base_link', action.stamp_ns)
        self.amcl.initial_pose(pose, cov, None if then is None else planar_of(then),
                               self.robot.odometry.pose)
        # The truth at the action's stamp is the truth now, moved back by the odometry.
        m, deg = planar_error(pose, self.robot.truth) if action.stamp_ns == self.t_ns else \
            (math.nan, math.nan)
        self.record.sends.append({'t': self.t_ns / _NS, 'kind': action.kind,
                                  'attempt': action.attempt, 'error_m': m, 'error_deg': deg})

    def _log(self) -> None:
        r = self.record
        belief = self.amcl.base_in_map(self.robot.odometry.pose)
        r.t.append(self.t_ns / _NS)
        r.truth.append(self.robot.truth.copy())
        if belief is None:
            r.belief.append(np.full(3, np.nan))
            r.error.append((math.nan, math.nan))
        else:
            r.belief.append(belief)
            r.error.append(planar_error(belief, self.robot.truth))
        r.state.append(getattr(self.supervisor, 'state', ''))

    def run(self, seconds: float, events=()) -> LoopRecord:
        """Step for ``seconds``; ``events``: ``(t, callable(loop))`` run at sim time ``t`` s."""
        pending = sorted(events, key=lambda e: e[0])
        end_ns = self.t_ns + int(seconds * _NS)
        while self.t_ns < end_ns:
            while pending and pending[0][0] * _NS <= self.t_ns:
                pending.pop(0)[1](self)
            self.step()
        return self.record


def recovered_at(record: LoopRecord, t_from: float, t_to: float, hold: float = 1.0):
    """First time in ``[t_from, t_to)`` from which AMCL stays back for ``hold`` s (None: never).

    "Back": within :data:`RECOVERED_M` / :data:`RECOVERED_DEG` of the truth.
    """
    t = np.asarray(record.t)
    err = np.asarray(record.error, float)
    ok = (err[:, 0] <= RECOVERED_M) & (err[:, 1] <= RECOVERED_DEG)  # NaN compares False
    idx = np.nonzero((t >= t_from) & (t < t_to))[0]
    for k, i in enumerate(idx):
        if not ok[i]:
            continue
        window = idx[k:][t[idx[k:]] < t[i] + hold]
        if ok[window].all() and t[window[-1]] >= min(t[i] + hold - 0.15, t[idx[-1]]):
            return float(t[i])
    return None
