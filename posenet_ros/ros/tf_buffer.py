"""A minimal TF buffer for where tf2_ros is absent (ROS 2 from PyPI has no tf2_ros wheel).

Only what the node needs: :meth:`TfBuffer.lookup_transform` ``(target, source, time, timeout)``
with tf2_ros's meaning (``T_target_source``, returned as a ``geometry_msgs/TransformStamped``),
fed from ``/tf`` and ``/tf_static`` by :class:`TfListener`. Where tf2_ros is installed the node
uses tf2_ros itself; this is the stand-in, not a replacement:

* each edge keeps ``cache_time`` seconds of history; a lookup interpolates every dynamic edge of
  the chain at ``time`` (linear position, slerp rotation), static edges are time-less;
* ``time`` zero means "latest" (each edge's newest value, as tf2's ``Time()`` roughly does);
* a time newer than an edge's newest sample waits up to ``timeout`` for data, then raises
  :class:`ExtrapolationException`; one older than the cache raises at once; unknown or
  unconnected frames raise :class:`LookupException` at once (tf2_ros would wait the timeout).

The arithmetic is plain numpy (no rclpy): tests drive it without ROS.
"""

from __future__ import annotations

import bisect
import threading
import time as _time

import numpy as np

from posenet_ros.core import geometry
from posenet_ros.core.tf_tree import tree_path

__all__ = ['TfBuffer', 'TfListener', 'LookupException', 'ExtrapolationException']


class LookupException(Exception):  # noqa: N818 (tf2_ros's name)
    """Unknown frame, or frames not connected in the tree."""


class ExtrapolationException(Exception):  # noqa: N818 (tf2_ros's name)
    """The requested time is outside an edge's data."""


class _Edge:
    def __init__(self, parent: str, child: str, static: bool):
        self.parent, self.child = parent, child
        self.static = static
        self.stamps: list[int] = []  # ns, sorted
        self.values: list[tuple[np.ndarray, np.ndarray]] = []  # (position, q wxyz)

    def add(self, t_ns: int, pos: np.ndarray, q: np.ndarray, keep_ns: int) -> None:
        if self.static:
            self.stamps, self.values = [t_ns], [(pos, q)]
            return
        i = bisect.bisect_left(self.stamps, t_ns)
        if i < len(self.stamps) and self.stamps[i] == t_ns:
            self.values[i] = (pos, q)
        else:
            self.stamps.insert(i, t_ns)
            self.values.insert(i, (pos, q))
        cut = bisect.bisect_left(self.stamps, self.stamps[-1] - keep_ns)
        if cut:
            del self.stamps[:cut], self.values[:cut]

    def at(self, t_ns: int):
        """(position, q) at ``t_ns``; 0 = newest. Raises ExtrapolationException outside."""
        if self.static or t_ns == 0:
            return self.values[-1]
        if t_ns > self.stamps[-1] or t_ns < self.stamps[0]:
            raise ExtrapolationException(
                f'{self.parent} -> {self.child}: requested {t_ns * 1e-9:.3f} s, data covers '
                f'{self.stamps[0] * 1e-9:.3f} .. {self.stamps[-1] * 1e-9:.3f} s')
        i = bisect.bisect_left(self.stamps, t_ns)
        if self.stamps[i] == t_ns:
            return self.values[i]
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        (p0, q0), (p1, q1) = self.values[i - 1], self.values[i]
        return geometry.interpolate_pose(p0, q0, p1, q1, (t_ns - t0) / (t1 - t0))


class TfBuffer:
    """Edges ``child -> (parent, history)`` and chain look-ups; thread-safe."""

    def __init__(self, cache_time: float = 10.0):
        self._edges: dict[str, _Edge] = {}
        self._cond = threading.Condition()
        self._keep_ns = int(cache_time * 1e9)

    def set_transform(self, parent: str, child: str, t_ns: int, pos, q_wxyz,
                      static: bool = False) -> None:
        """Add ``T_parent_child`` at ``t_ns`` (q wxyz). A frame keeps its first parent."""
        parent, child = parent.lstrip('/'), child.lstrip('/')
        with self._cond:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != static:
                edge = self._edges[child] = _Edge(parent, child, static)
            edge.add(int(t_ns), np.asarray(pos, np.float64), np.asarray(q_wxyz, np.float64),
                     self._keep_ns)
            self._cond.notify_all()

    def matrix(self, target: str, source: str, t_ns: int) -> np.ndarray:
        """``T_target_source`` (4x4) at ``t_ns`` (0 = latest) from what is buffered now."""
        target, source = target.lstrip('/'), source.lstrip('/')
        with self._cond:
            parent_of = {c: e.parent for c, e in self._edges.items()}
            known = set(parent_of) | set(parent_of.values())
            for f in (target, source):
                if f not in known:
                    raise LookupException(f'frame {f!r} is not in TF (known: '
                                          f'{", ".join(sorted(known)) or "none"})')
            try:
                path = tree_path(parent_of, target, source)
            except ValueError as exc:
                raise LookupException(str(exc)) from None
            if path is None:
                raise LookupException(f'frames {target!r} and {source!r} are not connected in '
                                      'TF')
            m = np.eye(4)
            for child, inverted in path:
                p, q = self._edges[child].at(t_ns)
                edge = geometry.pose_to_matrix(p, q)
                m = m @ (geometry.invert(edge) if inverted else edge)
            return m

    def lookup_transform(self, target: str, source: str, time, timeout=None):
        """tf2_ros's call: a ``TransformStamped`` of ``T_target_source`` at ``time``.

        ``time``: rclpy Time (or anything with ``nanoseconds``); ``timeout``: rclpy Duration or
        seconds, the longest wait for data newer than what is buffered.
        """
        from geometry_msgs.msg import TransformStamped

        t_ns = int(getattr(time, 'nanoseconds', time or 0))
        wait = getattr(timeout, 'nanoseconds', None)
        wait = wait * 1e-9 if wait is not None else float(timeout or 0.0)
        deadline = _time.monotonic() + wait
        while True:
            try:
                mat = self.matrix(target, source, t_ns)
                break
            except ExtrapolationException:
                with self._cond:
                    left = deadline - _time.monotonic()
                    if left <= 0:
                        raise
                    self._cond.wait(left)  # woken by every new transform
        pos, q = geometry.matrix_to_pose(mat)
        tf = TransformStamped()
        tf.header.frame_id, tf.child_frame_id = target, source
        tf.header.stamp.sec, tf.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
        tr, r = tf.transform.translation, tf.transform.rotation
        tr.x, tr.y, tr.z = (float(v) for v in pos)
        r.w, r.x, r.y, r.z = (float(v) for v in q)
        return tf

    def add_message(self, msg, static: bool) -> None:
        """Feed one ``tf2_msgs/TFMessage``."""
        for tf in msg.transforms:
            t, r = tf.transform.translation, tf.transform.rotation
            stamp = tf.header.stamp
            self.set_transform(tf.header.frame_id, tf.child_frame_id,
                               stamp.sec * 1_000_000_000 + stamp.nanosec, [t.x, t.y, t.z],
                               [r.w, r.x, r.y, r.z], static)


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
