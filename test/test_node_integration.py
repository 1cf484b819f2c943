"""The relocalization node in its own process, driven over real DDS from this test process.

Three node processes run side by side in one private domain (namespaces /raw, /comp, /nan):
raw input with camera TF; compressed input with frame overrides, a reliable subscription and
map_to_odom TF; and a model whose weights are NaN. Start-up failures run as short extra
processes. The test process publishes rendered frames (synthetic courtyard) and checks poses,
covariance poses, TF, diagnostics and services, and compares every pose with the offline
Relocalizer on the same frame.
"""

from __future__ import annotations

import array
import json
import math
import os
import time
import warnings

import cv2
import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs is not built into this environment')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped  # noqa: E402
from helpers_model import make_tiny_export  # noqa: E402
from rcl_interfaces.msg import Parameter as ParameterMsg  # noqa: E402
from rcl_interfaces.msg import ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_helpers import ROOT, RosSession, failed_starts  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from posenet_ros.core import geometry  # noqa: E402
from posenet_ros.core.image_conversion import rgb_to_compressed, rgb_to_image_fields  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

W, H = 80, 60
# tf2_ros is not installable here (no wheel), so the /comp node gets a stand-in module with the
# two calls the node makes: Buffer.lookup_transform(target, source, time, timeout) and a no-op
# TransformListener: this checks the node's use of tf2_ros's API. (The node's own built-in
# /tf listener, used where tf2_ros is absent, is tested against a bag's real TF tree in
# test_node_tf_tree.py.) It knows three fixed transforms (xyzw), keyed 'target|source'.
T_ODOM_CAM = [0.5, -1.0, 1.2, 0.1, -0.2, 0.3, 0.9273618495495703]
T_CAM_BASE = [0.0, 0.2, -0.1, 0.5, -0.5, 0.5, 0.5]


def _xyzw_list(m):
    p, q = geometry.matrix_to_pose(m)
    return [float(v) for v in p] + [float(v) for v in geometry.wxyz_to_xyzw(q)]


def _xyzw_to_matrix(v):
    v = np.asarray(v, dtype=np.float64)
    return geometry.pose_to_matrix(v[:3], geometry.xyzw_to_wxyz(v[3:]))


T_ODOM_BASE = _xyzw_list(_xyzw_to_matrix(T_ODOM_CAM) @ _xyzw_to_matrix(T_CAM_BASE))
FAKE_TF2_ROS = f"""
from geometry_msgs.msg import TransformStamped

_KNOWN = {{'odom|override_optical': {T_ODOM_CAM!r}, 'override_optical|base_link': {T_CAM_BASE!r},
          'odom|base_link': {T_ODOM_BASE!r}}}


class LookupException(Exception):
    pass


class Buffer:
    def lookup_transform(self, target, source, time, timeout=None):
        v = _KNOWN.get(target + '|' + source)
        if v is None:
            raise LookupException(target + ' -> ' + source + ' unknown to the test stand-in')
        tf = TransformStamped()
        tf.header.frame_id, tf.child_frame_id = target, source
        tf.header.stamp = time.to_msg()
        t, r = tf.transform.translation, tf.transform.rotation
        t.x, t.y, t.z, r.x, r.y, r.z, r.w = v
        return tf


class TransformListener:
    def __init__(self, buffer, node, **kwargs):
        self.buffer = buffer
"""
CAMERA_IN_BASE = [0.1, 0.0, 0.2, -0.5, 0.5, -0.5, 0.5]  # optical frame on a REP 103 base
NODE_NAME = 'posenet_relocalizer'


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def frames():
    """Four rendered 80x60 frames of the synthetic courtyard (RGB uint8)."""
    from posenet_ros.tools.synthetic import camera_matrix, make_scene, render, trajectory
    scene = make_scene(seed=0)
    K = camera_matrix(W, H, 70.0)
    return [render(scene, p, q, K, W, H) for p, q in trajectory('test', n=4)]


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """A tiny random-init export and a copy whose pose head is NaN (same metadata)."""
    import torch

    from posenet_ros.model.export import META_NAME
    out = tmp_path_factory.mktemp('models')
    good = make_tiny_export(out)
    extra = {META_NAME: ''}
    bad = out / 'nan_weights.ts'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', FutureWarning)  # torch.jit deprecation notices
        module = torch.jit.load(str(good), _extra_files=extra)
        with torch.no_grad():
            for _, p in module.named_parameters():
                p.fill_(float('nan'))
        torch.jit.save(module, str(bad), _extra_files=extra)
    return good, bad


@pytest.fixture(scope='module')
def int8_model(models, frames):
    """The int8 CPU export (posenet-ros quantize) of the tiny model, calibrated on the frames."""
    from posenet_ros.model.quantize import quantize_export
    return quantize_export(models[0], frames, models[0].with_name('tiny.int8.ts')).path


@pytest.fixture(scope='module')
def offline(models):
    """The relocalizer the node uses, loaded in this process: the reference for every pose."""
    import torch

    from posenet_ros.model.relocalizer import Relocalizer
    torch.set_num_threads(1)
    return Relocalizer(models[0], 'cpu', 0)


@pytest.fixture(scope='module')
def session():
    with RosSession() as s:
        yield s


def _common(model, ns):
    return {'model_path': str(model), 'device': 'cpu', 'num_threads': 1, 'warmup_iterations': 1,
            'max_image_age': 30.0, 'diagnostics_period': 0.25, 'log_throttle': 0.0,
            'image_topic': f'/{ns}/camera/image_raw', 'initial_pose_topic': f'/{ns}/initialpose',
            'camera_in_base': CAMERA_IN_BASE, 'relocalize_timeout': 3.0,
            'refine': 'off'}  # coarse poses of a random-init model; verification: test_node_verify


@pytest.fixture(scope='module')
def nodes(session, models, int8_model, tmp_path_factory):
    """Start the four nodes (in parallel: start-up is dominated by importing torch)."""
    good, bad = models
    fake = tmp_path_factory.mktemp('fake_tf2') / 'tf2_ros'
    fake.mkdir()
    (fake / '__init__.py').write_text(FAKE_TF2_ROS)
    comp_env = {'PYTHONPATH': os.pathsep.join([str(fake.parent), str(ROOT)])}
    procs = {
        'raw': session.start_node(_common(good, 'raw'), 'raw', extra_args=('-r', '__ns:=/raw')),
        'comp': session.start_node(
            dict(_common(good, 'comp'), image_transport='compressed', input_reliability='reliable',
                 map_frame='world', camera_frame='override_optical', tf_mode='map_to_odom',
                 transform_tolerance=0.25),
            'comp', extra_args=('-r', '__ns:=/comp'), env_extra=comp_env),
        'nan': session.start_node(dict(_common(bad, 'nan'), relocalize_timeout=1.0), 'nan',
                                  extra_args=('-r', '__ns:=/nan')),
        # device auto: an int8 export must land on the CPU even where CUDA exists.
        'q8': session.start_node(dict(_common(int8_model, 'q8'), device='auto'), 'q8',
                                 extra_args=('-r', '__ns:=/q8')),
    }
    for name, proc in procs.items():
        assert proc.wait_for_output('ready: model', 120), f'{name} node did not start:\n' \
            + proc.output()
    yield procs
    for name, proc in procs.items():
        assert proc.alive(), f'{name} node died:\n{proc.output()}'
        proc.interrupt()
    codes = {name: proc.stop() for name, proc in procs.items()}
    assert set(codes.values()) == {0}, (codes, {n: p.output()[-2000:] for n, p in procs.items()})


class Client:
    """Publishers and subscriptions of one node namespace, with stamp-keyed inboxes."""

    def __init__(self, session, ns, compressed=False, diag_prefix=None):
        n = session.node
        self.session, self.ns, self.compressed = session, ns, compressed
        base = f'/{ns}/{NODE_NAME}'
        self.poses, self.covs, self.tfs, self.initial, self.diags = {}, {}, {}, [], []
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.subs = [
            n.create_subscription(PoseStamped, f'{base}/pose',
                                  lambda m: self.poses.__setitem__(_key(m.header.stamp), m), qos),
            n.create_subscription(PoseWithCovarianceStamped, f'{base}/pose_with_covariance',
                                  lambda m: self.covs.__setitem__(_key(m.header.stamp), m), qos),
            n.create_subscription(PoseWithCovarianceStamped, f'/{ns}/initialpose',
                                  self.initial.append, qos),
            n.create_subscription(TFMessage, '/tf', self._on_tf, QoSProfile(depth=100)),
            n.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, qos),
        ]
        topic = f'/{ns}/camera/image_raw' + ('/compressed' if compressed else '')
        self.pub = n.create_publisher(CompressedImage if compressed else Image, topic, qos)
        self.relocalize = n.create_client(Trigger, f'{base}/relocalize')
        self.enable = n.create_client(SetBool, f'{base}/enable')
        self.set_params = n.create_client(SetParameters, f'{base}/set_parameters')
        self._name = f'/{ns}/{NODE_NAME}: relocalization'
        self._t = 0

    def _on_tf(self, msg):
        for tf in msg.transforms:
            self.tfs[(tf.child_frame_id, _key(tf.header.stamp))] = tf

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name == self._name:
                self.diags.append({kv.key: kv.value for kv in st.values} | {
                    '_level': st.level, '_message': st.message, '_hw': st.hardware_id})

    def wait_connected(self, probe, answered=None, timeout=30.0):
        """Wait for discovery, then send ``probe`` frames until the node answers one.

        DDS discovery is per participant: this process seeing the node's subscription does not
        mean the node has matched this publisher yet (nor its pose publisher our subscription),
        so a first frame can be lost. ``answered(key, diags_since_send)`` says whether the probe
        got through; by default its pose and covariance pose arrived.
        """
        assert self.session.spin_until(
            lambda: self.pub.get_subscription_count() > 0
            and all(s.get_publisher_count() > 0 for s in self.subs[:2]), timeout), self.ns
        answered = answered or (lambda key, _: key in self.poses and key in self.covs)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            start = len(self.diags)
            key = self.send(rgb=probe)
            if self.session.spin_until(lambda k=key, s=start: answered(k, self.diags[s:]), 2.0):
                return
        raise AssertionError(f'/{self.ns} node answered no probe frame in {timeout} s; '
                             f'last diagnostics: {self.diags[-1:]}')

    def stamp(self, offset_s=0.0):
        """A fresh, unique stamp near now (node clock minus stamp = frame age)."""
        self._t += 1
        t = time.time() + offset_s
        sec = int(t)
        return sec, int((t - sec) * 1e9) // 1000 * 1000 + self._t

    def send(self, fields=None, *, rgb=None, fmt=None, stamp=None, frame_id='cam_optical'):
        """Publish one frame; returns its stamp key."""
        sec, nsec = stamp or self.stamp()
        if self.compressed:
            msg = CompressedImage()
            if fields is None:
                fields = dict(zip(('format', 'data'), rgb_to_compressed(rgb, fmt or 'jpeg')))
            msg.format = fields['format']
            msg.data = array.array('B', fields['data'])
        else:
            msg = Image()
            fields = fields or rgb_to_image_fields(rgb, 'rgb8')
            msg.encoding, msg.height, msg.width = fields['encoding'], fields['height'], \
                fields['width']
            msg.step, msg.is_bigendian = fields['step'], fields['is_bigendian']
            msg.data = array.array('B', fields['data'])
        msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nsec
        msg.header.frame_id = frame_id
        self.pub.publish(msg)
        return sec, nsec

    def wait_pose(self, key, timeout=10.0):
        self.session.spin_until(lambda: key in self.poses and key in self.covs, timeout)
        return self.poses.get(key), self.covs.get(key)

    def diag(self, predicate=lambda d: True, timeout=5.0):
        """The next diagnostics values (after now) that satisfy ``predicate``."""
        start = len(self.diags)
        ok = self.session.spin_until(
            lambda: any(predicate(d) for d in self.diags[start:]), timeout)
        assert ok, f'no matching diagnostics; last: {self.diags[-1:] }'
        return next(d for d in self.diags[start:] if predicate(d))

    def rejected(self):
        return int(self.diag()['frames_rejected'])


def _key(stamp):
    return stamp.sec, stamp.nanosec


def _check_pose(msg, expected_pred, frame_id):
    assert msg.header.frame_id == frame_id
    p, q = msg.pose.position, msg.pose.orientation
    q_xyzw = np.array([q.x, q.y, q.z, q.w])
    assert abs(np.linalg.norm(q_xyzw) - 1.0) < 1e-6
    np.testing.assert_allclose([p.x, p.y, p.z], expected_pred.position, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(geometry.xyzw_to_wxyz(q_xyzw), expected_pred.quaternion_wxyz,
                               rtol=1e-4, atol=1e-5)


@pytest.fixture(scope='module')
def raw(session, nodes, frames):
    c = Client(session, 'raw')
    c.wait_connected(frames[0])
    return c


@pytest.fixture(scope='module')
def comp(session, nodes, frames):
    c = Client(session, 'comp', compressed=True)
    c.wait_connected(frames[0])
    return c


# --- raw transport -------------------------------------------------------------------------------
@pytest.mark.parametrize('encoding, padding, big', [
    ('rgb8', 0, False), ('bgr8', 4, False), ('rgba8', 0, False), ('bgra8', 8, False),
    ('mono8', 3, False), ('rgb16', 0, True), ('bgr16', 2, False),
])
def test_raw_pose_equals_offline(raw, frames, offline, encoding, padding, big):
    rgb = frames[sum(map(ord, encoding)) % len(frames)]
    expected_rgb = rgb
    if encoding == 'mono8':
        expected_rgb = np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, -1)
    key = raw.send(rgb_to_image_fields(rgb, encoding, padding, big))
    pose, cov = raw.wait_pose(key)
    assert pose is not None, f'no pose for {encoding}'
    expected = offline.predict(expected_rgb)
    meta_map = offline.metadata['frames']['map_frame']
    _check_pose(pose, expected, meta_map)
    assert cov.header.frame_id == meta_map and _key(cov.header.stamp) == key
    assert cov.pose.pose == pose.pose
    c = np.array(cov.pose.covariance).reshape(6, 6)
    np.testing.assert_allclose(np.diag(c), [0.25] * 3 + [0.04] * 3)  # 0.5 m, 0.2 rad defaults
    # TF: map -> <image frame_id>_posenet at the image stamp, same transform as the pose.
    raw.session.spin_until(lambda: ('cam_optical_posenet', key) in raw.tfs, 5)
    tf = raw.tfs[('cam_optical_posenet', key)]
    assert tf.header.frame_id == meta_map
    t = tf.transform.translation
    np.testing.assert_allclose([t.x, t.y, t.z], expected.position, rtol=1e-4, atol=1e-5)
    r = tf.transform.rotation
    assert geometry.rotation_error_deg(geometry.xyzw_to_wxyz([r.x, r.y, r.z, r.w]),
                                       expected.quaternion_wxyz) < 1e-3


def test_int8_export_runs_in_the_node(session, nodes, int8_model, frames):
    """The node serves an int8 export exactly as the offline int8 Relocalizer predicts it."""
    from posenet_ros.model.relocalizer import Relocalizer
    ref = Relocalizer(int8_model, 'auto', 0)
    assert ref.quantization and ref.device.type == 'cpu'
    c = Client(session, 'q8')
    c.wait_connected(frames[0])
    key = c.send(rgb=frames[1])
    pose, _ = c.wait_pose(key)
    assert pose is not None, f'no pose from the int8 node:\n{nodes["q8"].output()[-3000:]}'
    _check_pose(pose, ref.predict(frames[1]), ref.metadata['frames']['map_frame'])
    d = c.diag(lambda d: d['frames_published'] != '0')
    assert d['precision'] == 'int8' and d['device'] == 'cpu' and d['model_id'] == ref.model_id


def test_raw_diagnostics(raw, offline):
    d = raw.diag(lambda d: d['frames_published'] != '0')
    assert d['_hw'] == offline.metadata['model_id'] == d['model_id']
    assert float(d['inference_ms_p50']) > 0 and float(d['inference_ms_p95']) >= \
        float(d['inference_ms_p50'])
    assert d['input_topic'] == '/raw/camera/image_raw'
    assert d['tf_mode'] == 'camera' and d['device'] == 'cpu' and d['precision'] == 'fp32'
    assert 0.0 < float(d['raw_quat_norm']) < 1e6
    assert float(d['frame_age_ms_max']) >= 0.0


def _bad_raw_cases(rgb):
    good = rgb_to_image_fields(rgb, 'rgb8')
    return {
        'wrong_encoding': dict(good, encoding='32FC1'),
        'step_too_small': dict(good, step=good['step'] - 3),
        'size_mismatch': dict(good, data=good['data'] + b'\x00' * 7),
        'truncated': dict(good, data=good['data'][: len(good['data']) // 2]),
        'zero_size': dict(good, height=0, width=0, step=0, data=b''),
        'height_mismatch': dict(good, height=good['height'] + 5),
    }


def test_raw_bad_input_is_rejected_and_node_keeps_answering(raw, frames, offline, nodes):
    for name, fields in _bad_raw_cases(frames[0]).items():
        before = raw.rejected()
        bad_key = raw.send(fields)
        d = raw.diag(lambda d, b=before: int(d['frames_rejected']) > b)
        assert int(d['frames_rejected']) == before + 1, name
        assert int(d.get('rejected_conversion', 0)) >= 1 and d['_level'] == b'\x01', d
        good_key = raw.send(rgb=frames[1])
        pose, _ = raw.wait_pose(good_key)
        assert pose is not None, f'node stopped answering after {name}'
        _check_pose(pose, offline.predict(frames[1]), pose.header.frame_id)
        assert bad_key not in raw.poses, name
    out = nodes['raw'].output()
    assert 'rejected frame (conversion)' in out and 'truncated' in out and '32FC1' in out


def test_tiny_frames_get_no_pose(raw, frames):
    """A 1x1 (or 8x8) image is valid rgb8 but shows nothing: rejected as invalid_frame."""
    for size in (1, 8):
        before = raw.rejected()
        key = raw.send(rgb=np.full((size, size, 3), 90, np.uint8))
        d = raw.diag(lambda d, b=before: int(d['frames_rejected']) > b)
        assert int(d.get('rejected_invalid_frame', 0)) >= 1 and 'at least 16 px' in \
            d['last_error'], d
        assert raw.wait_pose(raw.send(rgb=frames[1]))[0] is not None
        assert key not in raw.poses


def test_stale_frames_are_dropped_and_counted(raw, frames):
    before = int(raw.diag()['frames_stale'])
    key = raw.send(rgb=frames[2], stamp=raw.stamp(offset_s=-120.0))
    d = raw.diag(lambda d: int(d['frames_stale']) > before)
    assert int(d['frames_stale']) == before + 1
    raw.session.spin_until(lambda: False, 0.3)
    assert key not in raw.poses
    fresh = raw.send(rgb=frames[2])
    assert raw.wait_pose(fresh)[0] is not None


def test_enable_relocalize_and_initial_pose(raw, frames, offline):
    s = raw.session
    res = s.call(raw.enable, SetBool.Request(data=False))
    assert res.success, res.message
    key = raw.send(rgb=frames[0])
    s.spin_until(lambda: False, 0.8)
    assert key not in raw.poses, 'continuous output still on after ~/enable false'
    assert raw.diag(lambda d: d['continuous'] == 'false')

    # ~/relocalize serves the next frame even with continuous output off.
    future = raw.relocalize.call_async(Trigger.Request())
    sent = []
    deadline = time.monotonic() + 15
    while not future.done() and time.monotonic() < deadline:
        sent.append(raw.send(rgb=frames[3]))
        s.spin_until(future.done, 0.15)
    res = future.result()
    assert res is not None and res.success, res
    info = json.loads(res.message)
    key = (info['stamp']['sec'], info['stamp']['nanosec'])
    assert key in sent
    expected = offline.predict(frames[3])
    np.testing.assert_allclose(info['camera']['position'], expected.position, rtol=1e-4,
                               atol=1e-5)
    assert info['extrinsic_source'] == 'parameter camera_in_base'  # no tf2_ros here
    # The initial pose is the BASE pose: T_map_base = T_map_cam * T_base_cam^-1.
    s.spin_until(lambda: raw.initial, 5)
    assert len(raw.initial) == 1, 'initial pose must be published once per request'
    init = raw.initial[0]
    assert _key(init.header.stamp) == key and init.header.frame_id == info['frame_id']
    t_map_cam = geometry.pose_to_matrix(expected.position, expected.quaternion_wxyz)
    v = np.array(CAMERA_IN_BASE)
    t_base_cam = geometry.pose_to_matrix(v[:3], geometry.xyzw_to_wxyz(v[3:]))
    t_map_base = t_map_cam @ np.linalg.inv(t_base_cam)
    p = init.pose.pose.position
    np.testing.assert_allclose([p.x, p.y, p.z], t_map_base[:3, 3], atol=1e-4)
    o = init.pose.pose.orientation
    assert geometry.rotation_error_deg(geometry.xyzw_to_wxyz([o.x, o.y, o.z, o.w]),
                                       geometry.matrix_to_quat(t_map_base[:3, :3])) < 1e-3
    assert min(np.diag(np.array(init.pose.covariance).reshape(6, 6))) > 0
    assert not any(k in raw.poses for k in sent), 'relocalize must not re-enable continuous'

    res = s.call(raw.enable, SetBool.Request(data=True))
    assert res.success
    assert raw.wait_pose(raw.send(rgb=frames[0]))[0] is not None


def _param(name, value):
    if isinstance(value, float):
        v = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=value)
    else:
        v = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    return ParameterMsg(name=name, value=v)


def test_parameter_updates_validated(raw, frames):
    s = raw.session
    cases = [('max_image_age', -1.0, ''), ('tf_mode', 'none', 'read-only'),
             ('image_transport', 'compressed', 'read-only'), ('map_frame', '/map', 'start with')]
    for name, value, why in cases:
        res = s.call(raw.set_params, SetParameters.Request(parameters=[_param(name, value)]))
        assert res is not None and not res.results[0].successful, name
        assert why in res.results[0].reason, res.results[0].reason
    res = s.call(raw.set_params, SetParameters.Request(
        parameters=[_param('position_stddev', 0.1)]))
    assert res.results[0].successful, res.results[0].reason
    _, cov = raw.wait_pose(raw.send(rgb=frames[1]))
    assert math.isclose(cov.pose.covariance[0], 0.01, rel_tol=1e-9)


# --- compressed transport ------------------------------------------------------------------------
@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_compressed_pose_equals_offline(comp, frames, offline, fmt):
    rgb = frames[1]
    fmt_str, data = rgb_to_compressed(rgb, fmt)
    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
    key = comp.send({'format': fmt_str, 'data': data})
    pose, cov = comp.wait_pose(key)
    assert pose is not None
    expected = offline.predict(decoded)
    _check_pose(pose, expected, 'world')  # map_frame override


def _xyzw_matrix(v):
    v = np.asarray(v, dtype=np.float64)
    return geometry.pose_to_matrix(v[:3], geometry.xyzw_to_wxyz(v[3:]))


def test_map_to_odom_tf_future_dated(comp, frames, offline):
    key = comp.send(rgb=frames[2])
    pose, _ = comp.wait_pose(key)
    assert pose is not None
    ns = key[1] + 250_000_000  # transform_tolerance 0.25 s
    future = (key[0] + ns // 1_000_000_000, ns % 1_000_000_000)
    assert comp.session.spin_until(lambda: ('odom', future) in comp.tfs, 5), \
        sorted(k for k in comp.tfs if k[0] == 'odom')[-3:]
    tf = comp.tfs[('odom', future)]
    assert tf.header.frame_id == 'world'
    expected = offline.predict(frames[2])
    t_map_cam = geometry.pose_to_matrix(expected.position, expected.quaternion_wxyz)
    t_map_odom = t_map_cam @ np.linalg.inv(_xyzw_matrix(T_ODOM_CAM))
    t, r = tf.transform.translation, tf.transform.rotation
    got = _xyzw_matrix([t.x, t.y, t.z, r.x, r.y, r.z, r.w])
    np.testing.assert_allclose(got, t_map_odom, atol=1e-4)
    # Nothing on the camera child frame in this mode.
    assert not any(k[0].endswith('_posenet') and k[1] == key for k in comp.tfs)


def test_relocalize_uses_tf_extrinsic(comp, frames, offline):
    s = comp.session
    future = comp.relocalize.call_async(Trigger.Request())
    deadline = time.monotonic() + 15
    while not future.done() and time.monotonic() < deadline:
        comp.send(rgb=frames[0], fmt='png')
        s.spin_until(future.done, 0.15)
    res = future.result()
    assert res is not None and res.success, res
    info = json.loads(res.message)
    assert info['extrinsic_source'] == 'tf' and info['camera_frame'] == 'override_optical'
    expected = offline.predict(frames[0])
    t_map_base = geometry.pose_to_matrix(expected.position, expected.quaternion_wxyz) \
        @ _xyzw_matrix(T_CAM_BASE)
    np.testing.assert_allclose(info['base']['position'], t_map_base[:3, 3], atol=1e-4)
    s.spin_until(lambda: comp.initial, 5)
    p = comp.initial[-1].pose.pose.position
    np.testing.assert_allclose([p.x, p.y, p.z], t_map_base[:3, 3], atol=1e-4)
    assert comp.initial[-1].header.frame_id == 'world'


def test_compressed_bad_input_and_incompatible_qos(comp, frames, offline, nodes, session):
    _, good = rgb_to_compressed(frames[0], 'jpeg')
    cases = {'garbage': b'\xff\xd8\xff\xe0 definitely not a jpeg ' * 8, 'empty': b'',
             'depth': (b'\x00' * 64, '16UC1; compressedDepth png')}
    for name, payload in cases.items():
        data, fmt = payload if isinstance(payload, tuple) else (payload, 'jpeg')
        before = comp.rejected()
        comp.send({'format': fmt, 'data': data})
        comp.diag(lambda d, b=before: int(d['frames_rejected']) > b)
        key = comp.send({'format': 'jpeg', 'data': good})
        assert comp.wait_pose(key)[0] is not None, f'no answer after {name}'
    # A best-effort publisher cannot feed a reliable subscription: the node must say so.
    be = session.node.create_publisher(
        CompressedImage, '/comp/camera/image_raw/compressed',
        QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT))
    assert nodes['comp'].wait_for_output('incompatible QoS', 15), nodes['comp'].output()
    session.node.destroy_publisher(be)
    assert 'input_reliability:=best_effort' in nodes['comp'].output()


# --- NaN model -----------------------------------------------------------------------------------
def test_non_finite_output_rejected_node_survives(session, nodes, frames):
    c = Client(session, 'nan')
    # This model never answers with a pose: a probe got through once the node rejected it.
    c.wait_connected(frames[0], lambda _, diags: any(
        int(d.get('rejected_non_finite_output', 0)) > 0 for d in diags))
    for _ in range(3):
        before = c.rejected()
        key = c.send(rgb=frames[0])
        d = c.diag(lambda d, b=before: int(d['frames_rejected']) > b)
        assert int(d['rejected_non_finite_output']) >= 1
        assert key not in c.poses
    future = c.relocalize.call_async(Trigger.Request())
    while not future.done():
        c.send(rgb=frames[0])
        session.spin_until(future.done, 0.2)
    res = future.result()
    assert not res.success and 'non_finite_output' in res.message, res.message
    assert session.call(c.enable, SetBool.Request(data=False)).success
    assert nodes['nan'].alive()


# --- start-up failures ---------------------------------------------------------------------------
def test_startup_failures_exit_nonzero_with_reason(session, models, tmp_path):
    corrupt = tmp_path / 'corrupt.ts'
    corrupt.write_bytes(b'PK\x03\x04 this is not a model' * 10)
    cases = {
        'missing': ({'model_path': str(tmp_path / 'nope.ts')}, 'does not exist'),
        'corrupt': ({'model_path': str(corrupt)}, 'cannot be loaded'),
        'empty': ({}, 'model_path is empty'),
        'bad_param': ({'model_path': str(models[0]), 'tf_mode': 'bogus'}, 'tf_mode must be'),
    }
    outputs = failed_starts({name: params for name, (params, _) in cases.items()}, session.env())
    for name, out in outputs.items():
        assert cases[name][1] in out, f'{name}:\n{out}'
