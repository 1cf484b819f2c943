"""The node's TF stand-in where tf2_ros is absent (ROS 2 from PyPI has no tf2_ros wheel).

Only what the node needs: :meth:`TfBuffer.lookup_transform` ``(target, source, time, timeout)``
with tf2_ros's meaning (``T_target_source``, returned as a ``geometry_msgs/TransformStamped``),
fed from ``/tf`` and ``/tf_static`` by :class:`TfListener`. Where tf2_ros is installed the node
uses tf2_ros itself; this is the stand-in, not a replacement. The tree and its arithmetic are
:class:`posenet_ros.core.transforms.TfTree` (tests drive it without ROS):

* each edge keeps ``cache_time`` seconds of history; a lookup interpolates every dynamic edge of
  the chain at ``time`` (linear position, slerp rotation), static edges are time-less;
* ``time`` zero means "latest" (each edge's newest value, as tf2's ``Time()`` roughly does);
* a time newer than an edge's newest sample waits up to ``timeout`` for data, then raises
  :class:`ExtrapolationException`; one older than the cache raises at once; unknown or
  unconnected frames raise :class:`LookupException` at once (tf2_ros would wait the timeout).
"""

from __future__ import annotations

from posenet_ros.core.errors import ExtrapolationError, TransformLookupError
from posenet_ros.core.geometry import matrix_to_pose
from posenet_ros.core.ros_conversions import fill_pose, fill_stamp, stamp_to_ns
from posenet_ros.core.transforms import TfTree

__all__ = ['TfBuffer', 'TfListener', 'LookupException', 'ExtrapolationException']

# tf2_ros's exception names, for code written against tf2_ros.
LookupException = TransformLookupError
ExtrapolationException = ExtrapolationError


class TfBuffer(TfTree):
    """A :class:`~posenet_ros.core.transforms.TfTree` answering tf2_ros's ``lookup_transform``."""

    def __init__(self, cache_time: float = 10.0):
        super().__init__(cache_time=cache_time)

    def lookup_transform(self, target: str, source: str, time, timeout=None):
        """tf2_ros's call: a ``TransformStamped`` of ``T_target_source`` at ``time``.

        ``time``: rclpy Time, a ``builtin_interfaces/Time`` or ns (None or 0: latest);
        ``timeout``: rclpy Duration or seconds, the longest wait for data newer than what is
        buffered.
        """
        from geometry_msgs.msg import TransformStamped

        t_ns = 0 if time is None else stamp_to_ns(time)
        wait = stamp_to_ns(timeout) * 1e-9 if hasattr(timeout, 'nanoseconds') else \
            float(timeout or 0.0)
        mat = self.lookup(target, source, t_ns, wait)
        tf = TransformStamped()
        tf.header.frame_id, tf.child_frame_id = target, source
        fill_stamp(tf.header.stamp, t_ns)
        return fill_pose(tf, *matrix_to_pose(mat))


class TfListener:
    """Subscribes ``/tf`` and ``/tf_static`` of ``node`` into ``buffer`` (tf2_ros's QoS)."""

    def __init__(self, buffer: TfBuffer, node):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from tf2_msgs.msg import TFMessage

        dyn = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                         history=HistoryPolicy.KEEP_LAST, durability=DurabilityPolicy.VOLATILE)
        static = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            history=HistoryPolicy.KEEP_LAST,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.buffer = buffer
        self._subs = [
            node.create_subscription(TFMessage, '/tf', lambda m: buffer.add_message(m, False),
                                     dyn),
            node.create_subscription(TFMessage, '/tf_static',
                                     lambda m: buffer.add_message(m, True), static),
        ]
