"""Sim(3) estimation (Umeyama, robust re-fitting) and mapping of poses by a similarity."""

import numpy as np
import pytest

from posenet_ros.core.errors import AlignmentError
from posenet_ros.core.geometry import invert, matrix_to_quat, pose_to_matrix, rotation_error_deg
from posenet_ros.sfm.align import (
    Sim3,
    align_poses,
    estimate_sim3,
    residual_stats,
    scale_from_distance,
    umeyama,
)

K = np.array([[200.0, 0, 159.5], [0, 200.0, 119.5], [0, 0, 1]])


def _rot(rng):
    q = rng.normal(size=4)
    return pose_to_matrix(np.zeros(3), q / np.linalg.norm(q))[:3, :3]


def _sim(rng, scale=2.5):
    return Sim3(scale, _rot(rng), rng.normal(size=3) * 10)


def _project(position, quat, X):
    T_cam_map = invert(pose_to_matrix(position, quat))
    x = T_cam_map[:3, :3] @ X + T_cam_map[:3, 3]
    uv = K @ x
    return uv[:2] / uv[2]


def test_umeyama_recovers_a_known_similarity():
    rng = np.random.default_rng(0)
    truth = _sim(rng)
    src = rng.normal(size=(12, 3)) * 3
    est = umeyama(src, truth.apply(src))
    assert est.scale == pytest.approx(truth.scale, rel=1e-9)
    np.testing.assert_allclose(est.rotation, truth.rotation, atol=1e-9)
    np.testing.assert_allclose(est.translation, truth.translation, atol=1e-8)
    assert np.linalg.det(est.rotation) == pytest.approx(1.0)
    back = est.inverse().apply(truth.apply(src))
    np.testing.assert_allclose(back, src, atol=1e-9)
    np.testing.assert_allclose(est.matrix()[:3, :3], truth.scale * truth.rotation, atol=1e-8)


def test_umeyama_without_scale_and_with_noise():
    rng = np.random.default_rng(1)
    truth = Sim3(1.0, _rot(rng), [1.0, 2.0, 3.0])
    src = rng.normal(size=(200, 3)) * 5
    dst = truth.apply(src) + rng.normal(scale=0.01, size=src.shape)
    est = umeyama(src, dst, with_scale=False)
    assert est.scale == 1.0
    stats = residual_stats(est, src, dst)
    assert stats['n'] == 200
    assert 0.005 < stats['median'] < 0.03  # ~ noise level, 3D chi distribution
    assert stats['rmse'] <= stats['max']


def test_robust_fit_rejects_gross_outliers_that_spoil_least_squares():
    rng = np.random.default_rng(2)
    truth = _sim(rng, 0.7)
    src = rng.normal(size=(30, 3)) * 4
    dst = truth.apply(src) + rng.normal(scale=0.005, size=src.shape)
    dst[3] += [5.0, 0, 0]  # a mistyped survey point
    dst[17] += [0, -8.0, 2.0]  # a mis-registered frame
    plain, _ = estimate_sim3(src, dst, robust=False)
    robust, inliers = estimate_sim3(src, dst, robust=True)
    assert not inliers[3] and not inliers[17] and inliers.sum() >= 26
    assert abs(robust.scale - truth.scale) < 1e-3
    assert abs(plain.scale - truth.scale) > 5e-3  # what the outliers do without rejection
    good = residual_stats(robust, src[inliers], dst[inliers])
    assert good['max'] < 0.05


def test_degenerate_inputs_are_refused_with_a_reason():
    line = np.outer(np.arange(5.0), [1.0, 2.0, 0.5])
    with pytest.raises(AlignmentError, match='one straight line'):
        umeyama(line, line * 2)
    with pytest.raises(AlignmentError, match='at least 3'):
        umeyama(line[:2], line[:2])
    with pytest.raises(AlignmentError, match='as many'):
        umeyama(line, line[:4])
    with pytest.raises(AlignmentError, match='coincide'):
        umeyama(np.ones((4, 3)), np.ones((4, 3)))


def test_orientations_fix_the_rotation_of_a_straight_trajectory():
    rng = np.random.default_rng(3)
    truth = _sim(rng, 3.0)
    src_p = np.outer(np.linspace(0, 4, 8), [1.0, 0.3, -0.2])  # a straight drive
    src_q = np.array([matrix_to_quat(_rot(rng)) for _ in src_p])
    dst = [truth.apply_pose(p, q) for p, q in zip(src_p, src_q)]
    dst_p = np.array([d[0] for d in dst])
    dst_q = np.array([d[1] for d in dst])
    with pytest.raises(AlignmentError, match='straight line'):
        align_poses(src_p, dst_p)
    est, _ = align_poses(src_p, dst_p, src_q, dst_q)
    assert est.scale == pytest.approx(3.0, rel=1e-9)
    np.testing.assert_allclose(est.rotation, truth.rotation, atol=1e-9)


def test_mapped_pose_sees_the_mapped_world_at_the_same_pixel():
    rng = np.random.default_rng(4)
    sim = _sim(rng, 4.0)
    position = np.array([1.0, -2.0, 0.5])
    quat = matrix_to_quat(_rot(rng))
    T = pose_to_matrix(position, quat)
    X = T[:3, :3] @ np.array([0.3, -0.2, 2.0]) + position  # 2 m in front of the camera
    uv = _project(position, quat, X)
    pos2, quat2 = sim.apply_pose(position, quat)
    np.testing.assert_allclose(_project(pos2, quat2, sim.apply(X)), uv, atol=1e-9)
    assert quat2[0] >= 0
    # A rotation-only error in the mapping would move the pixel: the test can fail.
    wrong = Sim3(sim.scale, sim.rotation @ pose_to_matrix(np.zeros(3), [0.99, 0.1, 0, 0])[:3, :3],
                 sim.translation)
    pos3, quat3 = wrong.apply_pose(position, quat)
    assert np.linalg.norm(_project(pos3, quat3, sim.apply(X)) - uv) > 5
    assert rotation_error_deg(quat2, quat3) > 5


def test_scale_from_distance():
    sim = scale_from_distance([0, 0, 0], [0, 3, 4], 10.0)
    assert sim.scale == pytest.approx(2.0)
    np.testing.assert_allclose(sim.apply([1.0, 1.0, 1.0]), [2.0, 2.0, 2.0])
    with pytest.raises(AlignmentError, match='positive'):
        scale_from_distance([0, 0, 0], [1, 0, 0], 0.0)
    with pytest.raises(AlignmentError, match='same SfM position'):
        scale_from_distance([1, 0, 0], [1, 0, 0], 2.0)
