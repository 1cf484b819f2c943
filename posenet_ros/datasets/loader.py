"""``load_dataset(path, split)``: one entry point for every dataset kind, auto-detected."""

from __future__ import annotations

from pathlib import Path

from posenet_ros.core.errors import DatasetError
from posenet_ros.datasets.cambridge import is_cambridge, read_cambridge
from posenet_ros.datasets.manifest import is_manifest, read_manifest
from posenet_ros.datasets.seven_scenes import is_seven_scenes, read_seven_scenes
from posenet_ros.datasets.types import PoseSample, select_split

__all__ = ['load_dataset', 'detect_kind', 'KINDS']

KINDS = ('manifest', 'cambridge', '7scenes', 'bag')


def detect_kind(path) -> str:
    """Which reader fits ``path``: 'manifest', 'cambridge', '7scenes' or 'bag'."""
    from posenet_ros.datasets.rosbag_reader import is_bag

    path = Path(path)
    if not path.exists():
        raise DatasetError(f'dataset path {path} does not exist')
    if is_manifest(path):
        return 'manifest'
    if is_bag(path):
        return 'bag'
    if is_cambridge(path):
        return 'cambridge'
    if is_seven_scenes(path):
        return '7scenes'
    raise DatasetError(
        f'cannot tell what kind of dataset {path} is: expected poses.csv (manifest), '
        'dataset_train.txt/dataset_test.txt (Cambridge), TrainSplit.txt/TestSplit.txt (7-Scenes) '
        'or metadata.yaml/.db3/.mcap (rosbag2); pass kind= explicitly')


def load_dataset(path, split: str = 'train', kind: str = 'auto',
                 **bag_opts) -> list[PoseSample]:
    """Load ``split`` ('train', 'test', 'all'; manifests may define more) of a dataset.

    ``kind`` is 'auto' or one of :data:`KINDS`. For bags, ``bag_opts`` go to
    :class:`~posenet_ros.datasets.rosbag_reader.BagDataset` (``image_topic``, ``pose_topic``,
    ``tf``, ``camera_info_topic``, ``max_gap``, ``every_n``) plus the split rule of
    :func:`~posenet_ros.datasets.extract.assign_split` (``test_every``, ``test_after``); without a
    rule every frame is 'train'. Bag samples hold their images in memory.
    """
    path = Path(path)
    if kind == 'auto':
        kind = detect_kind(path)
    if kind not in KINDS:
        raise DatasetError(f'unknown dataset kind {kind!r}; choose auto or one of {KINDS}')
    if bag_opts and kind != 'bag':
        raise DatasetError(f'options {sorted(bag_opts)} only apply to bags, not to {kind} {path}')
    if kind == 'manifest':
        return read_manifest(path, split)
    if kind == 'cambridge':
        return read_cambridge(path, split)
    if kind == '7scenes':
        return read_seven_scenes(path, split)
    from posenet_ros.datasets.extract import assign_split
    from posenet_ros.datasets.rosbag_reader import read_bag

    test_every = int(bag_opts.pop('test_every', 0) or 0)
    test_after = bag_opts.pop('test_after', None)
    samples, _ = read_bag(path, **bag_opts)
    start = samples[0].stamp if samples else None
    for i, s in enumerate(samples):
        s.split = assign_split(i, s.stamp, start, test_every, test_after)
    return select_split(samples, split, path)
