"""The node's parameter table vs config/relocalize.yaml and docs/node.md; validation rules."""

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from posenet_ros.core import geometry
from posenet_ros.core.geometry import base_in_map, covariance_through_mount, map_to_odom
from posenet_ros.core.ros_conversions import xyzw_pose_to_matrix
from posenet_ros.ros import params as P
from posenet_ros.ros.diagnostics import OK, WARN, NodeStats

ROOT = Path(__file__).resolve().parents[1]


def _yaml_params():
    doc = yaml.safe_load((ROOT / 'config' / 'relocalize.yaml').read_text())
    assert list(doc) == ['/**']
    return doc['/**']['ros__parameters']


def test_config_yaml_lists_every_parameter_with_its_default():
    values = _yaml_params()
    assert set(values) == set(P.SPECS)
    for name, spec in P.SPECS.items():
        value = values[name]
        assert type(value) is type(spec.default), (name, value)  # 0.0 vs 0 matters to rclpy
        assert value == spec.default, name
        assert P.validate(name, value) is None or name == 'model_path'


def test_docs_table_every_parameter_topic_service():
    text = (ROOT / 'docs' / 'node.md').read_text()
    table = text.split('## Parameters', 1)[1].split('\n## ', 1)[0]
    for name, spec in P.SPECS.items():
        row = next((ln for ln in table.splitlines() if ln.startswith(f'| `{name}`')), None)
        assert row is not None, f'docs/node.md has no table row for {name}'
        assert ('yes' in row.split('|')[4]) == spec.read_only, name
    for item in ('~/pose', '~/pose_with_covariance', '/tf', '/diagnostics', '/initialpose',
                 '~/relocalize', '~/enable', '--params-file config/relocalize.yaml'):
        assert item in text, item


@pytest.mark.parametrize('name, value, match', [
    ('image_transport', 'theora', 'one of'),
    ('tf_mode', 'base', 'one of'),
    ('max_image_age', -1.0, '>='),
    ('max_rate', float('nan'), 'finite'),
    ('position_stddev', 0.0, '>='),
    ('warmup_iterations', 1.5, 'must be a int'),
    ('continuous', 1, 'must be a bool'),
    ('device', 'tpu', 'device must be'),
    ('camera_in_base', [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], '7 finite'),
    ('camera_in_base', [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0], 'unit'),
    ('map_frame', '/map', 'must not start'),
    ('base_frame', '', 'must not be empty'),
    ('image_topic', ' ', 'must not be empty'),
    ('no_such_param', 1, 'unknown'),
])
def test_validate_refuses_with_reason(name, value, match):
    reason = P.validate(name, value)
    assert reason is not None and match in reason, reason


@pytest.mark.parametrize('name, value', [
    ('device', 'cuda:1'), ('device', 'cpu'), ('max_rate', 5), ('tf_mode', 'map_to_odom'),
    ('camera_in_base', [0.1, 0, 0.2, 0.5, -0.5, 0.5, -0.5]), ('map_frame', 'world'),
])
def test_validate_accepts(name, value):
    assert P.validate(name, value) is None


def test_descriptors_carry_ranges_and_read_only():
    pytest.importorskip('rcl_interfaces')
    d = P.descriptor(P.SPECS['max_image_age'])
    assert d.floating_point_range[0].from_value == 0.0 and not d.read_only
    d = P.descriptor(P.SPECS['model_path'])
    assert d.read_only and 'exported' in d.description
    d = P.descriptor(P.SPECS['warmup_iterations'])
    assert d.integer_range[0].to_value == 100
    assert 'camera' in P.descriptor(P.SPECS['tf_mode']).additional_constraints


def test_transform_helpers():
    # A camera 1 m ahead of the base, looking forward (optical z = base x).
    t_base_cam = xyzw_pose_to_matrix([1.0, 0, 0, -0.5, 0.5, -0.5, 0.5])
    assert np.allclose(t_base_cam[:3, 2], [1, 0, 0])  # optical z along base x
    t_map_cam = geometry.pose_to_matrix([3.0, 2.0, 0.0], geometry.matrix_to_quat(
        t_base_cam[:3, :3]))
    t_map_base = base_in_map(t_map_cam, t_base_cam)
    assert np.allclose(t_map_base[:3, 3], [2.0, 2.0, 0.0])
    assert np.allclose(t_map_base[:3, :3], np.eye(3))
    # map_to_odom: odom drifted by +0.5 m in x relative to map.
    t_map_odom_true = geometry.pose_to_matrix([-0.5, 0, 0], [1, 0, 0, 0])
    t_odom_cam = geometry.compose(geometry.invert(t_map_odom_true), t_map_cam)
    assert np.allclose(map_to_odom(t_map_cam, t_odom_cam), t_map_odom_true)


def test_stats_snapshot_rates_and_levels():
    now = [0.0]
    stats = NodeStats(clock=lambda: now[0])
    for i in range(10):
        stats.count('received')
        stats.processed(5.0 + i, 0.01, 1.02)
        stats.count('published')
    stats.count('dropped', 2)
    now[0] = 2.0
    snap = stats.snapshot(True, '/cam')
    v = snap['values']
    assert snap['level'] == OK, snap
    assert math.isclose(float(v['input_rate_hz']), 5.0)
    assert float(v['inference_ms_p50']) == pytest.approx(9.5)
    assert v['frames_dropped'] == '2' and v['raw_quat_norm'] == '1.0200'
    stats.reject('conversion', 'bad step')
    now[0] = 3.0
    snap = stats.snapshot(True, '/cam')
    assert snap['level'] == WARN and 'rejected' in snap['message']
    assert 'no images on /cam' in snap['message']
    assert snap['values']['rejected_conversion'] == '1'
    assert 'bad step' in snap['values']['last_error']


def test_refine_off_survives_yaml_reading_it_as_false():
    # `-p refine:=off` and `refine: off` in a params file arrive as the boolean false
    assert P.normalize('refine', False) == 'off' and P.validate('refine', False) is None
    assert P.validate('refine', 'continuous') is None
    assert 'one of' in P.validate('refine', 'sometimes')
    assert 'must be a str' in P.validate('refine', True)
    assert P.normalize('continuous', False) is False  # only yaml_off parameters are mapped
    assert P.descriptor(P.SPECS['refine']).dynamic_typing


def test_covariance_through_the_mount_matches_sampled_poses():
    """First-order propagation camera -> base against 20,000 perturbed camera poses."""
    import transforms3d.axangles as ta


    rng = np.random.default_rng(0)
    t_map_cam = geometry.pose_to_matrix([1.0, 2.0, 0.5], geometry.normalize_quaternion(
        np.array([0.6, -0.3, 0.5, 0.2])))
    t_cam_base = geometry.invert(xyzw_pose_to_matrix([0.1, 0.0, 0.3, -0.5, 0.5, -0.5, 0.5]))
    a = rng.normal(size=(6, 6)) * np.array([0.02] * 3 + [0.01] * 3)
    cov = a @ a.T
    samples = rng.multivariate_normal(np.zeros(6), cov, size=20000)
    base0 = t_map_cam @ t_cam_base
    out = []
    for d in samples:
        t = t_map_cam.copy()
        t[:3, 3] += d[:3]
        angle = np.linalg.norm(d[3:])
        r = ta.axangle2mat(d[3:] / angle, angle) if angle > 0 else np.eye(3)
        t[:3, :3] = r @ t[:3, :3]  # left perturbation: rotation about the map's axes
        b = t @ t_cam_base
        dr = b[:3, :3] @ base0[:3, :3].T
        rot = ta.mat2axangle(dr)
        out.append(np.concatenate([b[:3, 3] - base0[:3, 3], rot[0] * rot[1]]))
    emp = np.cov(np.asarray(out).T)
    # propagate the samples' own covariance: what is left is the second-order remainder
    got = covariance_through_mount(np.cov(samples.T), t_map_cam, t_cam_base)
    np.testing.assert_allclose(got, emp, atol=2e-6)
    # a lever arm with the wrong sign is far outside that
    flipped = covariance_through_mount(np.cov(samples.T), t_map_cam, invert_lever(t_cam_base))
    assert np.abs(flipped - emp).max() > 1e-4


def invert_lever(t):
    out = t.copy()
    out[:3, 3] *= -1
    return out


def test_stats_input_rate_against_the_camera():
    """Images at a third of the camera_info rate: lost frames counted, fraction < 0.5, WARN."""
    t = [0.0]
    stats = NodeStats(clock=lambda: t[0])
    period = 1_000_000_000 // 30
    for k in range(30):
        stats.count('camera_info')
        stats.info_stamp(1_000_000_000 + k * period)
        if k % 3 == 0:
            stats.count('received')
            stats.image_stamp(1_000_000_000 + k * period)
    t[0] = 1.0
    snap = stats.snapshot(True, '/cam')
    snapshot_values = snap['values']
    assert snapshot_values['stamp_gap_frames_lost'] == '18'  # 9 gaps of 3 periods
    assert snapshot_values['input_fraction'] == '0.333'
    assert snapshot_values['camera_info_rate_hz'] == '30.00'
    assert abs(float(snapshot_values['camera_period_ms']) - 33.33) < 0.01
    assert snap['level'] == WARN and 'of the camera rate (camera_info)' in snap['message']
    # Without camera_info the image stamps' own period is the reference.
    stats = NodeStats(clock=lambda: t[0])
    for k in [0, 1, 2, 3, 6, 7, 8, 9]:
        stats.count('received')
        stats.image_stamp(1_000_000_000 + k * period)
    t[0] = 2.0
    v = stats.snapshot(True, '/cam')['values']
    assert v['stamp_gap_frames_lost'] == '2' and v['input_rate_reference'] == 'image stamps'
    assert v['input_fraction'] == '0.800'
