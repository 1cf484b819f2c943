"""ROS message shapes to the core's numbers and back, without importing rclpy.

Messages are duck-typed: rclpy messages, rosbags' deserialised dataclasses and test doubles all
have the same field names, so one function serves the node, the bag readers and the tests.

- Time: ``builtin_interfaces/Time`` is ``(sec, nanosec)``; the core uses one ``int`` of
  nanoseconds (:func:`stamp_to_ns`, :func:`ns_to_stamp`, :func:`fill_stamp`).
- Poses: ``geometry_msgs`` quaternions are **xyzw**, the core's are **wxyz**
  (:mod:`posenet_ros.core.geometry`). :func:`msg_to_pose` reads a ``Pose``, ``Transform`` or
  anything wrapping one (``PoseStamped``, ``PoseWithCovariance[Stamped]``, ``Odometry``,
  ``TransformStamped``); :func:`fill_pose` writes into the same shapes.
- Topics: :func:`camera_info_topic` is image_transport's rule for the ``CameraInfo`` beside an
  image topic.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from posenet_ros.core.geometry import pose_to_matrix, wxyz_to_xyzw, xyzw_to_wxyz

__all__ = ['stamp_to_ns', 'ns_to_stamp', 'fill_stamp', 'msg_to_pose', 'msg_to_matrix',
           'fill_pose', 'xyzw_pose_to_matrix', 'camera_info_topic', 'TRANSPORTS']

NS_PER_S = 1_000_000_000
#: image_transport plugin names that publish on ``<base topic>/<name>``.
TRANSPORTS = ('compressed', 'compressedDepth', 'theora', 'zstd', 'ffmpeg', 'h264')


def stamp_to_ns(stamp) -> int:
    """Integer nanoseconds of a ROS time.

    ``stamp``: a ``builtin_interfaces/Time`` (``sec``, ``nanosec``; e.g. ``msg.header.stamp``),
    an rclpy ``Time``/``Duration`` (``nanoseconds``), a ``{'sec', 'nanosec'}`` mapping (the
    node's JSON results), or an ``int`` of nanoseconds already.
    """
    if isinstance(stamp, (int, np.integer)):
        return int(stamp)
    if isinstance(stamp, Mapping):
        return int(stamp['sec']) * NS_PER_S + int(stamp['nanosec'])
    if hasattr(stamp, 'nanoseconds'):
        return int(stamp.nanoseconds)
    if hasattr(stamp, 'sec') and hasattr(stamp, 'nanosec'):
        return int(stamp.sec) * NS_PER_S + int(stamp.nanosec)
    raise TypeError(f'not a ROS time (sec and nanosec, or nanoseconds): {stamp!r}')


def ns_to_stamp(t_ns: int) -> tuple[int, int]:
    """``(sec, nanosec)`` of ``t_ns``, with ``0 <= nanosec < 1e9`` as builtin_interfaces wants."""
    sec, nanosec = divmod(int(t_ns), NS_PER_S)
    return sec, nanosec


def fill_stamp(stamp, t_ns: int):
    """Set ``stamp.sec`` and ``stamp.nanosec`` to ``t_ns``; returns ``stamp``."""
    stamp.sec, stamp.nanosec = ns_to_stamp(t_ns)
    return stamp


def _parts(msg):
    """``(point, quaternion)`` fields of the Pose or Transform inside ``msg``."""
    inner = msg
    for _ in range(3):  # Odometry -> PoseWithCovariance -> Pose is the deepest
        if hasattr(inner, 'position') and hasattr(inner, 'orientation'):
            return inner.position, inner.orientation
        if hasattr(inner, 'translation') and hasattr(inner, 'rotation'):
            return inner.translation, inner.rotation
        inner = getattr(inner, 'transform', getattr(inner, 'pose', None))
        if inner is None:
            break
    raise TypeError(f'{type(msg).__name__} holds no Pose or Transform (position/orientation or '
                    'translation/rotation)')


def msg_to_pose(msg) -> tuple[np.ndarray, np.ndarray]:
    """``(position (3,), q wxyz (4,))`` of a pose or transform message, as stored (float64).

    The quaternion is neither normalised nor checked: callers decide what a bad one means.
    """
    p, q = _parts(msg)
    return (np.array([p.x, p.y, p.z], dtype=np.float64),
            np.array([q.w, q.x, q.y, q.z], dtype=np.float64))


def msg_to_matrix(msg) -> np.ndarray:
    """4x4 ``T_parent_child`` of a pose or transform message."""
    return pose_to_matrix(*msg_to_pose(msg))


def fill_pose(msg, position, q_wxyz):
    """Write ``position`` and the wxyz quaternion into a pose or transform message; returns it."""
    p, q = _parts(msg)
    p.x, p.y, p.z = (float(v) for v in np.asarray(position, dtype=np.float64).reshape(3))
    q.x, q.y, q.z, q.w = (float(v) for v in wxyz_to_xyzw(np.asarray(q_wxyz).reshape(4)))
    return msg


def xyzw_pose_to_matrix(values) -> np.ndarray:
    """4x4 transform of ``[x, y, z, qx, qy, qz, qw]`` (ROS order, as in parameters and CLIs)."""
    v = np.asarray(values, dtype=np.float64).reshape(7)
    return pose_to_matrix(v[:3], xyzw_to_wxyz(v[3:]))


def camera_info_topic(image_topic: str) -> str:
    """The ``CameraInfo`` topic of an image topic: ``<ns>/camera_info``.

    image_transport's rule (``getCameraInfoTopic``): the camera_info sits in the namespace of
    the *base* image topic, and a transport publishes on ``<base>/<transport>``. So
    ``/cam/image_raw`` and ``/cam/image_raw/compressed`` both give ``/cam/camera_info``; a
    top-level ``/image`` gives ``/camera_info``.
    """
    parts = image_topic.rstrip('/').split('/')
    if len(parts) > 1 and parts[-2] and parts[-1] in TRANSPORTS:
        parts = parts[:-1]  # <base>/<transport> -> <base>
    return '/'.join([*parts[:-1], 'camera_info'])
