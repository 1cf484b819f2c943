"""rosbag2 reader (sqlite3 ``.db3`` and MCAP) built on ``rosbags`` - no ROS install needed.

Images come from a ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` topic. Poses come
from a ``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped`` or ``nav_msgs/Odometry``
topic, **or** from TF (``/tf`` + ``/tf_static``): the chain ``map_frame -> ... -> camera_frame``
is composed edge by edge. Either way the pose must be that of the camera *optical* frame
(z forward, x right, y down) in the map frame, i.e. ``T_map_cam`` (our convention); ROS
quaternions are xyzw and are converted to wxyz here.

Association uses header stamps (the bag's record time only when a header stamp is zero). An image
at time ``t`` gets a pose when a pose sample lies within ``EXACT_TOLERANCE_NS`` of ``t`` or two
pose samples ``t0 <= t <= t1`` with ``t1 - t0 <= max_gap`` bracket it (linear position, slerp
orientation). Other images are skipped and counted in :class:`BagStats`.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from posenet_ros.datasets.types import PoseSample, intrinsics_matrix
from posenet_ros.errors import BagError, ImageConversionError
from posenet_ros.geometry import (
    canonicalize_quaternion,
    compose,
    interpolate_pose,
    invert,
    matrix_to_pose,
    pose_to_matrix,
    xyzw_to_wxyz,
)

__all__ = ['BagStats', 'BagDataset', 'read_bag', 'is_bag', 'IMAGE_TYPES', 'POSE_TYPES']

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
POSE_TYPES = ('geometry_msgs/msg/PoseStamped', 'geometry_msgs/msg/PoseWithCovarianceStamped',
              'nav_msgs/msg/Odometry')
TF_TYPE = 'tf2_msgs/msg/TFMessage'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
#: A pose sample this close to an image stamp is used as is (no bracketing pair needed).
EXACT_TOLERANCE_NS = 1_000_000  # 1 ms


def is_bag(path) -> bool:
    """True when ``path`` is a rosbag2 directory or a bare ``.db3`` / ``.mcap`` file."""
    path = Path(path)
    if path.is_dir():
        return (path / 'metadata.yaml').is_file()
    return path.is_file() and path.suffix in ('.db3', '.mcap')


@dataclass
class BagStats:
    """What a bag read did: counts of images used and skipped, and where poses came from."""

    bag: str
    image_topic: str
    pose_source: str  # 'topic /x' or 'tf map->camera'
    max_gap: float
    n_images: int = 0  # image messages on the topic
    n_used: int = 0  # images returned with a pose
    n_subsampled: int = 0  # dropped by every_n
    n_no_pose: int = 0  # no pose within max_gap (outside the pose time range or a gap)
    n_undecodable: int = 0  # image payload could not be converted
    n_poses: int = 0  # pose samples (or TF transforms of the chain)
    n_zero_stamps: int = 0  # messages whose header stamp was 0 (record time used)
    image_span: tuple[float, float] | None = None  # first/last image stamp (s)
    pose_span: tuple[float, float] | None = None  # first/last pose stamp (s)
    pose_frame: str = ''  # header.frame_id of the poses (the map frame)
    intrinsics_source: str = ''
    frames: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-friendly dict (stored in an extracted dataset's dataset.json)."""
        return asdict(self)


class _Series:
    """Time series of one rigid transform (sorted int ns stamps); static = one constant pose."""

    def __init__(self, stamps, positions, quats, static: bool = False):
        order = np.argsort(np.asarray(stamps, dtype=np.int64), kind='stable')
        stamps = np.asarray(stamps, dtype=np.int64)[order]
        # Duplicate stamps: keep the last one recorded.
        keep = np.append(stamps[1:] != stamps[:-1], True)
        self.stamps = stamps[keep]
        self.positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)[order][keep]
        self.quats = np.asarray(quats, dtype=np.float64).reshape(-1, 4)[order][keep]
        self.static = static

    def __len__(self):
        return len(self.stamps)

    def at(self, t_ns: int, max_gap_ns: int):
        """(position, wxyz) at ``t_ns`` or None when no pose is close enough."""
        if self.static:
            return self.positions[-1], self.quats[-1]
        i = int(np.searchsorted(self.stamps, t_ns))
        for j in (i - 1, i):  # an (almost) exact match needs no partner
            if 0 <= j < len(self.stamps) and abs(int(self.stamps[j]) - t_ns) <= EXACT_TOLERANCE_NS:
                return self.positions[j], self.quats[j]
        if i == 0 or i == len(self.stamps):
            return None
        t0, t1 = int(self.stamps[i - 1]), int(self.stamps[i])
        if t1 - t0 > max_gap_ns:
            return None
        alpha = (t_ns - t0) / (t1 - t0)
        return interpolate_pose(self.positions[i - 1], self.quats[i - 1], self.positions[i],
                                self.quats[i], alpha)


def _stamp_ns(header, record_ns: int, stats: BagStats) -> int:
    ns = int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)
    if ns == 0:
        stats.n_zero_stamps += 1
        return int(record_ns)
    return ns


def _pose_of(msg, msgtype: str):
    pose = msg.pose.pose if msgtype != 'geometry_msgs/msg/PoseStamped' else msg.pose
    p = np.array([pose.position.x, pose.position.y, pose.position.z], dtype=np.float64)
    q = np.array([pose.orientation.x, pose.orientation.y, pose.orientation.z,
                  pose.orientation.w], dtype=np.float64)
    return p, q


def _strip(frame: str) -> str:
    return frame[1:] if frame.startswith('/') else frame


class BagDataset:
    """A rosbag2 opened for pose-labelled image reading; iterate it for :class:`PoseSample`.

    Poses (and camera_info) are read when it is constructed; images are decoded lazily while
    iterating, so a long bag can be streamed to disk (``extract_bag``) without holding all frames.
    Use as a context manager or call :meth:`close`.

    Args:
        path: rosbag2 directory (or a bare ``.db3``/``.mcap`` file).
        image_topic: Image or CompressedImage topic; ``None`` picks the only raw image topic.
        pose_topic: PoseStamped / PoseWithCovarianceStamped / Odometry topic of the camera
            optical frame in the map frame.
        tf: ``(map_frame, camera_frame)`` to compose from ``/tf`` + ``/tf_static`` instead.
            With neither ``pose_topic`` nor ``tf`` the bag's only pose-typed topic is used.
        camera_info_topic: CameraInfo topic for intrinsics; ``None`` tries
            ``<image namespace>/camera_info``.
        max_gap: largest time (s) between the two pose samples an image is interpolated between.
        every_n: keep every n-th image message (1 = all).
        split: split name given to every sample.
    """

    def __init__(self, path, image_topic: str | None = None, pose_topic: str | None = None,
                 tf: tuple[str, str] | None = None, camera_info_topic: str | None = None,
                 max_gap: float = 0.1, every_n: int = 1, split: str = 'train'):
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        if pose_topic and tf:
            raise BagError('give either pose_topic or tf=(map_frame, camera_frame), not both')
        if max_gap <= 0 or every_n < 1:
            raise BagError(f'max_gap must be > 0 and every_n >= 1 (got {max_gap}, {every_n})')
        self.path = self._resolve(Path(path))
        # Bags from ROS 2 Humble and older carry no message definitions: fall back to Humble's
        # (sensor_msgs/geometry_msgs/nav_msgs/tf2_msgs are identical in Humble..Kilted).
        try:
            self._reader = AnyReader([self.path],
                                     default_typestore=get_typestore(Stores.ROS2_HUMBLE))
            self._reader.open()
        except Exception as exc:  # rosbags raises several types for unreadable bags
            raise BagError(f'cannot open bag {self.path}: {exc}; check that it is a complete '
                           'rosbag2 (metadata.yaml + .db3/.mcap)') from None
        try:
            self._setup(image_topic, pose_topic, tf, camera_info_topic, max_gap, every_n, split)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _resolve(path: Path) -> Path:
        if not path.exists():
            raise BagError(f'bag {path} does not exist')
        if path.is_file() and (path.parent / 'metadata.yaml').is_file():
            return path.parent
        if path.is_dir() and not (path / 'metadata.yaml').is_file():
            raise BagError(f'{path} is not a rosbag2 directory (no metadata.yaml); pass the bag '
                           'folder or a .db3/.mcap file')
        if path.is_file() and path.suffix not in ('.db3', '.mcap'):
            raise BagError(f'{path} is not a rosbag2 (.db3 or .mcap) file')
        return path

    # -- setup: topics, poses, intrinsics -----------------------------------------------------
    def _topics(self) -> dict[str, str]:
        return {c.topic: c.msgtype for c in self._reader.connections}

    def _topic_listing(self) -> str:
        topics = self._topics()
        if not topics:
            return 'the bag has no topics'
        return 'topics in the bag: ' + ', '.join(f'{t} [{m}]' for t, m in sorted(topics.items()))

    def _pick(self, wanted: str | None, types: tuple[str, ...], what: str) -> str:
        topics = self._topics()
        if wanted is not None:
            if wanted not in topics:
                raise BagError(f'{what} topic {wanted!r} is not in bag {self.path}; '
                               f'{self._topic_listing()}')
            if topics[wanted] not in types:
                raise BagError(f'{what} topic {wanted!r} has type {topics[wanted]}, expected one '
                               f'of {", ".join(types)}; {self._topic_listing()}')
            return wanted
        found = sorted(t for t, m in topics.items() if m in types)
        if what == 'image' and len(found) > 1:  # prefer the single raw topic if there is one
            raw = [t for t in found if topics[t] == IMAGE_TYPES[0]]
            found = raw if len(raw) == 1 else found
        if len(found) != 1:
            raise BagError(f'{"no" if not found else "several"} {what} topic(s) in bag '
                           f'{self.path}; name one explicitly. {self._topic_listing()}')
        return found[0]

    def _setup(self, image_topic, pose_topic, tf, camera_info_topic, max_gap, every_n, split):
        self.image_topic = self._pick(image_topic, IMAGE_TYPES, 'image')
        self.every_n = int(every_n)
        self.split = split
        self.max_gap_ns = int(round(max_gap * 1e9))
        if tf is None:
            pose_topic = self._pick(pose_topic, POSE_TYPES, 'pose')
            source = f'topic {pose_topic}'
        else:
            source = f'tf {tf[0]}->{tf[1]}'
        self.stats = BagStats(bag=str(self.path), image_topic=self.image_topic,
                              pose_source=source, max_gap=float(max_gap))
        if tf is None:
            self._series = [(self._read_pose_topic(pose_topic), False)]
        else:
            self._series = self._read_tf_chain(_strip(tf[0]), _strip(tf[1]))
        self.K = self._read_camera_info(camera_info_topic)

    def _conns(self, topic: str):
        return [c for c in self._reader.connections if c.topic == topic]

    def _read_pose_topic(self, topic: str) -> _Series:
        stamps, ps, qs, frames = [], [], [], set()
        for conn, rec_ns, raw in self._reader.messages(connections=self._conns(topic)):
            msg = self._reader.deserialize(raw, conn.msgtype)
            p, q = _pose_of(msg, conn.msgtype)
            if not (np.all(np.isfinite(p)) and np.all(np.isfinite(q))) or np.linalg.norm(q) < 1e-9:
                continue  # an invalid pose is no label
            stamps.append(_stamp_ns(msg.header, rec_ns, self.stats))
            ps.append(p)
            qs.append(canonicalize_quaternion(xyzw_to_wxyz(q)))
            frames.add(_strip(msg.header.frame_id))
        if not stamps:
            raise BagError(f'pose topic {topic!r} in bag {self.path} has no (valid) messages; '
                           f'record the ground-truth pose or use TF. {self._topic_listing()}')
        self.stats.n_poses = len(stamps)
        self.stats.pose_frame = ','.join(sorted(frames))
        series = _Series(stamps, ps, qs)
        self.stats.pose_span = (float(series.stamps[0]) / 1e9, float(series.stamps[-1]) / 1e9)
        return series

    def _read_tf_chain(self, map_frame: str, cam_frame: str):
        """Per-edge series along map -> camera; returns [(series, inverted), ...] map-to-cam."""
        topics = self._topics()
        tf_topics = [t for t in ('/tf', '/tf_static') if topics.get(t) == TF_TYPE]
        if not tf_topics:
            raise BagError(f'bag {self.path} has no /tf or /tf_static (tf2_msgs/msg/TFMessage) '
                           f'topic; use a pose topic instead. {self._topic_listing()}')
        edges: dict[str, dict] = {}  # child -> {parent, stamps, ps, qs, static}
        conns = [c for t in tf_topics for c in self._conns(t)]
        for conn, rec_ns, raw in self._reader.messages(connections=conns):
            msg = self._reader.deserialize(raw, conn.msgtype)
            static = conn.topic == '/tf_static'
            for tr in msg.transforms:
                parent, child = _strip(tr.header.frame_id), _strip(tr.child_frame_id)
                edge = edges.setdefault(child, {'parent': parent, 'stamps': [], 'ps': [],
                                                'qs': [], 'static': static})
                if edge['parent'] != parent:
                    raise BagError(f'frame {child!r} has two parents in {self.path} '
                                   f'({edge["parent"]!r} and {parent!r}); TF needs a tree')
                t, r = tr.transform.translation, tr.transform.rotation
                edge['stamps'].append(_stamp_ns(tr.header, rec_ns, self.stats))
                edge['ps'].append([t.x, t.y, t.z])
                edge['qs'].append(xyzw_to_wxyz(np.array([r.x, r.y, r.z, r.w])))
        frames = sorted(set(edges) | {e['parent'] for e in edges.values()})

        def ancestors(frame):
            chain = [frame]
            while chain[-1] in edges:
                chain.append(edges[chain[-1]]['parent'])
                if len(chain) > 1000:
                    raise BagError(f'TF in {self.path} has a cycle through {frame!r}')
            return chain

        for f in (map_frame, cam_frame):
            if f not in frames:
                raise BagError(f'frame {f!r} is not in the TF data of {self.path}; frames '
                               f'present: {", ".join(frames) or "none"}')
        up_cam, up_map = ancestors(cam_frame), ancestors(map_frame)
        common = next((f for f in up_map if f in up_cam), None)
        if common is None:
            raise BagError(f'frames {map_frame!r} and {cam_frame!r} are not connected in the TF '
                           f'tree of {self.path}; frames present: {", ".join(frames)}')
        # T_map_cam = inv(T_common_map) @ T_common_cam. Edges stored as T_parent_child.
        chain = [(c, True) for c in up_map[:up_map.index(common)]]  # walk map up: inverted
        chain += [(c, False) for c in reversed(up_cam[:up_cam.index(common)])]
        series, spans, n = [], [], 0
        for child, inverted in chain:
            e = edges[child]
            s = _Series(e['stamps'], e['ps'], e['qs'], static=e['static'])
            series.append((s, inverted))
            n += len(s)
            if not s.static:
                spans.append((float(s.stamps[0]) / 1e9, float(s.stamps[-1]) / 1e9))
        self.stats.n_poses = n
        self.stats.pose_frame = map_frame
        self.stats.frames = {'map_frame': map_frame, 'camera_frame': cam_frame,
                             'chain': [edges[c]['parent'] + '->' + c for c, _ in chain]}
        if spans:
            self.stats.pose_span = (max(a for a, _ in spans), min(b for _, b in spans))
        return series

    def _read_camera_info(self, topic: str | None) -> np.ndarray | None:
        topics = self._topics()
        if topic is None:
            # image_transport: <ns>/image_raw[/compressed] next to <ns>/camera_info
            parts = self.image_topic.split('/')
            guesses = ['/'.join(parts[:-k]) + '/camera_info' for k in (1, 2) if len(parts) > k]
            topic = next((g for g in guesses if topics.get(g) == CAMERA_INFO_TYPE), None)
            if topic is None:
                return None
        elif topics.get(topic) != CAMERA_INFO_TYPE:
            raise BagError(f'camera_info topic {topic!r} is missing or not a CameraInfo in '
                           f'{self.path}; {self._topic_listing()}')
        for conn, _, raw in self._reader.messages(connections=self._conns(topic)):
            msg = self._reader.deserialize(raw, conn.msgtype)
            k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
            if k[0, 0] <= 0 or k[1, 1] <= 0:
                warnings.warn(f'{topic} in {self.path} has an uncalibrated K (fx or fy <= 0); '
                              'samples get no intrinsics', stacklevel=3)
                return None
            self.stats.intrinsics_source = topic
            return intrinsics_matrix(k[0, 0], k[1, 1], k[0, 2], k[1, 2])
        return None

    # -- poses and images ----------------------------------------------------------------------
    def pose_at(self, t_ns: int):
        """``(position, wxyz)`` of ``T_map_cam`` at ``t_ns`` (header time), or None."""
        mat = None
        for series, inverted in self._series:
            pq = series.at(t_ns, self.max_gap_ns)
            if pq is None:
                return None
            if len(self._series) == 1 and not inverted:
                return np.asarray(pq[0]), canonicalize_quaternion(pq[1])
            edge = pose_to_matrix(*pq)
            edge = invert(edge) if inverted else edge
            mat = edge if mat is None else compose(mat, edge)
        if mat is None:  # map_frame == camera_frame
            return np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0])
        return matrix_to_pose(mat)

    def __iter__(self) -> Iterator[PoseSample]:
        """Yield one :class:`PoseSample` (in-memory RGB image) per image with a pose."""
        from posenet_ros.image_conversion import compressed_msg_to_rgb, image_msg_to_rgb

        st = self.stats
        index = -1
        first = last = None
        for conn, rec_ns, raw in self._reader.messages(connections=self._conns(self.image_topic)):
            index += 1
            st.n_images += 1
            if index % self.every_n:
                st.n_subsampled += 1
                continue
            msg = self._reader.deserialize(raw, conn.msgtype)
            t_ns = _stamp_ns(msg.header, rec_ns, st)
            first = t_ns if first is None else min(first, t_ns)
            last = t_ns if last is None else max(last, t_ns)
            st.image_span = (first / 1e9, last / 1e9)
            pose = self.pose_at(t_ns)
            if pose is None:
                st.n_no_pose += 1
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
                             image=np.ascontiguousarray(rgb), stamp=t_ns / 1e9,
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
            f'no image in {self.path} has a pose: {st.n_no_pose} images without a pose within '
            f'max_gap={st.max_gap} s, {st.n_undecodable} undecodable. Image stamps '
            f'{self._span(st.image_span)}, pose stamps {self._span(st.pose_span)} '
            f'({st.pose_source}); check that both use the same clock, or raise max_gap')

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
             max_gap: float = 0.1, every_n: int = 1,
             split: str = 'train') -> tuple[list[PoseSample], BagStats]:
    """Read every pose-labelled image of a bag into memory; see :class:`BagDataset` for args.

    Returns ``(samples, stats)``. Raises :class:`BagError` for unreadable bags, unknown topics
    (listing the bag's topics and types), bags without poses or without any image/pose overlap.
    """
    try:
        with BagDataset(path, image_topic=image_topic, pose_topic=pose_topic, tf=tf,
                        camera_info_topic=camera_info_topic, max_gap=max_gap, every_n=every_n,
                        split=split) as ds:
            samples = list(ds)
            ds.check_overlap()
            return samples, ds.stats
    except sqlite3.DatabaseError as exc:
        raise BagError(f'bag {path} is corrupt ({exc}); re-record or re-copy it') from None
