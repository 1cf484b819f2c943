"""The pose convention and metrics against transforms3d, on random rotations and both signs."""

import numpy as np
import pytest
import transforms3d.euler as te
import transforms3d.quaternions as tq

from posenet_ros.core import geometry as g
from posenet_ros.core.errors import InvalidPoseError

RNG = np.random.default_rng(0)


def random_quats(n):
    q = RNG.normal(size=(n, 4))
    return q / np.linalg.norm(q, axis=1, keepdims=True)


@pytest.mark.parametrize('q', random_quats(20))
def test_matrix_round_trip_matches_transforms3d(q):
    rot = g.quat_to_matrix(q)
    np.testing.assert_allclose(rot, tq.quat2mat(q), atol=1e-12)
    q_back = g.matrix_to_quat(rot)
    assert q_back[0] >= 0
    # Same rotation, canonical sign: equal to q or -q.
    assert min(np.abs(q_back - q).max(), np.abs(q_back + q).max()) < 1e-9
    # -q gives the identical matrix and the identical canonical quaternion.
    np.testing.assert_allclose(g.matrix_to_quat(g.quat_to_matrix(-q)), q_back, atol=1e-12)


def test_canonicalize_hemisphere_and_norm():
    qs = random_quats(50) * RNG.uniform(0.1, 5.0, size=(50, 1))
    out = g.canonicalize_quaternion(qs)
    assert np.all(out[:, 0] >= 0)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-12)
    with pytest.raises(InvalidPoseError):
        g.normalize_quaternion([0, 0, 0, 0])
    with pytest.raises(InvalidPoseError):
        g.normalize_quaternion([np.nan, 0, 0, 1])


def test_ros_order_conversion():
    q_wxyz = np.array([0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(g.wxyz_to_xyzw(q_wxyz), [0.2, 0.3, 0.4, 0.1])
    np.testing.assert_array_equal(g.xyzw_to_wxyz(g.wxyz_to_xyzw(q_wxyz)), q_wxyz)


def test_pose_maps_camera_points_into_map():
    # Camera at (1, 2, 3) looking along map +x: optical z (forward) = map +x,
    # optical x (right) = map -y, optical y (down) = map -z (REP 103 optical frame).
    rot = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)
    q = g.matrix_to_quat(rot)
    t_map_cam = g.pose_to_matrix([1, 2, 3], q)
    point_ahead = g.transform_points(t_map_cam, [[0, 0, 2]])[0]
    np.testing.assert_allclose(point_ahead, [3, 2, 3], atol=1e-12)
    right = g.transform_points(t_map_cam, [[1, 0, 0]])[0]
    np.testing.assert_allclose(right, [1, 1, 3], atol=1e-12)


def test_compose_and_invert():
    for _ in range(10):
        a = g.pose_to_matrix(RNG.normal(size=3), random_quats(1)[0])
        b = g.pose_to_matrix(RNG.normal(size=3), random_quats(1)[0])
        np.testing.assert_allclose(g.compose(a, g.invert(a)), np.eye(4), atol=1e-12)
        np.testing.assert_allclose(g.invert(g.compose(a, b)), g.invert(b) @ g.invert(a),
                                   atol=1e-12)
        np.testing.assert_allclose(g.invert(a), np.linalg.inv(a), atol=1e-12)
        pos, q = g.matrix_to_pose(a)
        np.testing.assert_allclose(g.pose_to_matrix(pos, q), a, atol=1e-12)


def test_rotation_error_sign_invariant_and_exact():
    q1 = random_quats(30)
    angle = np.radians(RNG.uniform(0, 179, size=30))
    axis = RNG.normal(size=(30, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    delta = np.array([tq.axangle2quat(ax, an) for ax, an in zip(axis, angle)])
    q2 = np.array([tq.qmult(a, d) for a, d in zip(q1, delta)])
    np.testing.assert_allclose(g.rotation_error_deg(q1, q2), np.degrees(angle), atol=1e-6)
    np.testing.assert_allclose(g.rotation_error_deg(q1, -q2), np.degrees(angle), atol=1e-6)
    assert g.rotation_error_deg(q1[0], -q1[0]) == pytest.approx(0.0, abs=1e-6)


def test_translation_error():
    assert g.translation_error([0, 0, 0], [3, 4, 0]) == pytest.approx(5.0)
    np.testing.assert_allclose(g.translation_error(np.zeros((2, 3)), [[1, 0, 0], [0, 2, 0]]),
                               [1, 2])


def test_slerp_midpoint_and_short_arc():
    q0 = te.euler2quat(0, 0, 0)
    q1 = te.euler2quat(0, 0, np.radians(90))
    mid = g.slerp(q0, q1, 0.5)
    assert g.rotation_error_deg(mid, te.euler2quat(0, 0, np.radians(45))) < 1e-6
    # Interpolating towards -q1 must take the same (short) path.
    assert g.rotation_error_deg(g.slerp(q0, -q1, 0.5), mid) < 1e-6
    pos, _ = g.interpolate_pose([0, 0, 0], q0, [2, 0, 0], q1, 0.25)
    np.testing.assert_allclose(pos, [0.5, 0, 0])
