"""Dataset readers: Cambridge Landmarks, 7-Scenes, rosbag2 and posenet_ros manifests.

Every reader returns ``list[PoseSample]`` in the project's convention (camera centre in the map
frame, camera-to-map wxyz quaternion of the optical frame); see ``docs/datasets.md``. The bag
reader imports ``rosbags`` only when used.
"""

from posenet_ros.datasets.cambridge import read_cambridge
from posenet_ros.datasets.loader import detect_kind, load_dataset
from posenet_ros.datasets.manifest import read_manifest, read_manifest_info, write_manifest
from posenet_ros.datasets.seven_scenes import read_seven_scenes
from posenet_ros.datasets.types import PoseSample, intrinsics_matrix, load_image

__all__ = [
    'PoseSample', 'load_image', 'intrinsics_matrix', 'load_dataset', 'detect_kind',
    'read_cambridge', 'read_seven_scenes', 'read_manifest', 'read_manifest_info',
    'write_manifest', 'read_bag', 'BagDataset', 'BagStats', 'extract_bag',
]


def __getattr__(name):
    # Lazy: the bag reader and extractor pull in rosbags and tqdm.
    if name in ('read_bag', 'BagDataset', 'BagStats'):
        from posenet_ros.datasets import rosbag_reader

        return getattr(rosbag_reader, name)
    if name == 'extract_bag':
        from posenet_ros.datasets.extract import extract_bag

        return extract_bag
    raise AttributeError(name)
