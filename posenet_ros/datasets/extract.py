"""``posenet-ros extract-bag``: turn a rosbag2 into a manifest dataset folder (PNG images).

Example::

    posenet-ros extract-bag recording/ --out data/lab \
        --image-topic /camera/color/image_raw/compressed \
        --tf map camera_color_optical_frame --test-after 600
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import cv2

from posenet_ros.core.errors import ConfigError, DatasetError
from posenet_ros.datasets.bagio import add_frame_args, frame_kwargs
from posenet_ros.datasets.manifest import INFO_FILE, MANIFEST_FILE, write_manifest
from posenet_ros.datasets.rosbag_reader import BagDataset, BagStats
from posenet_ros.datasets.splits import check_split, warn_near_copies
from posenet_ros.datasets.tf_timing import parse_max_gap
from posenet_ros.datasets.types import PoseSample

__all__ = ['extract_bag', 'assign_split', 'main']


def assign_split(index: int, stamp: float | None, start: float | None, test_every: int = 0,
                 test_after: float | None = None) -> str:
    """Split ('train' or 'test') of the ``index``-th kept frame.

    Every ``test_every``-th frame (the last of each group of N) and/or every frame ``test_after``
    seconds after ``start`` is 'test'.
    """
    if test_every and index % test_every == test_every - 1:
        return 'test'
    if test_after is not None and stamp is not None and start is not None \
            and stamp - start >= test_after:
        return 'test'
    return 'train'


def extract_bag(bag, out_dir, image_topic: str | None = None, pose_topic: str | None = None,
                tf: tuple[str, str] | None = None, camera_info_topic: str | None = None,
                max_gap=None, test_every: int = 0, test_after: float | None = None,
                every_n: int = 1, overwrite: bool = False, progress: bool = True,
                camera_frame: str | None = None, pose_frame: str | None = None,
                camera_in_base=None) -> BagStats:
    """Write ``out_dir/images/*.png`` + ``poses.csv`` + ``dataset.json`` from a bag.

    Labels are camera optical frame poses: a pose source of another frame (e.g. base_link
    odometry) is composed with the extrinsic from ``camera_in_base`` or the bag's /tf_static
    (see :class:`BagDataset` for ``camera_frame``, ``pose_frame``, ``camera_in_base``).

    Split rule: ``test_every=N`` puts every N-th kept frame in 'test'; ``test_after=T`` puts
    frames recorded T seconds after the first kept frame in 'test'; neither: all 'train'.
    Test frames that are near-copies of training frames are counted
    (:func:`~posenet_ros.datasets.splits.check_split`, in ``stats.split_check``), with a warning
    when they are many (as ``test_every`` makes them on a 15-30 Hz camera).
    Returns the :class:`BagStats` (also stored in dataset.json).
    """
    from posenet_ros.core.progress import progress as _progress

    if test_every < 0 or (test_after is not None and test_after < 0):
        raise ConfigError('test_every and test_after must be >= 0')
    out_dir = Path(out_dir)
    if (out_dir / MANIFEST_FILE).exists() or (out_dir / 'images').exists():
        if not overwrite:
            raise DatasetError(f'{out_dir} already holds a dataset; choose another --out or '
                               'pass --force to replace it')
        shutil.rmtree(out_dir / 'images', ignore_errors=True)
        for name in (MANIFEST_FILE, INFO_FILE):
            (out_dir / name).unlink(missing_ok=True)
    img_dir = out_dir / 'images'
    samples = []
    with BagDataset(bag, image_topic=image_topic, pose_topic=pose_topic, tf=tf,
                    camera_info_topic=camera_info_topic, max_gap=max_gap, every_n=every_n,
                    camera_frame=camera_frame, pose_frame=pose_frame,
                    camera_in_base=camera_in_base) as ds:
        img_dir.mkdir(parents=True, exist_ok=True)
        start = None
        bar = _progress(ds, desc='extract', unit='frame', disable=not progress)
        for sample in bar:
            start = sample.stamp if start is None else start
            split = assign_split(len(samples), sample.stamp, start, test_every, test_after)
            path = img_dir / f'{len(samples):06d}.png'
            if not cv2.imwrite(str(path), cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR)):
                raise DatasetError(f'cannot write {path}; check disk space and permissions')
            samples.append(PoseSample(
                position=sample.position, quaternion=sample.quaternion, split=split,
                image_path=path, stamp=sample.stamp, intrinsics=sample.intrinsics,
                name=path.name))
        ds.check_overlap()
        stats = ds.stats
    check = check_split(samples)
    stats.split_check = check.as_dict()
    warn_near_copies(check, str(out_dir))
    frames = dict(stats.frames) or {'map_frame': stats.pose_frame}
    info = {'format': 'posenet_ros-manifest', 'version': 1, 'source': 'rosbag2',
            'frames': frames, 'split_rule': {'test_every': test_every, 'test_after': test_after},
            'bag': stats.as_dict()}
    write_manifest(out_dir, samples, info=info)
    return stats


def main(argv: list[str] | None = None) -> int:
    """CLI wrapper of :func:`extract_bag`."""
    ap = argparse.ArgumentParser(prog='posenet-ros extract-bag',
                                 description='Turn a rosbag2 (sqlite3 or MCAP) into a dataset '
                                             'folder (poses.csv + PNG images).')
    ap.add_argument('bag', type=Path, help='rosbag2 folder (or .db3/.mcap file)')
    ap.add_argument('--out', required=True, type=Path, help='output dataset folder')
    ap.add_argument('--image-topic', help='Image or CompressedImage topic (default: the only one)')
    src = ap.add_mutually_exclusive_group()
    src.add_argument('--pose-topic', help='PoseStamped / PoseWithCovarianceStamped / Odometry '
                                          'topic in the map frame (of the camera, or of a frame '
                                          'the extrinsic maps to the camera)')
    src.add_argument('--tf', nargs=2, metavar=('MAP_FRAME', 'CAMERA_FRAME'),
                     help='compose the pose from /tf + /tf_static instead')
    add_frame_args(ap)
    ap.add_argument('--camera-info-topic', help='CameraInfo topic (default: next to the image)')
    ap.add_argument('--max-gap', nargs='+', metavar='[FRAME=]SECONDS', default=None,
                    help='largest gap (s) between two samples of a pose edge to interpolate '
                         "across: one value for every edge, or per edge by child frame (or "
                         "pose topic), e.g. odom=0.5 (default: each edge's own, 2.5 sample "
                         'periods and at least 0.1 s)')
    ap.add_argument('--test-after', type=float, default=None,
                    help="frames T seconds after the first one go to 'test' (hold out time; "
                         'default: no test split, e.g. when a separate bag is the test set)')
    ap.add_argument('--test-every', type=int, default=0,
                    help="put every N-th kept frame in 'test' (warned against: neighbouring "
                         'frames of a camera are near-copies)')
    ap.add_argument('--every-n', type=int, default=1, help='keep every N-th image (default 1)')
    ap.add_argument('--force', action='store_true', help='replace an existing dataset in --out')
    ap.add_argument('--quiet', action='store_true', help='no progress bar')
    args = ap.parse_args(argv)
    stats = extract_bag(args.bag, args.out, image_topic=args.image_topic,
                        pose_topic=args.pose_topic, tf=tuple(args.tf) if args.tf else None,
                        camera_info_topic=args.camera_info_topic,
                        max_gap=parse_max_gap(args.max_gap),
                        test_every=args.test_every, test_after=args.test_after,
                        every_n=args.every_n, overwrite=args.force, progress=not args.quiet,
                        **frame_kwargs(args))
    print(f'{args.out}: {stats.n_used} frames written from {stats.n_images} images on '
          f'{stats.image_topic} (poses: {stats.pose_source}); skipped {stats.n_no_pose} without '
          f'a pose, {stats.n_subsampled} by --every-n, {stats.n_undecodable} undecodable; '
          f'intrinsics: {stats.intrinsics_source or "none"}')
    print('pose edges: ' + ', '.join(
        f"{name} {e['rate_hz']:g} Hz, max gap {e['max_gap']:g} s"
        + (f", future-dated {e['future_dated']:g} s (read at publication)"
           if e['future_dated'] else '') for name, e in stats.edges.items()))
    if stats.n_no_pose:
        print(f'without a pose: {stats.reasons()}')
    check = stats.split_check
    print(f"split: {check['n_train']} train, {check['n_test']} test"
          + (f", {check['n_near_copies']} test frames near-copies of training frames"
             if check['n_test'] else ''))
    if stats.extrinsic:
        print(f'labels are of camera frame {stats.camera_frame!r}: poses of {stats.pose_of!r} '
              f'composed with the extrinsic from {stats.extrinsic}')
    return 0
