"""Supervision over DDS: the node watches a localizer through TF and puts it back when wrong.

The node runs in its own process with ``recovery: auto`` and ``continuous: false`` (so every
frame it verifies is one supervision asked for). This test process plays the robot and a tiny
localizer: it publishes frames of the synthetic courtyard's held-out test laps, the odometry
``odom -> base_link`` (the true base pose: a perfect odometry whose origin is the map's) and,
once it has a pose, the localizer's ``map -> odom`` on ``/tf``; the localizer takes every
``/initialpose`` it receives, as AMCL re-seeds its filter from it. One node, four phases: no
localizer pose yet (one ``initialize``), a right localizer (nothing sent), a wrong one (exactly
one ``reinitialize``, then agreement), suspended (nothing sent).
"""

from __future__ import annotations

import array
import json
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs is not built into this environment')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped, TransformStamped  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import RosSession  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import SetBool  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402

from posenet_ros.core import geometry, ros_conversions  # noqa: E402
from posenet_ros.core.image_conversion import rgb_to_image_fields  # noqa: E402
from posenet_ros.supervision import pose_difference  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

NODE = '/sup/posenet_relocalizer'
CAMERA_IN_BASE = [0.1, 0.0, 0.2, -0.5, 0.5, -0.5, 0.5]  # optical frame on a REP 103 base
FLOOR_M, FLOOR_RAD = 0.05, 0.035
N_TEST = 12


@pytest.fixture(scope='module')
def robot(scene_model):
    """Test frames of the session model's courtyard and the base poses they were taken from."""
    from posenet_ros.tools.synthetic import SceneConfig, make_scene, render, trajectory

    cfg = SceneConfig(seed=scene_model.cfg.seed, n_train=80, n_test=N_TEST)
    courtyard = make_scene(cfg.seed)
    t_base_cam = geometry.pose_to_matrix(
        CAMERA_IN_BASE[:3], geometry.xyzw_to_wxyz(np.asarray(CAMERA_IN_BASE[3:])))
    frames, bases = [], []
    for p, q in trajectory('test', N_TEST, cfg.seed):
        frames.append(render(courtyard, p, q, cfg.K(), cfg.width, cfg.height))
        bases.append(geometry.base_in_map(geometry.pose_to_matrix(p, q), t_base_cam))
    return {'model': scene_model.model, 'frames': frames, 'bases': bases}


class Robot:
    """Camera, odometry and a localizer that takes every initial pose (this process)."""

    def __init__(self, session, data):
        n = session.node
        self.session, self.data = session, data
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.image = n.create_publisher(Image, '/sup/camera/image_raw', qos)
        self.tf = n.create_publisher(TFMessage, '/tf', qos)
        self.map_odom = None  # the localizer's belief; None: no pose yet
        self.initial, self.states, self.truth, self.diags = [], [], {}, {}
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.subs = [
            n.create_subscription(PoseWithCovarianceStamped, '/sup/initialpose',
                                  self._on_initial, qos),
            n.create_subscription(String, f'{NODE}/supervision',
                                  lambda m: self.states.append(json.loads(m.data)), latched),
        ]
        self.subs.append(n.create_subscription(DiagnosticArray, '/diagnostics',
                                               self._on_diag, qos))
        self.markers = []  # what rviz shows (latched, like the state)
        self.subs.append(n.create_subscription(Marker, f'{NODE}/supervision_marker',
                                               self.markers.append, latched))
        self.supervise = n.create_client(SetBool, f'{NODE}/supervise')
        self.i = 0

    def _on_initial(self, msg):
        self.initial.append(msg)
        t_map_base = ros_conversions.msg_to_matrix(msg.pose.pose)
        t_odom_base = self.truth[ros_conversions.stamp_to_ns(msg.header.stamp)]
        self.map_odom = geometry.compose(t_map_base, geometry.invert(t_odom_base))

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name.startswith(NODE):
                self.diags[st.name.rsplit(': ', 1)[-1]] = (
                    st.level[0], {kv.key: kv.value for kv in st.values})

    def _transform(self, stamp_ns, parent, child, matrix):
        tf = TransformStamped()
        ros_conversions.fill_stamp(tf.header.stamp, stamp_ns)
        tf.header.frame_id, tf.child_frame_id = parent, child
        return ros_conversions.fill_pose(tf, *geometry.matrix_to_pose(matrix))

    def step(self):
        """Publish TF at a fresh stamp, then the frame with that stamp."""
        k = self.i % N_TEST
        self.i += 1
        stamp_ns = time.time_ns() // 1000 * 1000 + self.i
        base = self.data['bases'][k]
        self.truth[stamp_ns] = base
        tfs = [self._transform(stamp_ns, 'odom', 'base_link', base)]
        if self.map_odom is not None:
            tfs.append(self._transform(stamp_ns, 'map', 'odom', self.map_odom))
        self.tf.publish(TFMessage(transforms=tfs))
        f = rgb_to_image_fields(self.data['frames'][k], 'rgb8')
        msg = Image(encoding=f['encoding'], height=f['height'], width=f['width'],
                    step=f['step'], is_bigendian=f['is_bigendian'])
        msg.data = array.array('B', f['data'])
        ros_conversions.fill_stamp(msg.header.stamp, stamp_ns)
        msg.header.frame_id = 'camera_optical'
        self.image.publish(msg)

    def drive(self, until, timeout, period=0.2):
        """Send frames at 1/period Hz until ``until()`` holds (True) or ``timeout`` (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            if self.session.spin_until(until, period):
                return True
        return False

    def state(self):
        return self.states[-1] if self.states else {}


def _check_sent(msg, truth):
    """An initial pose in map, at a truth stamp, near the truth, covariance floored."""
    assert msg.header.frame_id == 'map'
    want = truth[ros_conversions.stamp_to_ns(msg.header.stamp)]
    err_m, err_deg = pose_difference(ros_conversions.msg_to_matrix(msg.pose.pose), want)
    assert err_m < 0.1 and err_deg < 2.0, (err_m, err_deg)
    cov = np.asarray(msg.pose.covariance).reshape(6, 6)
    assert np.linalg.eigvalsh(cov[:3, :3]).min() >= FLOOR_M ** 2 * 0.999
    assert np.linalg.eigvalsh(cov[3:, 3:]).min() >= FLOOR_RAD ** 2 * 0.999


def test_the_node_initializes_watches_and_puts_back_a_localizer(robot):
    params = {'model_path': str(robot['model']), 'device': 'cpu', 'num_threads': 1,
              'warmup_iterations': 1, 'max_image_age': 30.0, 'diagnostics_period': 0.5,
              'log_throttle': 0.0, 'image_topic': '/sup/camera/image_raw',
              'camera_info_topic': '/sup/camera/camera_info',
              'initial_pose_topic': '/sup/initialpose', 'camera_in_base': CAMERA_IN_BASE,
              'use_tf_extrinsic': False, 'tf_mode': 'none', 'continuous': False,
              'recovery': 'auto', 'supervision_rate': 5.0, 'min_reinit_interval': 1.0,
              'covariance_floor_position': FLOOR_M, 'covariance_floor_orientation': FLOOR_RAD}
    with RosSession('posenet_supervise_client') as session:
        proc = session.start_node(params, 'sup', extra_args=('-r', '__ns:=/sup'))
        assert proc.wait_for_output('ready: model', 120), proc.output()
        bot = Robot(session, robot)
        assert session.spin_until(lambda: bot.image.get_subscription_count() > 0
                                  and bot.state().get('state') == 'uninitialized', 30.0), \
            proc.tail(20)
        # 1. no map -> odom yet: the first consistent verified poses initialize the localizer
        assert bot.drive(lambda: bot.state().get('state') == 'localized', 60.0), \
            (bot.state(), proc.tail(20))
        assert len(bot.initial) == 1 and bot.state()['inits_sent'] == 1
        _check_sent(bot.initial[0], bot.truth)
        # 2. a right localizer: watched, never moved
        compared = bot.state()['compared']
        bot.drive(lambda: False, 3.0)
        st = bot.state()
        assert len(bot.initial) == 1 and st['state'] == 'localized', st
        assert st['reinits_sent'] == 0
        # 3. the localizer is 2 m and 30 deg off (a kidnap it missed): exactly one initial pose
        bot.map_odom = geometry.compose(
            geometry.pose_to_matrix([2.0, -1.0, 0.0], [0.966, 0.0, 0.0, 0.259]), bot.map_odom)
        assert bot.drive(lambda: bot.state().get('reinits_succeeded') == 1, 60.0), \
            (bot.state(), proc.tail(20))
        bot.drive(lambda: False, 2.0)
        st = bot.state()
        assert len(bot.initial) == 2 and st['state'] == 'localized' and st['reinits_sent'] == 1
        assert st['last_disagreement_m'] > 1.5 and st['compared'] > compared
        _check_sent(bot.initial[1], bot.truth)
        assert session.spin_until(lambda: 'supervision' in bot.diags, 5.0)
        session.spin_until(lambda: False, 0.6)  # a diagnostics period after the last frame
        level, values = bot.diags['supervision']
        assert level == 0 and values['state'] == 'localized' and values['reinits_sent'] == '1'
        # rviz: the state as text above the base frame, green when localized
        marker = bot.markers[-1]
        assert marker.text.startswith('posenet: localized') and marker.color.g > marker.color.r
        assert marker.header.frame_id == 'base_link' and marker.type == Marker.TEXT_VIEW_FACING
        _, reloc = bot.diags['relocalization']
        print(f"supervision: {reloc['verify_attempts']} verifications, refine ms p50 "
              f"{reloc['refine_ms_p50']} (p95 {reloc['refine_ms_p95']}), inference ms p50 "
              f"{reloc['inference_ms_p50']}, {len(bot.truth)} frames sent")
        # 4. suspended: wrong again, nothing is sent
        assert session.call(bot.supervise, SetBool.Request(data=False)).success
        bot.map_odom = geometry.compose(
            geometry.pose_to_matrix([2.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]), bot.map_odom)
        bot.drive(lambda: False, 2.0)
        assert len(bot.initial) == 2 and bot.state()['state'] == 'suspended'
        assert proc.alive(), proc.output()


def test_recovery_with_parameters_it_cannot_work_with_stops_the_node_with_a_reason(robot):
    from ros_helpers import failed_starts

    base = {'model_path': str(robot['model']), 'device': 'cpu', 'recovery': 'auto'}
    cases = {'refine_off': {**base, 'refine': 'off'},
             'map_to_odom': {**base, 'tf_mode': 'map_to_odom'}}
    with RosSession('posenet_supervise_bad') as session:
        out = failed_starts(cases, session.env())
    assert 'needs verified poses' in out['refine_off'] and 'refine' in out['refine_off']
    assert 'tf_mode map_to_odom' in out['map_to_odom']
