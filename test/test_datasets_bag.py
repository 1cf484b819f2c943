"""rosbag2 reader on real bags written with rosbags (sqlite3 and MCAP)."""

import numpy as np
import pytest
from helpers_data import TEST_K, motion, point_in_front, project, write_pose_bag

from posenet_ros.core.errors import BagError
from posenet_ros.datasets import BagDataset, load_dataset, read_bag

STORAGES = ['sqlite3', 'mcap']
T0 = 1000.0


@pytest.mark.parametrize('storage', STORAGES)
@pytest.mark.parametrize('pose_type', ['geometry_msgs/msg/PoseStamped',
                                       'geometry_msgs/msg/PoseWithCovarianceStamped',
                                       'nav_msgs/msg/Odometry'])
def test_pose_topic_interpolated_and_projected(tmp_path, storage, pose_type):
    # Poses every 70 ms starting 30 ms before the first image: images fall between poses.
    write_pose_bag(tmp_path / 'b', storage, n_images=6, pose_times=np.arange(-0.03, 0.7, 0.07),
                   pose_type=pose_type)
    # A PoseWithCovarianceStamped names no child frame and is a base pose in ROS: say which.
    frame = {'pose_frame': 'cam_optical'} if 'Covariance' in pose_type else {}
    samples, stats = read_bag(tmp_path / 'b', image_topic='/cam/rgb8', pose_topic='/gt/pose',
                              **frame)
    assert stats.n_used == 6 and stats.n_no_pose == 0
    assert stats.pose_of == stats.camera_frame == 'cam_optical' and not stats.extrinsic
    assert stats.intrinsics_source == '/cam/camera_info'
    for s in samples:
        T = motion(s.stamp - T0)  # constant-rate motion: lerp/slerp are exact (up to the
        assert np.allclose(s.matrix, T, atol=1e-6)  # ~1e-7 of slerp's near-parallel lerp path)
        X = point_in_front(T, (0.4, 0.1, 2.5))
        expected = TEST_K[:2, :2] @ np.array([0.4 / 2.5, 0.1 / 2.5]) + TEST_K[:2, 2]
        assert np.allclose(project(s.intrinsics, s.matrix, X), expected, atol=1e-6)


@pytest.mark.parametrize('storage', STORAGES)
def test_tf_chain_with_static_and_every_n(tmp_path, storage):
    write_pose_bag(tmp_path / 'b', storage, n_images=8, tf_chain=True,
                   pose_times=np.arange(-0.03, 0.9, 0.07))
    samples, stats = read_bag(tmp_path / 'b', tf=('map', '/cam_optical'), every_n=2)
    assert stats.n_images == 8 and stats.n_subsampled == 4 and len(samples) == 4
    assert stats.frames['chain'] == ['map->odom', 'odom->base', 'base->cam_optical']
    for s in samples:
        T = motion(s.stamp - T0)
        # Edges are interpolated one by one, so the composed pose is close, not exact.
        assert np.linalg.norm(s.matrix[:3, 3] - T[:3, 3]) < 2e-3
        assert np.abs(s.matrix[:3, :3] - T[:3, :3]).max() < 1e-6


@pytest.mark.parametrize('storage', STORAGES)
def test_encodings_padding_and_compressed(tmp_path, storage):
    frames = write_pose_bag(tmp_path / 'b', storage, n_images=2, row_padding=5, compressed=True,
                            encodings=('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'))
    for enc in ('rgb8', 'bgr8', 'rgba8', 'bgra8'):
        samples, _ = read_bag(tmp_path / 'b', image_topic=f'/cam/{enc}', pose_topic='/gt/pose')
        assert all(np.array_equal(s.image, f) for s, f in zip(samples, frames)), enc
    samples, _ = read_bag(tmp_path / 'b', image_topic='/cam/mono8', pose_topic='/gt/pose')
    import cv2
    gray = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    assert np.array_equal(samples[0].image[..., 1], gray) and samples[0].image.shape[2] == 3
    samples, _ = read_bag(tmp_path / 'b', image_topic='/cam/rgb8/compressed',
                          pose_topic='/gt/pose')
    assert np.array_equal(samples[1].image, frames[1])  # PNG: lossless
    # image_transport: <ns>/<base>/compressed has its camera_info at <ns>/camera_info
    assert samples[1].intrinsics is not None


def test_max_gap_skips_and_counts(tmp_path):
    # Poses stop after 0.33 s and resume at 0.9 s: images at 0.4..0.8 have no pose.
    times = np.concatenate([np.arange(-0.03, 0.35, 0.07), [0.9, 0.97]])
    write_pose_bag(tmp_path / 'b', n_images=10, pose_times=times)
    samples, stats = read_bag(tmp_path / 'b', image_topic='/cam/rgb8', max_gap=0.1)
    assert stats.n_no_pose == 5 and stats.n_used == 5  # 0.4 .. 0.8 skipped; 0.9 is exact
    assert [round(s.stamp - T0, 3) for s in samples] == [0.0, 0.1, 0.2, 0.3, 0.9]
    samples, stats = read_bag(tmp_path / 'b', image_topic='/cam/rgb8', max_gap=1.0)
    assert stats.n_used == 10


def test_no_overlap_and_no_poses(tmp_path):
    write_pose_bag(tmp_path / 'late', n_images=3, pose_times=np.arange(50.0, 51.0, 0.05))
    with pytest.raises(BagError, match=r'no image .* has a pose.*pose stamps \[1050'):
        read_bag(tmp_path / 'late', image_topic='/cam/rgb8')
    write_pose_bag(tmp_path / 'none', n_images=3, pose_times=[])
    with pytest.raises(BagError, match='no pose topic'):
        read_bag(tmp_path / 'none', image_topic='/cam/rgb8')
    with pytest.raises(BagError, match='no /tf or /tf_static'):
        read_bag(tmp_path / 'none', image_topic='/cam/rgb8', tf=('map', 'cam'))


def test_unknown_topics_and_frames_list_the_bag(tmp_path):
    write_pose_bag(tmp_path / 'b', n_images=2, encodings=('rgb8', 'bgr8'), tf_chain=True)
    with pytest.raises(BagError, match=r"'/camera/image' is not in bag.*/cam/rgb8 "
                                       r'\[sensor_msgs/msg/Image\]'):
        read_bag(tmp_path / 'b', image_topic='/camera/image', tf=('map', 'cam_optical'))
    with pytest.raises(BagError, match='several image topic'):
        read_bag(tmp_path / 'b', tf=('map', 'cam_optical'))
    with pytest.raises(BagError, match=r'has type sensor_msgs/msg/CameraInfo'):
        read_bag(tmp_path / 'b', image_topic='/cam/camera_info', tf=('map', 'cam_optical'))
    with pytest.raises(BagError, match="frame 'camera' is not in the TF.*cam_optical"):
        read_bag(tmp_path / 'b', image_topic='/cam/rgb8', tf=('map', 'camera'))


def test_corrupt_and_empty_bag_paths(tmp_path):
    with pytest.raises(BagError, match='does not exist'):
        read_bag(tmp_path / 'nope', image_topic='/x')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(BagError, match='no metadata.yaml'):
        read_bag(tmp_path / 'empty', image_topic='/x')
    write_pose_bag(tmp_path / 'b', n_images=2)
    db3 = next((tmp_path / 'b').glob('*.db3'))
    db3.write_bytes(b'garbage' * 100)
    with pytest.raises(BagError, match='cannot open bag|corrupt'):
        read_bag(tmp_path / 'b', image_topic='/cam/rgb8')
    write_pose_bag(tmp_path / 'm', 'mcap', n_images=2)
    mcap = next((tmp_path / 'm').glob('*.mcap'))
    mcap.write_bytes(mcap.read_bytes()[:200])
    with pytest.raises(BagError):
        read_bag(tmp_path / 'm', image_topic='/cam/rgb8')


def test_load_dataset_bag_with_split_rule_and_lazy_iteration(tmp_path):
    write_pose_bag(tmp_path / 'b', 'mcap', n_images=6)
    test = load_dataset(tmp_path / 'b', 'test', image_topic='/cam/rgb8', test_every=3)
    assert [round(s.stamp - T0, 2) for s in test] == [0.2, 0.5]
    assert len(load_dataset(tmp_path / 'b', 'train', image_topic='/cam/rgb8')) == 6
    # a bare storage file works too, and BagDataset streams
    with BagDataset(next((tmp_path / 'b').glob('*.mcap')), image_topic='/cam/rgb8') as ds:
        first = next(iter(ds))
        assert first.image.shape == (24, 32, 3) and ds.stats.n_used == 1
