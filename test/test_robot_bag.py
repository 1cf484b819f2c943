"""Labels from a bag recorded as a Nav2 robot with AMCL records it (the synthetic robot profile).

The bag (``posenet_ros.tools.synthetic.robot_bag``): 15 Hz JPEG images, wheel odometry
``odom -> base_footprint`` at 50 Hz drifting against the map, AMCL's ``map -> odom`` at 5 Hz
future-dated by 1.0 s, ``/amcl_pose`` on filter updates only, the mount on /tf_static. Labels
are checked against the bag's ``/ground_truth/pose`` (the true camera pose at each image).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from posenet_ros.core import geometry
from posenet_ros.core.errors import BagError
from posenet_ros.datasets.rosbag_reader import read_bag
from posenet_ros.datasets.splits import check_split, warn_near_copies
from posenet_ros.datasets.tf_timing import parse_max_gap
from posenet_ros.datasets.types import PoseSample

N = 60  # frames (4 s at 15 Hz)
CAM = 'camera_color_optical_frame'


@pytest.fixture(scope='module')
def robot_bag(tmp_path_factory) -> Path:
    from posenet_ros.tools.synthetic import SceneConfig, write_bag

    cfg = SceneConfig(seed=1, width=64, height=48, fx=55.0, n_train=N, n_test=8)
    return write_bag(tmp_path_factory.mktemp('robot') / 'bag', cfg, which='train',
                     progress=False, profile='robot')


def _messages(bag: Path, topic: str) -> list[tuple[int, object]]:
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        return [(rec, reader.deserialize(raw, c.msgtype))
                for c, rec, raw in reader.messages(connections=conns)]


def _ns(header) -> int:
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def _truth(bag: Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for _, m in _messages(bag, '/ground_truth/pose'):
        p, q = m.pose.position, m.pose.orientation
        out[_ns(m.header)] = (np.array([p.x, p.y, p.z]),
                              geometry.xyzw_to_wxyz(np.array([q.x, q.y, q.z, q.w])))
    return out


def _errors(samples, truth) -> tuple[np.ndarray, np.ndarray]:
    pos, rot = [], []
    for s in samples:
        p, q = truth[min(truth, key=lambda k: abs(k - s.stamp * 1e9))]
        pos.append(np.linalg.norm(s.position - p))
        rot.append(float(geometry.rotation_error_deg(s.quaternion, q)))
    return np.array(pos), np.array(rot)


def test_robot_bag_is_recorded_like_a_nav2_robot(robot_bag):
    tf = _messages(robot_bag, '/tf')
    edges: dict[str, list[tuple[int, int]]] = {}
    for rec, msg in tf:
        for t in msg.transforms:
            edges.setdefault(f'{t.header.frame_id}->{t.child_frame_id}', []).append(
                (rec, _ns(t.header)))
    assert set(edges) == {'map->odom', 'odom->base_footprint'}
    odom = np.array([s for _, s in edges['odom->base_footprint']])
    amcl = np.array(edges['map->odom'])
    assert np.median(np.diff(odom)) == pytest.approx(0.02e9, rel=1e-3)  # 50 Hz
    assert np.median(np.diff(amcl[:, 1])) == pytest.approx(0.2e9, rel=1e-3)  # 5 Hz
    # future-dated by transform_tolerance: stamped 1.0 s after the scan, recorded at it
    assert np.all(np.abs(amcl[:, 1] - amcl[:, 0] - 0.99e9) < 1e6)
    [(_, static)] = _messages(robot_bag, '/tf_static')
    assert [(t.header.frame_id, t.child_frame_id) for t in static.transforms] == [
        ('base_footprint', 'base_link'), ('base_link', 'camera_link'), ('camera_link', CAM)]
    images = _messages(robot_bag, '/camera/color/image_raw/compressed')
    assert len(images) == N and images[0][1].header.frame_id == CAM
    assert np.median(np.diff([_ns(m.header) for _, m in images])) == pytest.approx(1e9 / 15, 1e-3)
    assert len(_messages(robot_bag, '/camera/color/camera_info')) == N
    amcl_pose = _messages(robot_bag, '/amcl_pose')
    assert 0 < len(amcl_pose) <= len(amcl)  # on filter updates only
    assert {_ns(m.header) for _, m in amcl_pose} <= {int(s - 1e9) for s in amcl[:, 1]}


def test_labels_cover_the_robot_bag_and_say_why_not(robot_bag):
    samples, stats = read_bag(robot_bag, tf=('map', CAM))
    coverage = len(samples) / stats.n_images
    print(f'labels: {len(samples)}/{stats.n_images} ({coverage:.1%}); '
          f'without: {stats.reasons()}; edges: {stats.edges}')
    assert coverage >= 0.95
    # the recording starts between two scans: the first image has no map -> odom before it
    assert stats.no_pose_reasons == {'image before the first map -> odom': 1}
    assert stats.edges['map -> odom']['future_dated'] == pytest.approx(0.99, abs=1e-3)
    assert stats.edges['map -> odom']['max_gap'] == pytest.approx(0.5)
    assert stats.edges['odom -> base_footprint']['max_gap'] == pytest.approx(0.1)
    pos, rot = _errors(samples, _truth(robot_bag))
    # odometry interpolated between 50 Hz samples of a fast synthetic drive: millimetres
    assert np.median(pos) < 0.01 and pos.max() < 0.02 and rot.max() < 0.5, (pos, rot)


def test_tf2_reading_of_future_dated_stamps_lags_and_loses_the_first_second(robot_bag):
    """``future_dating=0`` reads AMCL's stamps as tf2 does: why labels move them back."""
    auto, _ = read_bag(robot_bag, tf=('map', CAM))
    as_tf2, stats = read_bag(robot_bag, tf=('map', CAM), future_dating=0)
    assert stats.edges['map -> odom']['future_dated'] == 0
    assert len(as_tf2) < len(auto) - 10  # no map -> odom stamped before the first scan + 1 s
    assert list(stats.no_pose_reasons) == ['image before the first map -> odom']
    truth = _truth(robot_bag)
    lagged, _ = _errors(as_tf2, truth)
    moved, _ = _errors(auto, truth)
    assert np.median(lagged) > 2 * np.median(moved)  # a second of the odometry's drift


def test_one_gap_for_every_edge_drops_what_per_edge_gaps_keep(robot_bag):
    samples, stats = read_bag(robot_bag, tf=('map', CAM), max_gap=0.1)
    assert len(samples) < N // 2
    assert stats.no_pose_reasons['map -> odom gap longer than its max gap'] > N // 2
    samples, stats = read_bag(robot_bag, tf=('map', CAM), max_gap={'odom': 0.3})
    assert len(samples) == N - 1 and stats.edges['map -> odom']['max_gap'] == 0.3
    with pytest.raises(BagError, match='no image'):
        read_bag(robot_bag, tf=('map', CAM), max_gap={'odom': 0.1, 'base_footprint': 0.001})


def test_parse_max_gap():
    assert parse_max_gap(None) is None and parse_max_gap(['0.3']) == 0.3
    assert parse_max_gap(['odom=0.5', '/amcl_pose=1', '0.2']) == {
        'odom': 0.5, '/amcl_pose': 1.0, '*': 0.2}
    for bad in (['x'], ['odom=-1'], ['odom=']):
        with pytest.raises(BagError, match='--max-gap'):
            parse_max_gap(bad)


def _drive(n: int, rate: float, speed: float = 0.5) -> list[PoseSample]:
    """A robot driving straight at ``speed`` m/s, a frame every ``1/rate`` s."""
    q = np.array([1.0, 0.0, 0.0, 0.0])
    return [PoseSample(position=np.array([speed * i / rate, 0.0, 0.3]), quaternion=q,
                       split='train', stamp=100.0 + i / rate, name=str(i)) for i in range(n)]


def test_every_nth_test_frame_is_a_near_copy_and_warned():
    frames = _drive(300, 15.0)
    for i, s in enumerate(frames):
        s.split = 'test' if i % 10 == 9 else 'train'
    check = check_split(frames)
    assert check.n_test == 30 and check.n_near_copies == 30
    with pytest.warns(UserWarning, match='near-copies.*--test-after'):
        assert warn_near_copies(check, 'data/x')


def test_holding_out_time_is_not_warned():
    frames = _drive(300, 15.0)  # 20 s, 10 m
    for s in frames:
        s.split = 'test' if s.stamp - 100.0 >= 15.0 else 'train'
    check = check_split(frames)
    assert 0 < check.n_near_copies < check.n_test * 0.25  # the boundary's first frames only
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert not warn_near_copies(check, 'data/x')
    # a revisit of the same place on a later pass is no near-copy (what relocalization is for)
    later = _drive(300, 15.0)
    for s in later:
        s.split, s.stamp = 'test', s.stamp + 600.0
    assert check_split(frames[:225] + later).n_near_copies == 0


def test_synth_cli_writes_the_robot_profile(tmp_path, capsys):
    from posenet_ros.cli import main

    assert main(['synth', '--out', str(tmp_path), '--bag', '--profile', 'robot', '--no-dataset',
                 '--n-test', '6', '--width', '32', '--height', '24']) == 0
    assert 'robot profile' in capsys.readouterr().out
    samples, stats = read_bag(tmp_path / 'bag', tf=('map', CAM))
    assert stats.image_topic == '/camera/color/image_raw/compressed' and len(samples) == 5


def test_amcl_pose_needs_its_frame_and_the_error_names_the_bags_base(robot_bag):
    with pytest.raises(BagError, match='--pose-frame base_footprint, the frame odometry moves'):
        read_bag(robot_bag, pose_topic='/amcl_pose')
    samples, stats = read_bag(robot_bag, pose_topic='/amcl_pose', pose_frame='base_footprint')
    assert stats.extrinsic.startswith('tf_static base_footprint->base_link') and samples
