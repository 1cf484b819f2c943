"""core.transforms and core.ros_conversions: transforms in time, TF trees, stamps, messages.

The series and tree are checked against poses built independently (a constant-rate motion,
where lerp and slerp are exact); the conversions against real message classes: rclpy's
(geometry_msgs, nav_msgs, builtin_interfaces) and the rosbags dataclasses bags deserialise to.
"""

import threading
import time

import numpy as np
import pytest
import transforms3d.euler as te
import transforms3d.quaternions as tq

from posenet_ros.core.errors import ExtrapolationError, InvalidPoseError, TransformLookupError
from posenet_ros.core.geometry import invert, matrix_to_pose, pose_to_matrix
from posenet_ros.core.ros_conversions import (
    camera_info_topic,
    fill_pose,
    fill_stamp,
    msg_to_matrix,
    msg_to_pose,
    ns_to_stamp,
    stamp_to_ns,
    xyzw_pose_to_matrix,
)
from posenet_ros.core.transforms import (
    TfTree,
    TransformSeries,
    compose_chain,
    extrinsic_matrix,
    extrinsic_problem,
)

S = 1_000_000_000


def _yaw(deg, pos=(0.0, 0.0, 0.0)):
    return pose_to_matrix(pos, tq.mat2quat(te.euler2mat(0.0, 0.0, np.radians(deg))))


def _series(**kw):
    """Yaw 10 deg/s and x 1 m/s, sampled at 0, 1, 2 s and then at 10 s (a gap)."""
    s = TransformSeries(name='odom -> base', **kw)
    for t in (0, 1, 2, 10):
        s.add(t * S, *matrix_to_pose(_yaw(10 * t, (t, 0, 0))))
    return s


def _angle_deg(m):
    return np.degrees(np.arctan2(m[1, 0], m[0, 0]))


def test_series_interpolates_within_max_gap_and_refuses_outside():
    s = _series(max_gap_ns=2 * S, tolerance_ns=1_000_000)
    m = pose_to_matrix(*s.at(int(1.25 * S)))
    np.testing.assert_allclose(m[:3, 3], [1.25, 0, 0], atol=1e-12)  # lerp
    assert abs(_angle_deg(m) - 12.5) < 1e-9  # slerp
    # within the tolerance of a sample: that sample as is
    np.testing.assert_allclose(s.at(S + 999_999)[0], [1, 0, 0])
    with pytest.raises(ExtrapolationError, match=r'odom -> base: 5\.000 s falls in a 8\.000 s'):
        s.at(5 * S)
    with pytest.raises(ExtrapolationError, match=r'requested 11\.000 s, data covers 0\.000 \.\. '):
        s.at(11 * S)
    with pytest.raises(ExtrapolationError):
        s.at(-S)
    assert s.span == (0, 10 * S) and len(s) == 4
    # without a max gap any two samples are interpolated (tf2's rule); 0 is the newest value
    free = _series()
    np.testing.assert_allclose(free.at(6 * S)[0], [6, 0, 0], atol=1e-12)
    np.testing.assert_allclose(free.at(0)[0], [10, 0, 0])
    with pytest.raises(ExtrapolationError, match='no data'):
        TransformSeries().at(S)


def test_series_order_duplicates_static_and_history():
    s = TransformSeries(keep_ns=3 * S)
    for t in (4, 2, 3):  # out of order: kept sorted
        s.add(t * S, [t, 0, 0], [1, 0, 0, 0])
    s.add(3 * S, [30, 0, 0], [1, 0, 0, 0])  # the same stamp again: the last recorded wins
    assert s.stamps == [2 * S, 3 * S, 4 * S] and s.at(3 * S)[0][0] == 30
    s.add(6 * S, [6, 0, 0], [1, 0, 0, 0])  # keeps 3 s behind the newest
    assert s.stamps == [3 * S, 4 * S, 6 * S]
    static = TransformSeries(static=True)
    static.add(5, [1, 2, 3], [1, 0, 0, 0])
    static.add(7, [4, 5, 6], [1, 0, 0, 0])
    np.testing.assert_array_equal(static.at(123 * S)[0], [4, 5, 6])  # time-less, newest value
    fixed = TransformSeries.fixed(_yaw(30, (1, 2, 3)))
    np.testing.assert_allclose(compose_chain([(fixed, True)], 99), invert(_yaw(30, (1, 2, 3))),
                               atol=1e-12)


def _robot_tree(**kw):
    """Edges map -> odom (dynamic), odom -> base_link (dynamic), base_link -> camera (static)."""
    tree = TfTree(**kw)
    mount = _yaw(-90, (0.2, 0, 1.0))
    tree.set_transform('base_link', '/camera', 0, *matrix_to_pose(mount), static=True)
    for t in (0, 1):
        tree.set_transform('map', 'odom', t * S, *matrix_to_pose(_yaw(5 * t, (t, 0, 0))))
        tree.set_transform('odom', 'base_link', t * S,
                           *matrix_to_pose(_yaw(20 * t, (0, 2 * t, 0))))
    return tree, mount


def test_tree_walks_and_composes_both_ways():
    tree, mount = _robot_tree()
    truth = _yaw(2.5, (0.5, 0, 0)) @ _yaw(10, (0, 1, 0)) @ mount  # T_map_camera at 0.5 s
    np.testing.assert_allclose(tree.matrix('map', 'camera', S // 2), truth, atol=1e-12)
    np.testing.assert_allclose(tree.matrix('camera', 'map', S // 2), invert(truth), atol=1e-12)
    assert tree.path_frames('camera', 'odom') == ['camera', 'base_link', 'odom']
    assert tree.path('camera', 'odom') == [('camera', True), ('base_link', True)]
    assert tree.frames() == ['base_link', 'camera', 'map', 'odom']
    np.testing.assert_allclose(tree.matrix('odom', 'odom'), np.eye(4))
    with pytest.raises(TransformLookupError, match=r"'world' is not in the TF tree .*map, odom"):
        tree.matrix('world', 'camera')
    tree.set_transform('earth', 'moon', 0, [1, 0, 0], [1, 0, 0, 0])
    with pytest.raises(TransformLookupError, match="'map' and 'moon' are not connected"):
        tree.matrix('map', 'moon')
    with pytest.raises(ExtrapolationError, match='map -> odom'):
        tree.matrix('map', 'camera', 2 * S)


def test_tree_parents_strict_for_recordings_replaced_when_live():
    strict = TfTree(strict=True)
    strict.set_transform('odom', 'base_link', 0, [0, 0, 0], [1, 0, 0, 0])
    with pytest.raises(TransformLookupError, match="'base_link' has two parents"):
        strict.set_transform('map', 'base_link', 1, [0, 0, 0], [1, 0, 0, 0])
    live = TfTree()
    live.set_transform('odom', 'base_link', 0, [0, 0, 0], [1, 0, 0, 0])
    live.set_transform('map', 'base_link', 1, [1, 0, 0], [1, 0, 0, 0])
    assert live.parent_of() == {'base_link': 'map'}
    live.set_transform('base_link', 'map', 1, [1, 0, 0], [1, 0, 0, 0])  # a cycle
    with pytest.raises(TransformLookupError, match='cycle'):
        live.matrix('map', 'base_link')


def test_tree_lookup_waits_for_data_then_gives_up():
    tree, _ = _robot_tree()

    def publish_later():
        time.sleep(0.2)
        tree.set_transform('map', 'odom', 2 * S, *matrix_to_pose(_yaw(10, (2, 0, 0))))
        tree.set_transform('odom', 'base_link', 2 * S, *matrix_to_pose(_yaw(40, (0, 4, 0))))

    worker = threading.Thread(target=publish_later)
    t0 = time.monotonic()
    worker.start()
    m = tree.lookup('map', 'base_link', int(1.5 * S), timeout=5.0)
    worker.join()
    assert 0.15 < time.monotonic() - t0 < 4.0
    np.testing.assert_allclose(m, _yaw(7.5, (1.5, 0, 0)) @ _yaw(30, (0, 3, 0)), atol=1e-12)
    t0 = time.monotonic()
    with pytest.raises(ExtrapolationError):
        tree.lookup('map', 'base_link', 9 * S, timeout=0.2)
    assert 0.15 < time.monotonic() - t0 < 2.0
    with pytest.raises(TransformLookupError):  # unknown frames do not wait
        tree.lookup('map', 'nowhere', 9 * S, timeout=30.0)


def test_stamps_every_shape():
    from builtin_interfaces.msg import Time as TimeMsg
    from rclpy.duration import Duration
    from rclpy.time import Time

    t_ns = 1_700_000_123_456_789_012
    msg = fill_stamp(TimeMsg(), t_ns)
    assert (msg.sec, msg.nanosec) == (1_700_000_123, 456_789_012) == ns_to_stamp(t_ns)
    assert stamp_to_ns(msg) == t_ns
    assert stamp_to_ns(Time.from_msg(msg)) == t_ns
    assert stamp_to_ns(Duration(seconds=1.5)) == 1_500_000_000
    assert stamp_to_ns({'sec': 3, 'nanosec': 7}) == 3 * S + 7
    assert stamp_to_ns(np.int64(42)) == 42
    assert ns_to_stamp(-1) == (-1, S - 1)  # nanosec stays in [0, 1e9)
    with pytest.raises(TypeError, match='not a ROS time'):
        stamp_to_ns(1.5)


def test_poses_in_and_out_of_every_message_shape():
    from geometry_msgs.msg import (
        Pose,
        PoseStamped,
        PoseWithCovarianceStamped,
        Transform,
        TransformStamped,
    )
    from nav_msgs.msg import Odometry

    m = _yaw(30, (1, 2, 3)) @ pose_to_matrix([0, 0, 0], tq.axangle2quat([1, 0, 0], 0.4))
    p, q = matrix_to_pose(m)
    for cls in (Pose, PoseStamped, PoseWithCovarianceStamped, Odometry, Transform,
                TransformStamped):
        msg = fill_pose(cls(), p, q)
        got_p, got_q = msg_to_pose(msg)
        np.testing.assert_allclose(got_p, p)
        np.testing.assert_allclose(got_q, q)
        np.testing.assert_allclose(msg_to_matrix(msg), m, atol=1e-12)
    ros = fill_pose(Pose(), p, q).orientation  # ROS order is xyzw
    assert [ros.x, ros.y, ros.z, ros.w] == pytest.approx([q[1], q[2], q[3], q[0]])
    np.testing.assert_allclose(xyzw_pose_to_matrix([*p, q[1], q[2], q[3], q[0]]), m, atol=1e-12)
    with pytest.raises(TypeError, match='holds no Pose or Transform'):
        msg_to_pose(fill_stamp(type('Stamp', (), {})(), 0))


def test_tf_messages_from_a_bag_feed_the_tree():
    """The rosbags dataclasses a bag deserialises to have the same shape as rclpy's."""
    from rosbags.typesys import Stores, get_typestore

    T = get_typestore(Stores.ROS2_HUMBLE).types
    p, q = matrix_to_pose(_yaw(45, (1, 0, 0)))
    tfs = [T['geometry_msgs/msg/TransformStamped'](
        header=T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=s, nanosec=0),
                                        frame_id='/odom'),
        child_frame_id='base_link',
        transform=T['geometry_msgs/msg/Transform'](
            translation=T['geometry_msgs/msg/Vector3'](x=s * p[0], y=p[1], z=p[2]),
            rotation=T['geometry_msgs/msg/Quaternion'](x=q[1], y=q[2], z=q[3], w=q[0])))
        for s in (1, 3)]
    tree = TfTree()
    tree.add_message(T['tf2_msgs/msg/TFMessage'](transforms=tfs), static=False)
    np.testing.assert_allclose(tree.matrix('odom', 'base_link', 2 * S), _yaw(45, (2, 0, 0)),
                               atol=1e-12)


@pytest.mark.parametrize('image, info', [
    ('/camera/image_raw', '/camera/camera_info'),
    ('/camera/image_raw/compressed', '/camera/camera_info'),
    ('/robot/front/image_rect_color/theora', '/robot/front/camera_info'),
    ('/cam/compressed', '/camera_info'),  # transport of the base topic /cam
    ('/image', '/camera_info'),
    ('/compressed', '/camera_info'),  # a base topic that happens to be called so
    ('image_raw', 'camera_info'),  # relative names stay relative
    ('/camera/image_raw/', '/camera/camera_info'),
])
def test_camera_info_topic_follows_image_transport(image, info):
    assert camera_info_topic(image) == info


def test_one_extrinsic_validation():
    good = [0.2, 0.0, 1.0, -0.541675, 0.541675, -0.454519, 0.454519]
    assert extrinsic_problem(good) is None and extrinsic_problem([]) is None
    assert extrinsic_matrix([]) is None and extrinsic_matrix(None) is None
    m = extrinsic_matrix(good)
    np.testing.assert_allclose(extrinsic_matrix(m), m)  # a rigid 4x4 is accepted as is
    np.testing.assert_allclose(m, xyzw_pose_to_matrix(good))
    for bad, why in (([0.0] * 6, '7 finite'), ([0, 0, np.nan, 0, 0, 0, 1], '7 finite'),
                     ('seven', '7 finite'), ([0, 0, 0, 0, 0, 0, 2.0], 'must be unit'),
                     ([0.0] * 7, 'norm is 0.0000'), (np.diag([2.0, 1, 1, 1]), 'orthonormal')):
        assert why in extrinsic_problem(bad), bad
        with pytest.raises(InvalidPoseError, match='camera_in_base'):
            extrinsic_matrix(bad)
    assert 'mount is not a rigid' in extrinsic_problem([0] * 7, name='mount')
