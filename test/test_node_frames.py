"""FrameStager: the GPU-style staging path (reused host buffer, device-side channel order).

There is no GPU here, so the tensor path runs with device='cpu' and an unpinned buffer: the same
code as on CUDA except ``pin_memory`` (the CUDA case is skipped when no GPU is present).
"""

import numpy as np
import pytest
import torch

from posenet_ros.core.image_conversion import decode_image, rgb_to_image_fields, to_rgb
from posenet_ros.core.ros_conversions import xyzw_pose_to_matrix
from posenet_ros.ros.frames import FrameStager


@pytest.fixture(scope='module')
def rgb():
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(21, 34, 3), dtype=np.uint8)


def _raw(rgb, encoding, padding):
    f = rgb_to_image_fields(rgb, encoding, row_padding=padding)
    return decode_image(f['encoding'], f['height'], f['width'], f['step'], f['is_bigendian'],
                        f['data'])


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'rgb16'])
def test_tensor_path_matches_cpu_conversion(rgb, encoding):
    stager = FrameStager(torch.device('cpu'), tensor_path=True, pin=False)
    raw = _raw(rgb, encoding, padding=6)
    out = stager.stage(raw)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert tuple(out.shape) == rgb.shape
    np.testing.assert_array_equal(out.numpy(), to_rgb(raw))


def test_host_buffer_is_reused_and_resized(rgb):
    stager = FrameStager(torch.device('cpu'), tensor_path=True, pin=False)
    stager.stage(_raw(rgb, 'bgr8', 0))
    first = stager._host
    stager.stage(_raw(rgb, 'bgr8', 4))
    assert stager._host is first  # same shape: no new allocation per frame
    stager.stage(_raw(rgb[:10], 'bgr8', 0))
    assert stager._host is not first and tuple(stager._host.shape) == (10, 34, 3)


def test_cpu_path_returns_numpy_rgb(rgb):
    stager = FrameStager(torch.device('cpu'))
    assert not stager.tensor_path and not stager.pin
    out = stager.stage(_raw(rgb, 'bgra8', 2))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, rgb)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device here')
def test_cuda_path_pinned(rgb):
    stager = FrameStager(torch.device('cuda'))
    assert stager.tensor_path and stager.pin
    out = stager.stage(_raw(rgb, 'bgr8', 4))
    assert out.is_cuda and stager._host.is_pinned()
    np.testing.assert_array_equal(out.cpu().numpy(), rgb)


def test_documented_camera_in_base_worked_example():
    """docs/node.md's forward-looking camera (0.2 m ahead, 1.0 m up, pitched down 10 deg)."""
    from pathlib import Path

    import transforms3d.euler as te
    import transforms3d.quaternions as tq

    from posenet_ros.ros import params as P
    from posenet_ros.tools.synthetic import T_BASE_CAM
    documented = [0.2, 0.0, 1.0, -0.541675, 0.541675, -0.454519, 0.454519]
    r_link = te.euler2mat(0.0, np.radians(10.0), 0.0, 'sxyz')
    r_optical = tq.quat2mat([0.5, -0.5, 0.5, -0.5])  # wxyz of xyzw (-0.5, 0.5, -0.5, 0.5)
    w, x, y, z = tq.mat2quat(r_link @ r_optical)
    np.testing.assert_allclose([x, y, z, w], documented[3:], atol=1e-6)
    # The optical frame looks forward and down by 10 deg; its image x axis points right (-y).
    m = xyzw_pose_to_matrix(documented)
    pitch = np.radians(10.0)
    np.testing.assert_allclose(m[:3, 2], [np.cos(pitch), 0, -np.sin(pitch)], atol=1e-6)
    np.testing.assert_allclose(m[:3, 0], [0, -1, 0], atol=1e-6)
    np.testing.assert_allclose(m, T_BASE_CAM, atol=1e-6)  # the synthetic rig's mount
    assert P.validate('camera_in_base', documented) is None
    doc = (Path(__file__).resolve().parents[1] / 'docs' / 'node.md').read_text()
    assert 'camera_in_base: [' + ', '.join(str(v) for v in documented) + ']' in doc


@pytest.mark.parametrize('value, why', [
    ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0], '7 finite'),
    ([0.0, 0.0, float('nan'), 0.0, 0.0, 0.0, 1.0], '7 finite'),
    ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.01], 'not a rigid transform'),
    ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 'not a rigid transform'),
])
def test_camera_in_base_must_be_rigid_or_unset(value, why):
    from posenet_ros.ros import params as P
    assert why in P.validate('camera_in_base', value)
    assert P.validate('camera_in_base', []) is None  # unset: the default
    assert P.SPECS['camera_in_base'].default == []


def test_builtin_tf_buffer_chain_interpolation_and_errors():
    """The stand-in used where tf2_ros is absent: T_target_source through the tree, in time."""
    from posenet_ros.core import geometry
    from posenet_ros.ros.tf_buffer import ExtrapolationException, LookupException, TfBuffer
    from posenet_ros.tools.synthetic import T_BASE_CAMLINK, T_CAMLINK_OPTICAL, t_map_odom

    buf = TfBuffer()
    buf.set_transform('base_link', 'camera_link', 0, *geometry.matrix_to_pose(T_BASE_CAMLINK),
                      static=True)
    buf.set_transform('camera_link', 'camera_optical', 0,
                      *geometry.matrix_to_pose(T_CAMLINK_OPTICAL), static=True)
    t_odom_base = [geometry.pose_to_matrix([k, 0.5 * k, 0.0], geometry.matrix_to_quat(
        t_map_odom(10.0 * k)[:3, :3])) for k in range(2)]
    for k, m in enumerate(t_odom_base):
        buf.set_transform('odom', 'base_link', k * 1_000_000_000, *geometry.matrix_to_pose(m))
    mount = buf.matrix('base_link', 'camera_optical', 123)  # static: any time
    np.testing.assert_allclose(mount, T_BASE_CAMLINK @ T_CAMLINK_OPTICAL, atol=1e-12)
    np.testing.assert_allclose(buf.matrix('camera_optical', 'base_link', 0),
                               np.linalg.inv(mount), atol=1e-12)
    half = buf.matrix('odom', 'camera_optical', 500_000_000) @ np.linalg.inv(mount)
    np.testing.assert_allclose(half[:3, 3], [0.5, 0.25, 0.0], atol=1e-9)  # lerp
    yaw = np.degrees(np.arctan2(half[1, 0], half[0, 0]))  # slerp of 3 and 5 deg
    assert abs(yaw - 4.0) < 1e-6
    with pytest.raises(ExtrapolationException):
        buf.matrix('odom', 'base_link', 2_000_000_000)
    with pytest.raises(LookupException, match='not in the TF tree'):
        buf.matrix('map', 'base_link', 0)
    tf = buf.lookup_transform('base_link', 'camera_optical', 0, timeout=0.0)
    assert (tf.header.frame_id, tf.child_frame_id) == ('base_link', 'camera_optical')
