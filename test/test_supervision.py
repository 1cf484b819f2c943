"""The supervisor's rule on scripted drives: no ROS, no model, stamps in nanoseconds.

A robot drives a circle at 0.5 m/s; the odometry is exact; the truth is ``T_map_odom_true``
times the odometry. The supervised localizer believes ``T_map_odom_loc`` times the odometry:
equal to the truth while it is right, off after a kidnap (the truth jumps, the odometry and the
localizer do not). Verified frames are the truth with a centimetre covariance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from posenet_ros.core import geometry
from posenet_ros.localizer import Pose
from posenet_ros.supervision import (
    Supervisor,
    SupervisorConfig,
    floor_covariance,
    pose_difference,
)

HZ = 10
S = 1_000_000_000
VER_COV = np.diag([0.01 ** 2] * 3 + [math.radians(0.2) ** 2] * 3)


def planar(x, y, yaw):
    """4x4 of a planar pose."""
    m = np.eye(4)
    m[:3, :3] = geometry.quat_to_matrix(np.array([math.cos(yaw / 2), 0, 0, math.sin(yaw / 2)]))
    m[:2, 3] = x, y
    return m


def odom_at(t):
    """Odometry ``T_odom_base`` of a 0.5 m/s drive on a 4 m circle, at ``t`` seconds."""
    a = 0.125 * t
    return planar(4 * math.sin(a), 4 - 4 * math.cos(a), a)


class Drive:
    """A scripted run: frames at 10 Hz, the truth's and the localizer's ``map -> odom``."""

    def __init__(self, sup, map_odom_true=None, map_odom_loc='same'):
        self.sup = sup
        self.true = planar(1.0, 2.0, 0.3) if map_odom_true is None else map_odom_true
        self.loc = self.true if isinstance(map_odom_loc, str) else map_odom_loc
        self.t = 0.0
        self.actions = []

    def step(self, verified=True, wrong=None, stopped=False):
        """One frame; ``wrong``: a verified pose this far off (a false verification)."""
        t = 0.0 if stopped else self.t
        odom = odom_at(t)
        truth = geometry.compose(self.true, odom)
        ver = None
        if verified:
            base = truth if wrong is None else geometry.compose(truth, wrong)
            ver = Pose.from_matrix(base, VER_COV)
        loc = None if self.loc is None else geometry.compose(self.loc, odom)
        action = self.sup.observe(int(self.t * S), ver, loc, odom)
        if action is not None:
            self.actions.append(action)
            # A localizer that takes the pose: map -> odom from the sent base pose.
            self.loc = geometry.compose(action.pose.matrix, geometry.invert(odom))
        self.t += 1.0 / HZ
        return action

    def run(self, seconds, **kw):
        for _ in range(int(round(seconds * HZ))):
            self.step(**kw)


def auto(**kw):
    return Supervisor(SupervisorConfig(recovery='auto', **kw))


def test_a_right_localizer_is_never_moved_and_one_wrong_frame_never_triggers():
    sup = auto()
    d = Drive(sup)
    d.run(2.0)
    assert sup.state == 'localized'
    # isolated false verifications, each 3 m / 90 deg off, between right frames
    for _ in range(20):
        d.step(wrong=planar(3.0, 0.0, math.pi / 2))
        d.run(0.3)
    # two wrong frames in a row that do not agree with each other through odometry
    d.step(wrong=planar(3.0, 0.0, 1.0))
    d.step(wrong=planar(-2.0, 1.0, -1.0))
    d.run(1.0)
    st = sup.status(int(d.t * S))
    assert d.actions == [] and st['reinits_sent'] == 0 and st['detections'] == 0
    assert st['state'] == 'localized' and st['disagreed'] == 22
    assert st['last_disagreement_m'] > 1.0 and st['time_since_agreement_s'] < 0.2


def test_three_frames_in_one_wrong_direction_without_odometry_support_do_not_trigger():
    # the same wrong pose in the map (a look-alike place) on frames 0.5 s apart while the
    # robot drives: the odometry says it moved 0.25 m between them, so they disagree
    sup = auto()
    d = Drive(sup)
    d.run(1.0)
    fixed = planar(8.0, 8.0, 0.0)
    for _ in range(5):
        odom = odom_at(d.t)
        sup.observe(int(d.t * S), Pose.from_matrix(fixed, VER_COV),
                    geometry.compose(d.loc, odom), odom)
        d.t += 0.5
    assert sup.status()['reinits_sent'] == 0 and sup.state == 'suspect'


def test_a_kidnap_is_recovered_with_exactly_one_initial_pose():
    sup = auto()
    d = Drive(sup)
    d.run(2.0)
    d.true = geometry.compose(planar(3.0, -2.0, 2.5), d.true)  # carried; odometry unaware
    d.run(0.25)
    assert d.actions == [] and sup.state == 'suspect'  # two frames over 0.1 s: not yet
    d.run(5.0)
    assert len(d.actions) == 1
    act = d.actions[0]
    assert act.kind == 'reinitialize' and act.attempt == 1
    assert 0.2 <= act.stamp_ns / S - 2.0 <= 0.5  # min_frames 3 over min_span 0.3 s
    err_m, err_deg = pose_difference(act.pose.matrix,
                                     geometry.compose(d.true, odom_at(act.stamp_ns / S)))
    assert err_m < 1e-6 and err_deg < 1e-4
    st = sup.status(int(d.t * S))
    assert st['state'] == 'localized' and st['reinits_succeeded'] == 1
    assert st['reinits_sent'] == 1 and st['detections'] == 1 and st['reinits_failed'] == 0


def test_report_mode_detects_but_never_acts():
    sup = Supervisor(SupervisorConfig(recovery='report'))
    d = Drive(sup, map_odom_loc=None)
    d.run(1.0)
    assert d.actions == [] and sup.state == 'uninitialized'  # no auto-initialization either
    d.loc = geometry.compose(planar(0.0, 2.0, 0.0), d.true)
    d.run(3.0)
    st = sup.status()
    assert d.actions == [] and st['state'] == 'lost' and st['detections'] == 1
    assert st['last_disagreement_m'] == pytest.approx(2.0, abs=0.01)
    d.loc = d.true  # fixed by someone else
    d.run(0.2)
    assert sup.state == 'localized'


def test_auto_initialization_sends_the_first_consistent_pose_once():
    sup = auto()
    d = Drive(sup, map_odom_loc=None)
    d.run(0.1, verified=False)
    assert sup.state == 'uninitialized' and d.actions == []
    d.run(3.0)
    assert [a.kind for a in d.actions] == ['initialize']
    assert d.actions[0].stamp_ns / S >= 0.3
    st = sup.status()
    assert st['state'] == 'localized' and st['inits_sent'] == 1 and st['inits_succeeded'] == 1
    off = Supervisor(SupervisorConfig(recovery='auto', auto_initialize=False))
    d = Drive(off, map_odom_loc=None)
    d.run(2.0)
    assert d.actions == [] and off.state == 'uninitialized'


def test_a_localizer_that_ignores_the_pose_gets_retries_with_back_off_then_failed():
    sup = auto(reinit_timeout=1.0, retry_backoff=1.0, max_attempts=3, min_reinit_interval=0.0)
    d = Drive(sup, map_odom_loc=planar(5.0, 0.0, 0.0))
    sent = []
    for _ in range(30 * HZ):
        loc = d.loc
        if d.step() is not None:
            sent.append(d.t)
            d.loc = loc  # ignores it
    assert len(sent) == 3
    gaps = np.diff(sent)
    # timeout 1 s + back-off 1 s, then 1 s + 2 s (fresh evidence gathers during the back-off)
    assert gaps[0] == pytest.approx(2.0, abs=0.15) and gaps[1] == pytest.approx(3.0, abs=0.15)
    st = sup.status()
    assert st['state'] == 'failed' and st['reinits_failed'] == 1 and st['reinits_sent'] == 3
    sup.resume()
    d.run(0.5)
    assert len(d.actions) == 4 and sup.state == 'localized'  # this time it takes the pose


def test_guards_speed_interval_and_suspend():
    # speed: nothing is sent while the robot drives faster than max_speed; stopped, it is
    sup = auto(max_speed=0.2)
    d = Drive(sup, map_odom_loc=planar(5.0, 0.0, 0.0))
    d.run(3.0)
    st = sup.status()
    assert d.actions == [] and st['state'] == 'lost' and st['held_by_guard'] > 0
    assert 'max_speed' in st['reason'] and st['speed_mps'] == pytest.approx(0.5, abs=0.01)
    d.run(1.0, stopped=True)
    assert len(d.actions) == 1 and sup.state == 'localized'
    # minimum interval: a second kidnap right after the first recovery waits for it
    sup = auto(min_reinit_interval=4.0)
    d = Drive(sup, map_odom_loc=planar(5.0, 0.0, 0.0))
    d.run(1.0)
    assert len(d.actions) == 1
    d.true = geometry.compose(planar(2.0, 0.0, 1.0), d.true)
    d.run(1.0)
    assert len(d.actions) == 1 and 'min_reinit_interval' in sup.reason
    d.run(3.0)
    assert len(d.actions) == 2 and d.actions[1].stamp_ns - d.actions[0].stamp_ns >= 4 * S
    # suspended: no judgement, no action; resumed: from scratch
    sup = auto()
    d = Drive(sup, map_odom_loc=planar(5.0, 0.0, 0.0))
    sup.suspend()
    d.run(2.0)
    assert d.actions == [] and sup.state == 'suspended' and sup.suspended
    sup.resume()
    d.run(1.0)
    assert len(d.actions) == 1


def test_thresholds_account_for_the_covariances():
    # 0.8 m off with a localizer covariance of 0.5 m per axis: within 3 sigma, so it agrees
    sup = auto()
    odom = odom_at(0.0)
    loc_cov = np.diag([0.25] * 3 + [0.01] * 3)
    for i in range(10):
        odom = odom_at(i / HZ)
        truth = geometry.compose(planar(1.0, 2.0, 0.3), odom)
        loc = Pose.from_matrix(geometry.compose(planar(0.8, 0.0, 0.0), truth), loc_cov)
        assert sup.observe(i * S // HZ, Pose.from_matrix(truth, VER_COV), loc, odom) is None
    assert sup.state == 'localized'
    # the same offset with a confident localizer is consistent disagreement
    sup = auto()
    for i in range(10):
        odom = odom_at(i / HZ)
        truth = geometry.compose(planar(1.0, 2.0, 0.3), odom)
        loc = geometry.compose(planar(0.8, 0.0, 0.0), truth)
        sup.observe(i * S // HZ, Pose.from_matrix(truth, VER_COV), loc, odom)
    assert sup.status()['reinits_sent'] == 1


def test_off_mode_does_nothing_and_bad_config_is_refused():
    sup = Supervisor()
    d = Drive(sup, map_odom_loc=planar(5.0, 0.0, 0.0))
    d.run(2.0)
    assert d.actions == [] and sup.state == 'off'
    with pytest.raises(ValueError, match='recovery'):
        SupervisorConfig(recovery='always')
    with pytest.raises(ValueError, match='never evidence'):
        SupervisorConfig(min_frames=1)


def test_the_sent_covariance_is_floored_and_stays_a_covariance():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a = rng.normal(size=(6, 6)) * rng.choice([1e-4, 1e-2, 1.0])
        cov = a @ a.T
        out = floor_covariance(cov, 0.05, math.radians(2.0))
        assert np.allclose(out, out.T)
        assert np.all(np.linalg.eigvalsh(out - cov) > -1e-12)  # only grows
        for sl, floor in ((slice(0, 3), 0.05), (slice(3, 6), math.radians(2.0))):
            assert np.linalg.eigvalsh(out[sl, sl]).min() >= floor ** 2 * (1 - 1e-9)
    big = np.diag([1.0] * 6)
    assert np.allclose(floor_covariance(big, 0.05, 0.03), big)
    assert np.allclose(np.diag(floor_covariance(None, 0.1, 0.2)), [0.01] * 3 + [0.04] * 3)
    sup = auto()
    d = Drive(sup, map_odom_loc=None)
    d.run(1.0)
    cov = d.actions[0].pose.covariance
    assert np.sqrt(cov[0, 0]) >= 0.05 - 1e-9 and np.sqrt(cov[5, 5]) >= math.radians(2) - 1e-9


def test_a_localizer_pose_missing_for_a_while_is_not_initialized_again():
    # map -> odom missing at some stamps (a TF gap) after the localizer had a pose: no
    # 'initialize' for a running localizer, and it is judged again when the pose is back
    sup = auto()
    d = Drive(sup)
    d.run(1.0)
    loc = d.loc
    d.loc = None
    d.run(3.0)
    assert d.actions == [] and sup.state == 'localized' and 'TF gap' in sup.reason
    d.loc = loc
    d.run(0.5)
    assert d.actions == [] and sup.state == 'localized'


def test_a_running_localizer_whose_first_stamp_is_ahead_is_never_initialized():
    # AMCL future-dates map -> odom: the frames of its first second precede its first stamp, so
    # the look-up at their stamps fails while its latest transform exists (publishing)
    sup = auto()
    for i in range(30):
        t = i / HZ
        truth = geometry.compose(planar(1.0, 2.0, 0.3), odom_at(t))
        assert sup.observe(int(t * S), Pose.from_matrix(truth, VER_COV), None, odom_at(t),
                           localizer_publishing=True) is None
    assert sup.status()['inits_sent'] == 0 and sup.state != 'initializing'
