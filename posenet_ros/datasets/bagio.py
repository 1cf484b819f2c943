"""Opening rosbag2 files, for every reader: topics, camera_info, static TF, damaged bags.

Every bag is opened here (:func:`open_reader`, :func:`bag_reader`): ``BagDataset``,
``extract-bag``, ``label``, ``evaluate``, ``replay`` and live evaluation.

Damage of any kind (a page of a ``.db3`` overwritten, an ``.mcap`` without its summary because
the recorder was killed, a missing or stale ``metadata.yaml``) becomes one :class:`BagError`
that names the file and points to ``posenet-ros bag-salvage``
(:mod:`posenet_ros.datasets.salvage`).

Transforms are 4x4 ``T_parent_child`` (maps child coordinates to parent coordinates); message
conversions are :mod:`posenet_ros.core.ros_conversions`, the TF tree
:mod:`posenet_ros.core.transforms`.
"""

from __future__ import annotations

import sqlite3
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from posenet_ros.core import ros_conversions
from posenet_ros.core.errors import BagError
from posenet_ros.core.transforms import TfTree, strip_frame
from posenet_ros.datasets.types import intrinsics_matrix

__all__ = ['IMAGE_TYPES', 'POSE_TYPES', 'TF_TYPE', 'CAMERA_INFO_TYPE', 'STORAGE_SUFFIXES',
           'is_bag', 'resolve_bag', 'storage_files', 'open_reader', 'bag_reader',
           'topic_counts', 'iter_messages', 'deserialize', 'topics', 'topic_listing',
           'pick_topic', 'camera_info_topic', 'read_camera_info', 'first_frame_id',
           'strip_frame', 'static_tree', 'damage_error']

IMAGE_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage')
POSE_TYPES = ('geometry_msgs/msg/PoseStamped', 'geometry_msgs/msg/PoseWithCovarianceStamped',
              'nav_msgs/msg/Odometry')
TF_TYPE = 'tf2_msgs/msg/TFMessage'
CAMERA_INFO_TYPE = 'sensor_msgs/msg/CameraInfo'
STORAGE_SUFFIXES = ('.db3', '.mcap')
SALVAGE_HINT = ('copy out what is still readable with: posenet-ros bag-salvage {bag} '
                '{bag}_salvaged')


def is_bag(path) -> bool:
    """True when ``path`` is a rosbag2 directory or a bare ``.db3`` / ``.mcap`` file."""
    path = Path(path)
    if path.is_dir():
        return (path / 'metadata.yaml').is_file() or any(
            p.suffix in STORAGE_SUFFIXES for p in path.iterdir())
    return path.is_file() and path.suffix in STORAGE_SUFFIXES


def storage_files(path) -> list[Path]:
    """The ``.db3``/``.mcap`` files of a bag folder (or the bare file itself), sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES and p.is_file())


def resolve_bag(path) -> Path:
    """The path to hand to rosbags: a bag folder with metadata.yaml, or a bare storage file."""
    path = Path(path)
    if not path.exists():
        raise BagError(f'bag {path} does not exist')
    if path.is_file():
        if path.suffix not in STORAGE_SUFFIXES:
            raise BagError(f'{path} is not a rosbag2 (.db3 or .mcap) file')
        return path.parent if (path.parent / 'metadata.yaml').is_file() else path
    if not (path / 'metadata.yaml').is_file():
        files = storage_files(path)
        if not files:
            raise BagError(f'{path} is not a rosbag2 directory (no metadata.yaml and no '
                           '.db3/.mcap file); pass the bag folder or a .db3/.mcap file')
        raise BagError(
            f'{path / "metadata.yaml"} is missing (the recorder did not finish?) next to '
            f'{", ".join(p.name for p in files)}; pass the storage file itself '
            f'({files[0]}) if the bag has one file, or rebuild the bag: '
            + SALVAGE_HINT.format(bag=path))
    return path


def _check_storage_file(path: Path) -> str | None:
    """Why one storage file is damaged, or None when it reads to the end (error path only)."""
    if path.suffix == '.db3':
        try:
            con = sqlite3.connect(f'file:{path}?mode=ro&immutable=1', uri=True)
            try:
                rows = con.execute('PRAGMA quick_check').fetchall()
            finally:
                con.close()
        except sqlite3.Error as exc:
            return str(exc)
        return None if rows == [('ok',)] else '; '.join(r[0] for r in rows[:3])
    from rosbags.rosbag2 import Reader

    try:
        with Reader(path) as reader:
            for _ in reader.messages():
                pass
    except Exception as exc:  # noqa: BLE001 - any failure is the diagnosis
        return f'{type(exc).__name__}: {exc}'
    return None


def damage_error(bag, exc: BaseException, when: str = 'reading') -> BagError:
    """A :class:`BagError` naming the damaged file of ``bag`` (found by checking each file)."""
    bag = Path(bag)
    files = storage_files(bag) if bag.exists() else []
    culprit, why = None, None
    if len(files) == 1:
        culprit = files[0]
    else:
        for f in files:
            why = _check_storage_file(f)
            if why is not None:
                culprit = f
                break
    detail = why or f'{type(exc).__name__}: {exc}'
    where = culprit if culprit is not None else bag
    kind = ('a truncated or damaged MCAP file (no summary/footer: was the recorder killed?)'
            if where.suffix == '.mcap' else 'corrupt' if where.suffix == '.db3' else 'damaged')
    folder = bag if bag.is_dir() else bag.parent if (bag.parent / 'metadata.yaml').is_file() \
        else bag
    return BagError(f'bag file {where} is {kind}: {detail} (while {when}); re-copy or re-record '
                    'it, or ' + SALVAGE_HINT.format(bag=folder))


def _metadata_check(bag: Path) -> None:
    """Stale metadata.yaml: listed files or per-topic message counts differ from the storage."""
    import yaml
    from rosbags.rosbag2 import Reader

    meta_path = bag / 'metadata.yaml'
    try:
        info = yaml.safe_load(meta_path.read_text(encoding='utf-8'))['rosbag2_bagfile_information']
        listed = [Path(p).name for p in info['relative_file_paths']]
        counts = {t['topic_metadata']['name']: int(t['message_count'])
                  for t in info['topics_with_message_count']}
    except Exception as exc:  # noqa: BLE001 - yaml errors, missing keys, wrong types
        raise BagError(f'{meta_path} is unreadable ({type(exc).__name__}: {exc}); '
                       + SALVAGE_HINT.format(bag=bag)) from None
    missing = [n for n in listed if not (bag / n).is_file()]
    extra = [p.name for p in storage_files(bag) if p.name not in listed]
    if missing or extra:
        what = (f'lists missing file(s) {", ".join(missing)}' if missing else
                f'does not list {", ".join(extra)}')
        raise BagError(f'{meta_path} is stale: it {what}; ' + SALVAGE_HINT.format(bag=bag))
    if all(n.endswith('.zstd') for n in listed) and listed:
        return  # file-compressed bags: counting needs decompression, trust the metadata
    actual: dict[str, int] = {}
    for name in listed:
        try:
            with Reader(bag / name) as reader:
                for conn in reader.connections:
                    actual[conn.topic] = actual.get(conn.topic, 0) + int(conn.msgcount)
        except Exception as exc:  # noqa: BLE001 - rosbags/apsw raise several types
            raise damage_error(bag / name, exc, 'opening it') from None
    wrong = [(t, counts.get(t, 0), actual.get(t, 0)) for t in sorted(set(counts) | set(actual))
             if counts.get(t, 0) != actual.get(t, 0)]
    if wrong:
        diffs = ', '.join(f'{t}: {a} listed, {b} stored' for t, a, b in wrong[:5])
        raise BagError(f'{meta_path} is stale: message counts do not match the storage ({diffs}); '
                       + SALVAGE_HINT.format(bag=bag))


def open_reader(path, check_metadata: bool = True, typed: bool = True):
    """Open a bag; returns ``(reader, resolved_path)``; the caller closes the reader.

    ``typed``: rosbags' ``AnyReader``, which deserialises. Bags from ROS 2 Humble and older
    carry no message definitions: it falls back to Humble's types
    (sensor_msgs/geometry_msgs/nav_msgs/tf2_msgs are identical in Humble..Kilted). Otherwise
    the plain rosbag2 ``Reader``, for raw bytes of any type (replay, topic listings).
    Damage and stale metadata raise :class:`BagError` naming the file.
    """
    bag = resolve_bag(path)
    if bag.is_dir() and check_metadata:
        _metadata_check(bag)
    try:
        if typed:
            from rosbags.highlevel import AnyReader
            from rosbags.typesys import Stores, get_typestore

            reader = AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        else:
            from rosbags.rosbag2 import Reader

            reader = Reader(bag)
        reader.open()
    except Exception as exc:  # noqa: BLE001 - rosbags raises several types for unreadable bags
        if 'missing' in str(exc) and bag.is_dir():
            raise BagError(f'{bag / "metadata.yaml"} is stale: {exc}; '
                           + SALVAGE_HINT.format(bag=bag)) from None
        raise damage_error(bag, exc, 'opening it') from None
    return reader, bag


@contextmanager
def bag_reader(path, check_metadata: bool = True, typed: bool = True):
    """Open a bag as :func:`open_reader` does, closing it on exit.

    ``with bag_reader(path) as (reader, bag):``
    """
    reader, bag = open_reader(path, check_metadata, typed)
    try:
        yield reader, bag
    finally:
        reader.close()


def topic_counts(path) -> dict[str, tuple[str, int]]:
    """``{topic: (msgtype, message count)}`` of a bag."""
    with bag_reader(path, typed=False) as (reader, _):
        out: dict[str, tuple[str, int]] = {}
        for c in reader.connections:
            prev = out.get(c.topic, (c.msgtype, 0))
            out[c.topic] = (c.msgtype, prev[1] + c.msgcount)
        return out


def iter_messages(reader, connections, bag) -> Iterator:
    """``reader.messages(connections)`` with read failures turned into a :class:`BagError`."""
    if not connections:  # rosbags reads *every* message for an empty connection list
        return
    it = reader.messages(connections=connections)
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - apsw/sqlite3/rosbags/zstd errors alike
            raise damage_error(bag, exc) from None
        yield item


def deserialize(reader, raw, msgtype: str, bag):
    """Deserialise one message; a payload that cannot be decoded is damage too."""
    try:
        return reader.deserialize(raw, msgtype)
    except Exception as exc:  # noqa: BLE001 - garbage bytes raise anything
        raise damage_error(bag, exc, f'decoding a {msgtype} message') from None


def topics(reader) -> dict[str, str]:
    """``{topic: msgtype}`` of every connection."""
    return {c.topic: c.msgtype for c in reader.connections}


def topic_listing(reader) -> str:
    """Human-readable list of the bag's topics and types (for error messages)."""
    found = topics(reader)
    if not found:
        return 'the bag has no topics'
    return 'topics in the bag: ' + ', '.join(f'{t} [{m}]' for t, m in sorted(found.items()))


def pick_topic(reader, wanted: str | None, types: tuple[str, ...], what: str, bag,
               flag: str = '') -> str:
    """``wanted`` checked against the bag, or the only topic of one of ``types``.

    Images prefer the single raw topic when a compressed one sits next to it.
    """
    found_topics = topics(reader)
    hint = f' (pass {flag})' if flag else ''
    if wanted is not None:
        if wanted not in found_topics:
            raise BagError(f'{what} topic {wanted!r} is not in bag {bag}; '
                           f'{topic_listing(reader)}')
        if found_topics[wanted] not in types:
            raise BagError(f'{what} topic {wanted!r} has type {found_topics[wanted]}, expected '
                           f'one of {", ".join(types)}; {topic_listing(reader)}')
        return wanted
    found = sorted(t for t, m in found_topics.items() if m in types)
    if what == 'image' and len(found) > 1:
        raw = [t for t in found if found_topics[t] == IMAGE_TYPES[0]]
        found = raw if len(raw) == 1 else found
    if len(found) != 1:
        raise BagError(f'{"no" if not found else "several"} {what} topic(s) in bag {bag}; name '
                       f'one explicitly{hint}. {topic_listing(reader)}')
    return found[0]


def camera_info_topic(reader, image_topic: str) -> str | None:
    """The image topic's camera_info topic if the bag has it as a CameraInfo, else None.

    The rule is image_transport's (:func:`posenet_ros.core.ros_conversions.camera_info_topic`):
    ``<ns>/image_raw`` and ``<ns>/image_raw/compressed`` -> ``<ns>/camera_info``.
    """
    topic = ros_conversions.camera_info_topic(image_topic)
    return topic if topics(reader).get(topic) == CAMERA_INFO_TYPE else None


def read_camera_info(reader, topic: str, bag) -> np.ndarray | None:
    """K (3x3, OpenCV pixels) of the first CameraInfo on ``topic``; None when uncalibrated."""
    if topics(reader).get(topic) != CAMERA_INFO_TYPE:
        raise BagError(f'camera_info topic {topic!r} is missing or not a CameraInfo in {bag}; '
                       f'{topic_listing(reader)}')
    conns = [c for c in reader.connections if c.topic == topic]
    for conn, _, raw in iter_messages(reader, conns, bag):
        k = np.asarray(deserialize(reader, raw, conn.msgtype, bag).k, np.float64).reshape(3, 3)
        if k[0, 0] <= 0 or k[1, 1] <= 0:
            warnings.warn(f'{topic} in {bag} has an uncalibrated K (fx or fy <= 0); frames get '
                          'no intrinsics', stacklevel=3)
            return None
        return intrinsics_matrix(k[0, 0], k[1, 1], k[0, 2], k[1, 2])
    return None


def first_frame_id(reader, topic: str, bag) -> str:
    """``header.frame_id`` of the first message on ``topic`` ('' when none or empty)."""
    conns = [c for c in reader.connections if c.topic == topic]
    for conn, _, raw in iter_messages(reader, conns, bag):
        return strip_frame(deserialize(reader, raw, conn.msgtype, bag).header.frame_id)
    return ''


def static_tree(reader, bag) -> TfTree:
    """The TF tree of the bag's ``/tf_static`` (the newest value of each edge)."""
    tree = TfTree()
    conns = [c for c in reader.connections if c.topic == '/tf_static' and c.msgtype == TF_TYPE]
    for conn, _, raw in iter_messages(reader, conns, bag):
        tree.add_message(deserialize(reader, raw, conn.msgtype, bag), static=True)
    return tree


def add_frame_args(ap) -> None:
    """``--pose-frame``, ``--camera-frame``, ``--camera-in-base`` for commands reading bags."""
    ap.add_argument('--pose-frame', default=None,
                    help='bag: the frame a PoseStamped/PoseWithCovarianceStamped pose topic '
                         'describes, e.g. base_link (default: a PoseStamped is the camera; a '
                         "PoseWithCovarianceStamped needs it; Odometry's child_frame_id is used)")
    ap.add_argument('--camera-frame', default=None,
                    help="bag: the camera optical frame of the labels (default: the images' "
                         'header.frame_id)')
    ap.add_argument('--camera-in-base', nargs=7, type=float, default=None,
                    metavar=('X', 'Y', 'Z', 'QX', 'QY', 'QZ', 'QW'),
                    help='bag: pose of the camera optical frame in the frame the poses '
                         "describe (e.g. base_link), used instead of the bag's /tf_static")


def frame_kwargs(args) -> dict:
    """The BagDataset keyword arguments of :func:`add_frame_args`' flags."""
    return {'pose_frame': args.pose_frame, 'camera_frame': args.camera_frame,
            'camera_in_base': args.camera_in_base}
