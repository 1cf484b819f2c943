"""The closed loop against a real AMCL: the node with ``recovery: auto`` keeps Nav2's AMCL right.

Three processes over DDS in simulated time (``/clock``), as on a robot:

* the simulated robot (``test/closed_loop_nodes.py robot``): drives a lap of the session
  model's courtyard (the camera at the height and pitch of its first training lap), publishes
  noisy wheel odometry on TF, a ray-cast laser scan, the camera through its mount on
  ``/tf_static``, the occupancy grid on ``/map``, and the truth for this test only;
* Nav2's AMCL particle filter with Nav2's defaults, recovery alphas 0 included
  (``test/closed_loop_nodes.py amcl``, the ``amcl`` bindings: GPL, test-only);
* the relocalization node with ``recovery: auto``, started from config/relocalize.yaml.

One scripted run, checked against the truth in four scenarios: (a) AMCL starts with no pose and
is initialized through the node; (c) 40 s of driving: no initial pose after the first;
(d) frames of another courtyard, then blank frames, while AMCL is right: nothing sent;
(b) the robot is carried several metres and turned, the odometry unaware: AMCL is back within
0.3 m / 5 deg of the truth. The bounds are generous (the figures are the benchmark's,
``scripts/bench_supervision.py``): what is asserted is what the node did, not how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs is not built into this environment')
pytest.importorskip('amcl', reason='the amcl bindings (requirements/test.txt) are not installed')

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import ROOT, RosSession  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from posenet_ros.core.ros_conversions import msg_to_matrix, stamp_to_ns  # noqa: E402
from posenet_ros.tools.synthetic.robot import planar_error, planar_of  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

START = 1000.0  # s, simulated time of the robot's first step
OTHER, BLANK, SCENE, KIDNAP, END = 40.0, 45.0, 50.0, 52.0, 66.0  # s after START
SCRIPT = [{'t': OTHER, 'camera': 'other'}, {'t': BLANK, 'camera': 'blank'},
          {'t': SCENE, 'camera': 'scene'}, {'t': KIDNAP, 'kidnap': 2.2}, {'t': END, 'end': True}]
BACK_M, BACK_DEG = 0.3, 5.0


def _t(stamp) -> float:
    """Seconds since the start of the script."""
    return stamp_to_ns(stamp) * 1e-9 - START


class _Recorder:
    """What the test process hears: truth, AMCL's poses, initial poses and states."""

    def __init__(self, node):
        rel = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.truth, self.amcl, self.initial, self.states = {}, [], [], []
        self.subs = [
            node.create_subscription(PoseStamped, '/sim/truth', self._on_truth, rel),
            node.create_subscription(PoseWithCovarianceStamped, '/amcl_pose', lambda m: self.amcl
                                     .append((_t(m.header.stamp), planar_of(msg_to_matrix(
                                         m.pose)))), rel),
            node.create_subscription(PoseWithCovarianceStamped, '/initialpose', lambda m: self
                                     .initial.append((_t(m.header.stamp), planar_of(
                                         msg_to_matrix(m.pose)))), rel),
            node.create_subscription(String, '/posenet_relocalizer/supervision',
                                     lambda m: self.states.append(json.loads(m.data)), latched),
        ]

    def _on_truth(self, msg):
        self.truth[round(_t(msg.header.stamp), 3)] = planar_of(msg_to_matrix(msg.pose))

    def error(self, t: float, pose) -> tuple[float, float]:
        """(m, deg) of a base pose stamped ``t`` against the truth at that stamp."""
        return planar_error(pose, self.truth[round(t, 3)])


def _start(session, which: str, *args: str) -> subprocess.Popen:
    log = open(session.tmp / f'{which}.log', 'w')  # noqa: SIM115 - the session's tmp dir
    cmd = [sys.executable, str(ROOT / 'test' / 'closed_loop_nodes.py'), which, *args]
    return subprocess.Popen(cmd, env=session.env(), stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(ROOT))


@pytest.fixture(scope='module')
def loop(scene_model):
    """Run the script once; every scenario test reads what happened."""
    params = {'model_path': str(scene_model.model), 'device': 'cpu', 'num_threads': 1,
              'warmup_iterations': 1, 'use_sim_time': True, 'max_image_age': 0.0,
              'tf_mode': 'none', 'recovery': 'auto', 'localizer_pose_topic': '/amcl_pose'}
    with RosSession('posenet_closed_loop') as session:
        rec = _Recorder(session.node)
        amcl = _start(session, 'amcl')
        node = session.start_node(params, 'posenet')
        robot = _start(session, 'robot', '--scene-seed', str(scene_model.cfg.seed),
                       '--start-time', str(START), '--script', json.dumps(SCRIPT))
        try:
            done = session.spin_until(lambda: robot.poll() is not None, 300.0)
            session.spin_until(lambda: False, 1.0)  # the last messages
        finally:
            for p in (robot, amcl):
                if p.poll() is None:
                    p.send_signal(2)
            for p in (robot, amcl):
                p.wait(10)
        logs = {name: (session.tmp / f'{name}.log').read_text() for name in ('robot', 'amcl')}
        logs['node'] = node.output()
        assert done and robot.returncode == 0, logs
        assert node.alive(), logs['node']
    return SimpleNamespace(rec=rec, logs=logs)


def _sends(loop, t0: float, t1: float) -> list:
    return [(t, p) for t, p in loop.rec.initial if t0 <= t < t1]


def _amcl_errors(loop, t0: float, t1: float) -> np.ndarray:
    rec = loop.rec
    return np.array([rec.error(t, p) for t, p in rec.amcl if t0 <= t < t1]).reshape(-1, 2)


def test_a_amcl_without_a_pose_is_initialized_through_the_node(loop):
    rec = loop.rec
    assert rec.initial, ('no initial pose was sent', loop.logs['node'][-3000:])
    t0, pose = rec.initial[0]
    assert t0 < 20.0, rec.initial
    err = rec.error(t0, pose)
    assert err[0] < BACK_M and err[1] < BACK_DEG, err
    after = _amcl_errors(loop, t0 + 2.0, OTHER)
    assert len(after) >= 10, (len(after), loop.logs['amcl'][-2000:])
    assert after[:, 0].max() < BACK_M and after[:, 1].max() < BACK_DEG, after.max(axis=0)
    assert 'localized' in {s['state'] for s in rec.states}, rec.states[-3:]


def test_c_a_long_drive_sends_nothing_after_the_first_pose(loop):
    rec = loop.rec
    assert len(_sends(loop, -1.0, OTHER)) == 1, rec.initial
    err = _amcl_errors(loop, 10.0, OTHER)  # and AMCL stayed right all along
    assert len(err) >= 20 and err[:, 0].max() < BACK_M and err[:, 1].max() < BACK_DEG, err


def test_d_other_scenes_and_blank_frames_send_nothing(loop):
    assert _sends(loop, OTHER, KIDNAP) == [], loop.rec.initial
    err = _amcl_errors(loop, OTHER, KIDNAP)
    assert len(err) >= 5 and err[:, 0].max() < BACK_M, err


def test_b_a_kidnapped_amcl_is_put_back(loop):
    rec = loop.rec
    sends = _sends(loop, KIDNAP, END)
    assert sends, ('nothing sent after the kidnap', loop.logs['node'][-3000:])
    t1, pose = sends[0]
    err = rec.error(t1, pose)
    assert err[0] < BACK_M and err[1] < BACK_DEG, err
    lost = _amcl_errors(loop, KIDNAP + 0.05, t1)  # stamps after the carry
    assert len(lost) == 0 or lost[:, 0].max() > 1.0, lost  # AMCL alone did not recover
    back = _amcl_errors(loop, END - 4.0, END)
    assert len(back) >= 3, rec.amcl[-5:]
    assert back[:, 0].max() < BACK_M and back[:, 1].max() < BACK_DEG, back
