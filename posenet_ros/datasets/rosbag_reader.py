"""rosbag2 reader (sqlite3 ``.db3`` and MCAP) built on ``rosbags`` - no ROS install needed.

Images come from a ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topic. Poses come
from a ``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped`` or ``nav_msgs/Odometry``
topic, **or** from TF (``/tf`` + ``/tf_static``): the chain ``map_frame -> ... -> frame`` is
composed edge by edge. Labels are always ``T_map_cam`` of the camera *optical* frame (z forward,
x right, y down; our convention); ROS quaternions are xyzw and are converted to wxyz here.

Which frame a pose source describes (``pose_of``) is read, not assumed:

- ``nav_msgs/Odometry``: its ``child_frame_id`` (authoritative; usually ``base_link``).
- ``PoseStamped``: it names no child frame; ``pose_frame`` says which frame it is, default the
  camera frame (this project's ground-truth topics are camera poses). A PoseStamped of the
  robot (mocap body, ...) needs ``pose_frame='base_link'``.
- ``PoseWithCovarianceStamped``: in ROS it is the robot base's pose (AMCL ``/amcl_pose``,
  robot_localization), so it has no default: ``pose_frame`` must name the frame.
- TF ``(map_frame, frame)``: ``frame``.

The camera frame is ``camera_frame`` or the image messages' ``header.frame_id``. When
``pose_of`` is another frame, the extrinsic ``T_pose_of_cam`` comes from ``camera_in_base``
(``x y z qx qy qz qw``) or else from the bag's ``/tf_static`` (a chain of static transforms), and
labels are ``T_map_pose_of @ T_pose_of_cam``. Without either, :class:`BagError` names both
frames and the fixes. The map frame of the labels is the pose source's ``header.frame_id``.

Association uses header stamps (the bag's record time only when a header stamp is zero). An image
at time ``t`` gets a pose when, on every moving edge of the chain (each TF edge, or the pose
topic), a sample lies within ``EXACT_TOLERANCE_NS`` of ``t`` or two samples ``t0 <= t <= t1``
with ``t1 - t0`` within that edge's max gap bracket it (linear position, slerp orientation).
Each edge's max gap follows its own rate, and a future-dated ``map -> odom`` (AMCL's
``transform_tolerance``) is read at its publication time: :mod:`posenet_ros.datasets.tf_timing`.
Other images are skipped and counted in :class:`BagStats`, by reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from posenet_ros.core.errors import (
    BagError,
    ExtrapolationError,
    ImageConversionError,
    InvalidPoseError,
    TransformLookupError,
)
from posenet_ros.core.geometry import canonicalize_quaternion, matrix_to_pose
from posenet_ros.core.ros_conversions import msg_to_pose, stamp_to_ns
from posenet_ros.core.transforms import (
    TfTree,
    TransformSeries,
    compose_chain,
    extrinsic_matrix,
    strip_frame,
)
from posenet_ros.datasets import bagio, tf_timing
from posenet_ros.datasets.bagio import CAMERA_INFO_TYPE, IMAGE_TYPES, POSE_TYPES, TF_TYPE, is_bag
from posenet_ros.datasets.types import PoseSample

__all__ = ['BagStats', 'BagDataset', 'read_bag', 'is_bag', 'IMAGE_TYPES', 'POSE_TYPES',
           'TF_TYPE', 'CAMERA_INFO_TYPE']

#: A pose sample this close to an image stamp is used as is (no bracketing pair needed).
EXACT_TOLERANCE_NS = 1_000_000  # 1 ms
_POSE_STAMPED, _POSE_COV, _ODOMETRY = POSE_TYPES


@dataclass
class BagStats:
    """What a bag read did: counts of images used and skipped, and where poses came from."""

    bag: str
    image_topic: str
    pose_source: str  # 'topic /x' or 'tf map->camera'
    max_gap: float | dict | None  # None: each edge's own (tf_timing)
    n_images: int = 0  # image messages on the topic
    n_used: int = 0  # images returned with a pose
    n_subsampled: int = 0  # dropped by every_n
    n_no_pose: int = 0  # no pose within max_gap (outside the pose time range or a gap)
    no_pose_reasons: dict = field(default_factory=dict)  # {reason: images}, summing to n_no_pose
    edges: dict = field(default_factory=dict)  # {edge: rate_hz, max_gap, future_dated (s)}
    split_check: dict = field(default_factory=dict)  # extract-bag: test near-copies (splits.py)
    n_undecodable: int = 0  # image payload could not be converted
    n_poses: int = 0  # pose samples (or TF transforms of the chain)
    n_zero_stamps: int = 0  # messages whose header stamp was 0 (record time used)
    image_span: tuple[float, float] | None = None  # first/last image stamp (s)
    pose_span: tuple[float, float] | None = None  # first/last pose stamp (s)
    pose_frame: str = ''  # header.frame_id of the poses (the map frame)
    pose_of: str = ''  # the frame the pose source describes (Odometry child_frame_id, ...)
    camera_frame: str = ''  # the images' frame (labels are of this frame)
    extrinsic: str = ''  # how T_pose_of_cam was found: '', 'camera_in_base', 'tf_static a->b'
    intrinsics_source: str = ''
    frames: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-friendly dict (stored in an extracted dataset's dataset.json)."""
        return asdict(self)

    def reasons(self) -> str:
        """The frames left without a label, by reason (``'none'`` when every frame has one)."""
        items = sorted(self.no_pose_reasons.items(), key=lambda kv: -kv[1])
        return '; '.join(f'{n} {why}' for why, n in items) or 'none'


def _stamp_ns(header, record_ns: int, stats: BagStats) -> int:
    """The header stamp (ns); the record time when the stamp is zero (counted)."""
    ns = stamp_to_ns(header.stamp)
    if ns == 0:
        stats.n_zero_stamps += 1
        return int(record_ns)
    return ns


def _span_s(span) -> tuple[float, float]:
    return span[0] / 1e9, span[1] / 1e9


class BagDataset:
    """A rosbag2 opened for pose-labelled image reading; iterate it for :class:`PoseSample`.

    Poses (and camera_info) are read when it is constructed; images are decoded lazily while
    iterating, so a long bag can be streamed to disk (``extract_bag``) without holding all frames.
    Use as a context manager or call :meth:`close`.

    Args:
        path: rosbag2 directory (or a bare ``.db3``/``.mcap`` file).
        image_topic: Image or CompressedImage topic; ``None`` picks the only raw image topic.
        pose_topic: PoseStamped / PoseWithCovarianceStamped / Odometry topic in the map frame.
        tf: ``(map_frame, frame)`` to compose from ``/tf`` + ``/tf_static`` instead.
            With neither ``pose_topic`` nor ``tf`` the bag's only pose-typed topic is used.
        camera_info_topic: CameraInfo topic for intrinsics; ``None`` tries
            ``<image namespace>/camera_info``.
        max_gap: largest time (s) between the two pose samples an image is interpolated
            between: None (each edge's own, from its rate), one float for every edge, or
            ``{child frame or pose topic: s}`` (``'*'``: the others); see
            :func:`~posenet_ros.datasets.tf_timing.parse_max_gap`.
        future_dating: ``'auto'`` (detect a future-dated TF edge and read it at its
            publication time), ``0`` (take stamps as tf2 does) or seconds to move it back.
        every_n: keep every n-th image message (1 = all).
        split: split name given to every sample.
        camera_frame: the camera optical frame the labels are for; default the images'
            ``header.frame_id``.
        pose_frame: which frame a PoseStamped / PoseWithCovarianceStamped describes (see the
            module docstring); for Odometry it must match ``child_frame_id`` if given.
        camera_in_base: ``T_pose_frame_cam`` as ``x y z qx qy qz qw`` (or 4x4), used instead
            of ``/tf_static`` when the pose is not of the camera.
    """

    def __init__(self, path, image_topic: str | None = None, pose_topic: str | None = None,
                 tf: tuple[str, str] | None = None, camera_info_topic: str | None = None,
                 max_gap=None, every_n: int = 1, split: str = 'train',
                 camera_frame: str | None = None, pose_frame: str | None = None,
                 camera_in_base=None, future_dating='auto'):
        if pose_topic and tf:
            raise BagError('give either pose_topic or tf=(map_frame, camera_frame), not both')
        max_gap = tf_timing.parse_max_gap(max_gap)
        gaps = max_gap.values() if isinstance(max_gap, dict) else [max_gap]
        if any(g is not None and g <= 0 for g in gaps) or every_n < 1:
            raise BagError(f'max_gap must be > 0 and every_n >= 1 (got {max_gap}, {every_n})')
        self.future_dating = future_dating
        if tf is not None and pose_frame:
            raise BagError('pose_frame applies to pose topics; with tf the frame is tf[1]')
        try:
            T_ext = extrinsic_matrix(camera_in_base)
        except InvalidPoseError as exc:
            raise BagError(str(exc)) from None
        self._reader, self.path = bagio.open_reader(path)
        try:
            self._setup(image_topic, pose_topic, tf, camera_info_topic, max_gap, every_n, split,
                        camera_frame, pose_frame, T_ext)
        except BaseException:
            self.close()
            raise

    # -- setup: topics, poses, intrinsics -----------------------------------------------------
    def _topics(self) -> dict[str, str]:
        return bagio.topics(self._reader)

    def _topic_listing(self) -> str:
        return bagio.topic_listing(self._reader)

    def _pick(self, wanted: str | None, types: tuple[str, ...], what: str) -> str:
        return bagio.pick_topic(self._reader, wanted, types, what, self.path)

    def _setup(self, image_topic, pose_topic, tf, camera_info_topic, max_gap, every_n, split,
               camera_frame, pose_frame, T_ext):
        self.image_topic = self._pick(image_topic, IMAGE_TYPES, 'image')
        self.every_n = int(every_n)
        self.split = split
        self.max_gap = max_gap
        if tf is None:
            pose_topic = self._pick(pose_topic, POSE_TYPES, 'pose')
            source = f'topic {pose_topic}'
        else:
            source = f'tf {tf[0]}->{tf[1]}'
        self.stats = BagStats(bag=str(self.path), image_topic=self.image_topic,
                              pose_source=source, max_gap=max_gap)
        cam = strip_frame(camera_frame) if camera_frame else \
            bagio.first_frame_id(self._reader, self.image_topic, self.path)
        if tf is None:
            series, pose_of = self._read_pose_topic(pose_topic, pose_frame, cam)
            self._chain = [(series, False)]
        else:
            self._chain = self._read_tf_chain(strip_frame(tf[0]), strip_frame(tf[1]))
            pose_of = strip_frame(tf[1])
        self.stats.pose_of = pose_of
        self.stats.camera_frame = cam or pose_of
        self._apply_extrinsic(pose_of, cam, T_ext, camera_frame is not None)
        self.stats.frames.update(map_frame=self.stats.pose_frame,
                                 camera_frame=self.stats.camera_frame, pose_of=pose_of,
                                 extrinsic=self.stats.extrinsic)
        self.K = self._read_camera_info(camera_info_topic)

    def _apply_extrinsic(self, pose_of: str, cam: str, T_ext, cam_given: bool) -> None:
        """Append ``T_pose_of_cam`` to the chain when the pose is not the camera's."""
        if not cam or pose_of == cam:
            return
        if T_ext is not None:
            T, how = T_ext, 'camera_in_base'
        else:
            tree = bagio.static_tree(self._reader, self.path)
            try:
                T, how = tree.matrix(pose_of, cam), \
                    'tf_static ' + '->'.join(tree.path_frames(pose_of, cam))
            except TransformLookupError as exc:
                where = 'the camera_frame you gave' if cam_given else \
                    f'the header.frame_id of {self.image_topic}'
                raise BagError(
                    f"poses from {self.stats.pose_source} in {self.path} are of frame "
                    f"'{pose_of}', but the images are of camera frame '{cam}' ({where}), and "
                    f"the bag's /tf_static has no transform '{pose_of}' -> '{cam}' ({exc}). "
                    'Fix: record /tf_static with the camera mounting (robot_state_publisher), '
                    'or pass '
                    f'--camera-in-base X Y Z QX QY QZ QW (the pose of {cam!r} in {pose_of!r}), '
                    f'or use a pose source of the camera frame (a camera pose topic, or '
                    f"--tf MAP {cam}); if the poses already are the camera's, pass "
                    f'--camera-frame {pose_of}') from None
        p, q = matrix_to_pose(T)
        self._chain.append((TransformSeries.fixed(T, f'{pose_of} -> {cam}'), False))
        self.stats.extrinsic = how
        self.stats.frames['camera_in_pose_frame'] = [float(v) for v in (*p, *q)]  # xyz wxyz

    def _conns(self, topic: str):
        return [c for c in self._reader.connections if c.topic == topic]

    def _messages(self, conns):
        for conn, rec_ns, raw in bagio.iter_messages(self._reader, conns, self.path):
            yield conn, rec_ns, bagio.deserialize(self._reader, raw, conn.msgtype, self.path)

    def _read_pose_topic(self, topic: str, pose_frame: str | None, cam: str):
        """(series of T_map_X, X): the poses and the frame X they describe."""
        series = self._new_series(topic)
        n, frames, children = 0, set(), set()
        msgtype = self._topics()[topic]
        for _, rec_ns, msg in self._messages(self._conns(topic)):
            p, q = msg_to_pose(msg)
            if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))) or np.linalg.norm(q) < 1e-9:
                continue  # an invalid pose is no label
            series.add(_stamp_ns(msg.header, rec_ns, self.stats), p, canonicalize_quaternion(q))
            n += 1
            frames.add(strip_frame(msg.header.frame_id))
            if msgtype == _ODOMETRY:
                children.add(strip_frame(msg.child_frame_id))
        if not n:
            raise BagError(f'pose topic {topic!r} in bag {self.path} has no (valid) messages; '
                           f'record the ground-truth pose or use TF. {self._topic_listing()}')
        if len(frames) > 1:
            raise BagError(f'pose topic {topic!r} in {self.path} mixes header frames '
                           f'({", ".join(sorted(frames))}); labels need one map frame')
        pose_frame = strip_frame(pose_frame) if pose_frame else None
        if msgtype == _ODOMETRY:
            children.discard('')
            if len(children) > 1:
                raise BagError(f'odometry {topic!r} in {self.path} names several child frames '
                               f'({", ".join(sorted(children))})')
            child = next(iter(children), None) or pose_frame
            if child is None:
                raise BagError(f'odometry {topic!r} in {self.path} has an empty child_frame_id; '
                               'pass --pose-frame with the frame it describes (e.g. base_link)')
            if pose_frame and pose_frame != child:
                raise BagError(f'--pose-frame {pose_frame} contradicts the child_frame_id '
                               f'{child!r} of odometry {topic!r}; drop --pose-frame')
        elif pose_frame:
            child = pose_frame
        elif msgtype == _POSE_STAMPED:
            child = cam  # documented default: a PoseStamped here is the camera's pose
        else:
            base = self._odometry_child()
            base = f'{base}, the frame odometry moves in this bag' if base else \
                "base_footprint (Nav2's default) or --pose-frame base_link"
            raise BagError(
                f'{topic!r} in {self.path} is a PoseWithCovarianceStamped, which in ROS is the '
                "robot base's pose (e.g. AMCL's /amcl_pose) and names no child frame: pass "
                f"--pose-frame with the frame it describes (AMCL's base_frame_id, e.g. "
                f'--pose-frame {base}; or '
                f"--pose-frame {cam or 'CAMERA_FRAME'} if it is the camera's pose)")
        timing = tf_timing.edge_timing(topic, topic, series.stamps, [], 0.0, self.max_gap, 0)
        tf_timing.apply_timing(series, timing)
        self.stats.edges = {topic: timing.as_dict()}
        self.stats.n_poses = n
        self.stats.pose_frame = next(iter(frames))
        self.stats.pose_span = _span_s(series.span)
        return series, child

    def _odometry_child(self) -> str | None:
        """The child of the bag's first ``odom -> X`` transform on /tf (the robot's base)."""
        if self._topics().get('/tf') != TF_TYPE:
            return None
        for _, _, msg in self._messages(self._conns('/tf')):
            for tf in msg.transforms:
                if strip_frame(tf.header.frame_id) == 'odom':
                    return strip_frame(tf.child_frame_id)
        return None

    def _new_series(self, name: str) -> TransformSeries:
        return TransformSeries(tolerance_ns=EXACT_TOLERANCE_NS, name=name)

    def _read_tf_chain(self, map_frame: str, cam_frame: str):
        """Per-edge series along map -> camera; returns [(series, inverted), ...] map-to-cam."""
        topics = self._topics()
        tf_topics = [t for t in ('/tf', '/tf_static') if topics.get(t) == TF_TYPE]
        if not tf_topics:
            raise BagError(f'bag {self.path} has no /tf or /tf_static (tf2_msgs/msg/TFMessage) '
                           f'topic; use a pose topic instead. {self._topic_listing()}')
        tree = TfTree(tolerance=EXACT_TOLERANCE_NS * 1e-9, strict=True)
        conns = [c for t in tf_topics for c in self._conns(t)]
        offsets: dict[str, list[int]] = {}  # child: header stamp - record time (ns)
        try:
            for conn, rec_ns, msg in self._messages(conns):
                for tf in msg.transforms:
                    offsets.setdefault(strip_frame(tf.child_frame_id), []).append(
                        stamp_to_ns(tf.header.stamp) - rec_ns)
                tree.add_message(msg, conn.topic == '/tf_static',
                                 lambda header, rec=rec_ns: _stamp_ns(header, rec, self.stats))
            # T_map_cam: map up to the common ancestor (inverted edges), then down to the camera.
            path = tree.path(map_frame, cam_frame)
        except TransformLookupError as exc:
            raise BagError(f'TF in {self.path}: {exc}') from None
        chain = tree.chain(map_frame, cam_frame)
        self._time_edges([(c, tree.series(c)) for c, _ in path], offsets)
        parent_of = tree.parent_of()
        self.stats.n_poses = sum(len(s) for s, _ in chain)
        self.stats.pose_frame = map_frame
        self.stats.frames = {'map_frame': map_frame, 'camera_frame': cam_frame,
                             'chain': [parent_of[c] + '->' + c for c, _ in path]}
        spans = [s.span for s, _ in chain if not s.static]
        if spans:  # the time all dynamic edges cover
            self.stats.pose_span = _span_s((max(a for a, _ in spans), min(b for _, b in spans)))
        return chain

    def _time_edges(self, edges, offsets) -> None:
        """Each moving edge's max gap and future-dating (:mod:`tf_timing`), into the stats."""
        moving = [(child, series) for child, series in edges if not series.static]
        medians = [float(np.median(offsets[c])) for c, _ in moving if offsets.get(c)]
        baseline = min(medians) if len(medians) > 1 else min(medians + [0.0])
        for child, series in moving:
            timing = tf_timing.edge_timing(child, series.name, series.stamps,
                                           offsets.get(child, []), baseline, self.max_gap,
                                           self.future_dating)
            tf_timing.apply_timing(series, timing)
            self.stats.edges[series.name] = timing.as_dict()

    def _read_camera_info(self, topic: str | None) -> np.ndarray | None:
        if topic is None:
            topic = bagio.camera_info_topic(self._reader, self.image_topic)
            if topic is None:
                return None
        K = bagio.read_camera_info(self._reader, topic, self.path)
        if K is None:
            return None
        self.stats.intrinsics_source = topic
        return K

    # -- poses and images ----------------------------------------------------------------------
    def pose_at(self, t_ns: int):
        """``(position, wxyz)`` of ``T_map_cam`` at ``t_ns`` (header time), or None."""
        try:
            return matrix_to_pose(compose_chain(self._chain, t_ns))
        except ExtrapolationError:
            return None

    def __iter__(self) -> Iterator[PoseSample]:
        """Yield one :class:`PoseSample` (in-memory RGB image) per image with a pose."""
        from posenet_ros.core.image_conversion import compressed_msg_to_rgb, image_msg_to_rgb

        st = self.stats
        index = -1
        first = last = None
        for conn, rec_ns, raw in bagio.iter_messages(self._reader, self._conns(self.image_topic),
                                                     self.path):
            index += 1
            st.n_images += 1
            if index % self.every_n:
                st.n_subsampled += 1
                continue
            msg = bagio.deserialize(self._reader, raw, conn.msgtype, self.path)
            t_ns = _stamp_ns(msg.header, rec_ns, st)
            first = t_ns if first is None else min(first, t_ns)
            last = t_ns if last is None else max(last, t_ns)
            st.image_span = (first / 1e9, last / 1e9)
            pose = self.pose_at(t_ns)
            if pose is None:
                st.n_no_pose += 1
                why = tf_timing.missing_reason(self._chain, t_ns) or 'no pose'
                st.no_pose_reasons[why] = st.no_pose_reasons.get(why, 0) + 1
                continue
            try:
                if conn.msgtype == IMAGE_TYPES[0]:
                    rgb = image_msg_to_rgb(msg)
                else:
                    rgb = compressed_msg_to_rgb(msg)
            except ImageConversionError as exc:
                st.n_undecodable += 1
                warnings.warn(f'{self.path}: {self.image_topic} message {index} skipped: {exc}',
                              stacklevel=2)
                continue
            st.n_used += 1
            yield PoseSample(position=pose[0], quaternion=pose[1], split=self.split,
                             image=rgb if rgb.flags.writeable and rgb.flags.c_contiguous
                             else np.array(rgb, order='C'), stamp=t_ns / 1e9,
                             intrinsics=None if self.K is None else self.K.copy(),
                             name=f'{index:06d}')

    @staticmethod
    def _span(s) -> str:
        return 'none' if s is None else f'[{s[0]:.3f}, {s[1]:.3f}] s'

    def check_overlap(self) -> None:
        """Raise :class:`BagError` when iterating gave no sample at all (call after iterating)."""
        st = self.stats
        if st.n_used:
            return
        if st.n_images == 0:
            raise BagError(f'image topic {self.image_topic!r} in {self.path} has no messages')
        raise BagError(
            f'no image in {self.path} has a pose: {st.n_no_pose} images without a pose '
            f'({st.reasons()}), {st.n_undecodable} undecodable. Image stamps '
            f'{self._span(st.image_span)}, pose stamps {self._span(st.pose_span)} '
            f'({st.pose_source}); check that both use the same clock, or raise --max-gap')

    def close(self) -> None:
        """Close the underlying reader (idempotent)."""
        reader, self._reader = getattr(self, '_reader', None), None
        if reader is not None and reader.stack is not None:
            reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_bag(path, image_topic: str | None = None, pose_topic: str | None = None,
             tf: tuple[str, str] | None = None, camera_info_topic: str | None = None,
             max_gap=None, every_n: int = 1, split: str = 'train',
             camera_frame: str | None = None, pose_frame: str | None = None,
             camera_in_base=None, future_dating='auto') -> tuple[list[PoseSample], BagStats]:
    """Read every pose-labelled image of a bag into memory; see :class:`BagDataset` for args.

    Returns ``(samples, stats)``. Raises :class:`BagError` for unreadable or damaged bags
    (naming the file), unknown topics (listing the bag's topics and types), poses of another
    frame than the camera without an extrinsic, bags without poses or without any image/pose
    overlap.
    """
    with BagDataset(path, image_topic=image_topic, pose_topic=pose_topic, tf=tf,
                    camera_info_topic=camera_info_topic, max_gap=max_gap, every_n=every_n,
                    split=split, camera_frame=camera_frame, pose_frame=pose_frame,
                    camera_in_base=camera_in_base, future_dating=future_dating) as ds:
        samples = list(ds)
        ds.check_overlap()
        return samples, ds.stats
