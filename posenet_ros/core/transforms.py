"""Transforms in time and TF trees, for every TF consumer here (no rclpy).

- :class:`TransformSeries`: one rigid transform over time (or a static one), looked up with
  linear position / slerp rotation interpolation, an exactness tolerance and a max gap.
- :class:`TfTree`: frames joined by series edges; the path between two frames
  (:func:`tree_path`) and the product of its edges at a time (:func:`compose_chain`).
- :func:`extrinsic_problem` / :func:`extrinsic_matrix`: the one validation of a camera mount
  given by hand (``camera_in_base``).

Users: the bag reader (a pose topic's series; the ``--tf MAP CAM`` chain of ``/tf`` +
``/tf_static``; the ``/tf_static`` camera mount, :mod:`posenet_ros.datasets.bagio`) and the
node's TF stand-in (:mod:`posenet_ros.ros.tf_buffer`).

Conventions: an edge ``child`` with parent ``parent`` holds ``T_parent_child`` (maps child
coordinates into the parent frame); quaternions are wxyz; stamps are int nanoseconds; a lookup
time of :data:`LATEST` (0) means each edge's newest value, as tf2's ``Time()``.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Mapping

import numpy as np

from posenet_ros.core.errors import ExtrapolationError, InvalidPoseError, TransformLookupError
from posenet_ros.core.geometry import interpolate_pose, invert, matrix_to_pose, pose_to_matrix
from posenet_ros.core.ros_conversions import msg_to_pose, stamp_to_ns, xyzw_pose_to_matrix

__all__ = ['LATEST', 'QUAT_TOLERANCE', 'TransformSeries', 'TfTree', 'ancestors', 'tree_path',
           'compose_chain', 'strip_frame', 'extrinsic_problem', 'extrinsic_matrix']

LATEST = 0
#: |q| of a hand-written extrinsic may differ from 1 by this much (7 printed digits are fine;
#: a typo is not).
QUAT_TOLERANCE = 1e-3


def strip_frame(frame: str) -> str:
    """TF frame id without a leading '/' (tf2 ignores it too)."""
    return frame[1:] if frame.startswith('/') else frame


class TransformSeries:
    """``T_parent_child`` over time: samples ``(position, q wxyz)`` at sorted int-ns stamps.

    :meth:`at` returns a sample within ``tolerance_ns`` of the time as is, else interpolates
    the two samples around it when they are at most ``max_gap_ns`` apart (None: any gap), else
    raises :class:`ExtrapolationError`. A ``static`` series is time-less: the last value added.
    ``keep_ns`` bounds the history kept behind the newest sample (None: all of it). ``hold_ns``:
    the newest sample stays valid this long after its stamp (None: not at all), for a transform
    published as valid until the next one (a future-dated ``map -> odom``).
    """

    def __init__(self, static: bool = False, *, max_gap_ns: int | None = None,
                 tolerance_ns: int = 0, keep_ns: int | None = None, name: str = 'transform',
                 hold_ns: int | None = None):
        self.static = static
        self.max_gap_ns, self.tolerance_ns, self.keep_ns = max_gap_ns, int(tolerance_ns), keep_ns
        self.hold_ns = hold_ns
        self.name = name
        self.stamps: list[int] = []
        self.values: list[tuple[np.ndarray, np.ndarray]] = []

    @classmethod
    def fixed(cls, matrix: np.ndarray, name: str = 'transform') -> TransformSeries:
        """A static series of one 4x4 transform."""
        series = cls(static=True, name=name)
        series.add(LATEST, *matrix_to_pose(matrix))
        return series

    def __len__(self) -> int:
        return len(self.stamps)

    @property
    def span(self) -> tuple[int, int] | None:
        """``(first, last)`` stamp (ns), None when empty."""
        return (self.stamps[0], self.stamps[-1]) if self.stamps else None

    def add(self, t_ns: int, position, q_wxyz) -> None:
        """Add a sample; one at a stamp already held replaces it (the last recorded wins)."""
        value = (np.asarray(position, np.float64).reshape(3),
                 np.asarray(q_wxyz, np.float64).reshape(4))
        t_ns = int(t_ns)
        if self.static:
            self.stamps, self.values = [t_ns], [value]
            return
        i = bisect.bisect_left(self.stamps, t_ns)
        if i < len(self.stamps) and self.stamps[i] == t_ns:
            self.values[i] = value
        else:
            self.stamps.insert(i, t_ns)
            self.values.insert(i, value)
        if self.keep_ns is not None:
            cut = bisect.bisect_left(self.stamps, self.stamps[-1] - self.keep_ns)
            if cut:
                del self.stamps[:cut], self.values[:cut]

    def at(self, t_ns: int = LATEST) -> tuple[np.ndarray, np.ndarray]:
        """``(position, q wxyz)`` at ``t_ns``; :class:`ExtrapolationError` where there is none."""
        if not self.values:
            raise ExtrapolationError(f'{self.name}: no data')
        if self.static or t_ns == LATEST:
            return self.values[-1]
        st = self.stamps
        i = bisect.bisect_left(st, t_ns)
        for j in (i - 1, i):  # an (almost) exact sample needs no partner
            if 0 <= j < len(st) and abs(st[j] - t_ns) <= self.tolerance_ns:
                return self.values[j]
        if i == len(st) and self.hold_ns is not None and t_ns - st[-1] <= self.hold_ns:
            return self.values[-1]
        if i == 0 or i == len(st):
            raise ExtrapolationError(
                f'{self.name}: requested {t_ns * 1e-9:.3f} s, data covers {st[0] * 1e-9:.3f} .. '
                f'{st[-1] * 1e-9:.3f} s')
        t0, t1 = st[i - 1], st[i]
        if self.max_gap_ns is not None and t1 - t0 > self.max_gap_ns:
            raise ExtrapolationError(
                f'{self.name}: {t_ns * 1e-9:.3f} s falls in a {(t1 - t0) * 1e-9:.3f} s gap '
                f'between samples (max_gap {self.max_gap_ns * 1e-9:.3f} s)')
        (p0, q0), (p1, q1) = self.values[i - 1], self.values[i]
        return interpolate_pose(p0, q0, p1, q1, (t_ns - t0) / (t1 - t0))


def compose_chain(chain, t_ns: int = LATEST) -> np.ndarray:
    """Product of ``[(series, inverted), ...]`` at ``t_ns``: each edge or its inverse, in order."""
    mat = np.eye(4)
    for series, inverted in chain:
        edge = pose_to_matrix(*series.at(t_ns))
        mat = mat @ (invert(edge) if inverted else edge)
    return mat


def ancestors(parent_of: Mapping[str, str], frame: str) -> list[str]:
    """``[frame, parent, grandparent, ..., root]``; :class:`TransformLookupError` on a cycle."""
    chain = [frame]
    while chain[-1] in parent_of:
        chain.append(parent_of[chain[-1]])
        if len(chain) > len(parent_of) + 1:
            raise TransformLookupError(f'the TF tree has a cycle through {frame!r}')
    return chain


def tree_path(parent_of: Mapping[str, str], target: str,
              source: str) -> list[tuple[str, bool]] | None:
    """The edges whose product is ``T_target_source``, or None when the frames are unconnected.

    ``[(child, inverted), ...]`` in multiplication order: from ``target`` up to the common
    ancestor (each edge inverted), then down to ``source``.
    """
    up_t, up_s = ancestors(parent_of, target), ancestors(parent_of, source)
    common = next((f for f in up_t if f in up_s), None)
    if common is None:
        return None
    return ([(c, True) for c in up_t[:up_t.index(common)]]
            + [(c, False) for c in reversed(up_s[:up_s.index(common)])])


class TfTree:
    """Frames joined by :class:`TransformSeries` edges (each child has one parent); thread-safe.

    ``cache_time``, ``max_gap``, ``tolerance`` (s) configure every edge's series. ``strict``:
    a second parent for a frame is an error (a recording must hold one tree); otherwise the
    newest parent replaces the edge, as when a live publisher re-parents a frame (an edge
    switching between static and dynamic is replaced too).
    """

    def __init__(self, cache_time: float | None = None, max_gap: float | None = None,
                 tolerance: float = 0.0, strict: bool = False):
        def ns(s):
            return None if s is None else int(round(s * 1e9))

        self._series_args = {'keep_ns': ns(cache_time), 'max_gap_ns': ns(max_gap),
                             'tolerance_ns': ns(tolerance)}
        self.strict = strict
        self._edges: dict[str, tuple[str, TransformSeries]] = {}
        self._cond = threading.Condition()  # guards _edges; notified on every new sample

    def set_transform(self, parent: str, child: str, t_ns: int, position, q_wxyz,
                      static: bool = False) -> None:
        """Add ``T_parent_child`` at ``t_ns`` (q wxyz)."""
        parent, child = strip_frame(parent), strip_frame(child)
        with self._cond:
            edge = self._edges.get(child)
            if edge is not None and edge[0] != parent and self.strict:
                raise TransformLookupError(f'frame {child!r} has two parents ({edge[0]!r} and '
                                           f'{parent!r}); TF needs a tree')
            if edge is None or (not self.strict and (edge[0] != parent
                                                      or edge[1].static != static)):
                edge = self._edges[child] = (parent, TransformSeries(
                    static, name=f'{parent} -> {child}', **self._series_args))
            edge[1].add(t_ns, position, q_wxyz)
            self._cond.notify_all()

    def add_message(self, msg, static: bool, stamp_ns=None) -> None:
        """Add every transform of a ``tf2_msgs/TFMessage`` (``/tf``, or ``/tf_static``).

        ``stamp_ns(header) -> int``: the sample time of a transform (default its header stamp).
        """
        for tf in msg.transforms:
            t_ns = stamp_to_ns(tf.header.stamp) if stamp_ns is None else stamp_ns(tf.header)
            self.set_transform(tf.header.frame_id, tf.child_frame_id, t_ns, *msg_to_pose(tf),
                               static=static)

    def parent_of(self) -> dict[str, str]:
        """``{child: parent}`` of every edge."""
        with self._cond:
            return {c: p for c, (p, _) in self._edges.items()}

    def frames(self) -> list[str]:
        """Every frame of the tree, sorted."""
        parent_of = self.parent_of()
        return sorted(set(parent_of) | set(parent_of.values()))

    def series(self, child: str) -> TransformSeries:
        """The series of the edge ``parent -> child``."""
        return self._edges[strip_frame(child)][1]

    def path(self, target: str, source: str) -> list[tuple[str, bool]]:
        """:func:`tree_path` of ``T_target_source``; :class:`TransformLookupError` if none."""
        target, source = strip_frame(target), strip_frame(source)
        parent_of = self.parent_of()
        known = self.frames()
        for f in (target, source):
            if f not in known:
                raise TransformLookupError(f'frame {f!r} is not in the TF tree (frames: '
                                           f'{", ".join(known) or "none"})')
        path = tree_path(parent_of, target, source)
        if path is None:
            raise TransformLookupError(f'frames {target!r} and {source!r} are not connected in '
                                       f'the TF tree (frames: {", ".join(known)})')
        return path

    def path_frames(self, target: str, source: str) -> list[str]:
        """The frames from ``target`` to ``source`` along :meth:`path`, both included."""
        names = [strip_frame(target)]
        for child, inverted in self.path(target, source):
            names.append(self._edges[child][0] if inverted else child)
        return names

    def chain(self, target: str, source: str) -> list[tuple[TransformSeries, bool]]:
        """``[(series, inverted), ...]`` whose :func:`compose_chain` is ``T_target_source``."""
        return [(self._edges[c][1], inverted) for c, inverted in self.path(target, source)]

    def matrix(self, target: str, source: str, t_ns: int = LATEST) -> np.ndarray:
        """``T_target_source`` (4x4) at ``t_ns`` from what is held now."""
        with self._cond:
            return compose_chain(self.chain(target, source), t_ns)

    def lookup(self, target: str, source: str, t_ns: int = LATEST,
               timeout: float = 0.0) -> np.ndarray:
        """:meth:`matrix`, waiting up to ``timeout`` s for data when ``t_ns`` is not covered yet.

        Unknown or unconnected frames raise at once (tf2_ros would wait the timeout).
        """
        deadline = time.monotonic() + max(float(timeout), 0.0)
        with self._cond:
            while True:
                try:
                    return self.matrix(target, source, t_ns)
                except ExtrapolationError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise
                    self._cond.wait(left)  # woken by every new sample


def extrinsic_problem(value, name: str = 'camera_in_base') -> str | None:
    """Why ``value`` is not a rigid camera mount ``T_base_camera`` (None: it is, or is unset).

    Empty (``[]``/None) is unset. Otherwise 7 finite numbers ``[x, y, z, qx, qy, qz, qw]``
    (ROS order) whose quaternion is unit within :data:`QUAT_TOLERANCE`, or a rigid 4x4 matrix.
    """
    if value is None:
        return None
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.full(1, np.nan)  # not numbers: reported below like any other wrong value
    if arr.size == 0:
        return None
    if arr.shape == (4, 4) and np.all(np.isfinite(arr)):
        rot = arr[:3, :3]
        if not (np.allclose(rot @ rot.T, np.eye(3), atol=1e-6)
                and math.isclose(np.linalg.det(rot), 1.0, abs_tol=1e-6)
                and np.allclose(arr[3], [0, 0, 0, 1])):
            return (f'{name} is not a rigid transform: its rotation is not orthonormal with '
                    'determinant 1, or its last row is not 0 0 0 1')
        return None
    if arr.shape != (7,) or not np.all(np.isfinite(arr)):
        return (f'{name} must be empty (unset) or 7 finite numbers [x, y, z, qx, qy, qz, qw] '
                f'(T_base_camera), got {_listed(value)!r}')
    norm = float(np.linalg.norm(arr[3:]))
    if abs(norm - 1.0) > QUAT_TOLERANCE:
        return (f'{name} is not a rigid transform: its quaternion (qx, qy, qz, qw) must be unit '
                f'(|q| = 1 +- {QUAT_TOLERANCE}, in ROS order, w last), its norm is {norm:.4f}; '
                'e.g. the optical frame of a level forward-looking camera is '
                '[x, y, z, -0.5, 0.5, -0.5, 0.5]')
    return None


def _listed(value):
    try:
        return list(value)
    except TypeError:
        return value


def extrinsic_matrix(value, name: str = 'camera_in_base') -> np.ndarray | None:
    """``T_base_camera`` (4x4) of a value :func:`extrinsic_problem` accepts; None when unset.

    Raises :class:`InvalidPoseError` with the problem otherwise.
    """
    problem = extrinsic_problem(value, name)
    if problem:
        raise InvalidPoseError(problem)
    arr = None if value is None else np.asarray(value, dtype=np.float64)
    if arr is None or arr.size == 0:
        return None
    return arr.copy() if arr.shape == (4, 4) else xyzw_pose_to_matrix(arr)
