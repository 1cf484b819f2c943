"""Localizer: the frame pipeline's result object, base pose through the mount, covariances.

Verification through the Localizer (one network pass per verified frame, exports without the
feature output) is tested against a real map in test_verify.py.
"""

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers_model import make_tiny_export, random_frames

from posenet_ros.core import geometry
from posenet_ros.core.errors import InvalidFrameError, MapError, NonFiniteOutputError
from posenet_ros.localizer import (
    DEFAULT_ORIENTATION_STDDEV,
    DEFAULT_POSITION_STDDEV,
    FrameResult,
    Localizer,
    Pose,
    diagonal_covariance,
)
from posenet_ros.model.export import export_model
from posenet_ros.model.network import build_posenet
from posenet_ros.model.relocalizer import Relocalizer

pytestmark = pytest.mark.filterwarnings('ignore:.*torch.jit.*:FutureWarning')

# A camera 0.3 m ahead of and 0.5 m above the base, looking along the base's x axis (optical
# z forward = base x, optical x right = base -y, optical y down = base -z).
T_BASE_CAM = geometry.pose_to_matrix([0.3, 0.0, 0.5], [0.5, -0.5, 0.5, -0.5])


@pytest.fixture(scope='module')
def loc(tmp_path_factory):
    torch.set_num_threads(1)
    return Localizer(make_tiny_export(tmp_path_factory.mktemp('loc')), warmup=1)


def test_localize_carries_the_coarse_pose_and_stamp(loc):
    frame = random_frames((60, 80, 3), seed=1)
    result = loc.localize(frame, stamp=(12, 345))
    pred = loc.relocalizer.predict(frame)
    assert isinstance(result, FrameResult) and result.stamp == (12, 345)
    np.testing.assert_allclose(result.camera.position, pred.position, atol=1e-6)
    np.testing.assert_allclose(result.camera.quaternion_wxyz, pred.quaternion_wxyz, atol=1e-6)
    np.testing.assert_allclose(result.feature, pred.feature, atol=1e-6)
    assert result.raw_quat_norm == pytest.approx(pred.raw_quat_norm, rel=1e-5)
    assert result.latency_ms > 0
    np.testing.assert_allclose(result.camera.covariance,
                               np.diag([DEFAULT_POSITION_STDDEV ** 2] * 3
                                       + [DEFAULT_ORIENTATION_STDDEV ** 2] * 3))
    assert result.base is None and result.camera_in_base is None
    assert result.verification is None and not result.verified
    assert result.best is result.camera and result.best_base is None
    np.testing.assert_allclose(result.camera.matrix,
                               geometry.pose_to_matrix(pred.position, pred.quaternion_wxyz))
    # a tensor frame (the node's GPU staging path) gives the same pose
    same = loc.localize(torch.from_numpy(frame))
    np.testing.assert_allclose(same.camera.position, result.camera.position, atol=1e-6)


def test_base_pose_and_covariance_go_through_the_mount(loc):
    frame = random_frames((60, 80, 3), seed=2)
    cov = diagonal_covariance(0.0, 0.1)  # rotation uncertainty only
    result = loc.localize(frame, camera_in_base=T_BASE_CAM, covariance=cov)
    t_map_base = result.camera.matrix @ np.linalg.inv(T_BASE_CAM)
    np.testing.assert_allclose(result.base.matrix, t_map_base, atol=1e-9)
    np.testing.assert_allclose(result.camera_in_base, T_BASE_CAM)
    np.testing.assert_allclose(result.camera.covariance, cov)
    base_cov = result.base.covariance
    assert base_cov.shape == (6, 6) and np.allclose(base_cov, base_cov.T)
    # the rotation carries over; the 0.58 m lever arm turns it into position uncertainty
    np.testing.assert_allclose(base_cov[3:, 3:], cov[3:, 3:], atol=1e-12)
    lever = np.linalg.norm(T_BASE_CAM[:3, 3])
    assert np.trace(base_cov[:3, :3]) == pytest.approx(2 * (0.1 * lever) ** 2, rel=1e-6)
    assert result.best_base is result.base


def test_constructor_stddevs_and_a_loaded_relocalizer(loc):
    other = Localizer(loc.relocalizer, position_stddev=2.0, orientation_stddev=0.5)
    assert other.relocalizer is loc.relocalizer and other.model_id == loc.model_id
    assert other.device == loc.device and other.metadata is loc.metadata
    result = other.localize(random_frames((40, 50, 3), seed=3))
    np.testing.assert_allclose(np.diag(result.camera.covariance), [4.0] * 3 + [0.25] * 3)


def test_bad_frames_and_missing_map_give_clear_errors(loc, tmp_path):
    with pytest.raises(InvalidFrameError, match='uint8'):
        loc.localize(np.zeros((40, 50, 3), np.float32) + 0.5)
    with pytest.raises(InvalidFrameError, match='at least 16 px'):
        loc.localize(np.zeros((8, 50, 3), np.uint8))
    result = loc.localize(random_frames((40, 50, 3), seed=4))
    assert loc.scene_map is None
    with pytest.raises(MapError, match='posenet-ros map'):
        loc.verify(result, random_frames((40, 50, 3), seed=4))
    with pytest.raises(MapError, match='posenet-ros map'):
        loc.localize(random_frames((40, 50, 3), seed=4), verify=True)
    net = build_posenet('mobilenet_v3_small')
    with torch.no_grad():
        net.head.fc_xyz.weight[0, 0] = float('nan')
    path = export_model(net, out_dir=tmp_path, name='nan', resize=40, crop=32, pt2=False).ts_path
    with pytest.raises(NonFiniteOutputError, match='non-finite'):
        Localizer(Relocalizer(path, warmup=1)).localize(random_frames((40, 50, 3)))


def test_pose_round_trips_through_its_matrix():
    q = np.array([0.9, 0.1, -0.3, 0.2])
    q /= np.linalg.norm(q)
    pose = Pose.from_matrix(geometry.pose_to_matrix([1.0, 2.0, 3.0], q))
    np.testing.assert_allclose(pose.position, [1.0, 2.0, 3.0])
    np.testing.assert_allclose(pose.quaternion_wxyz, q, atol=1e-12)
    assert pose.covariance is None


def test_import_posenet_ros_is_light_and_exports_the_entry_points():
    code = ('import sys, posenet_ros; assert "torch" not in sys.modules; '
            'from posenet_ros import Localizer, Relocalizer, read_metadata; '
            'assert "torch" in sys.modules; print(Localizer.__module__, Relocalizer.__module__, '
            'read_metadata.__module__)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ['posenet_ros.localizer', 'posenet_ros.model.relocalizer',
                   'posenet_ros.model.export']
    import posenet_ros
    with pytest.raises(AttributeError, match='no attribute'):
        posenet_ros.NoSuchThing  # noqa: B018
