"""Pose sources that are not the camera: base_link odometry plus /tf_static gives camera labels.

The bag is a robot's recording: rendered frames of the synthetic courtyard on
/camera/image_raw (frame camera_optical), nav_msgs/Odometry of base_link in odom on /odom, and
/tf_static base_link -> camera_link -> camera_optical (a mounting offset and tilt, then the
REP-103 optical rotation). The true camera poses are those the frames were rendered from.
"""

import csv
import json

import numpy as np
import pytest
import transforms3d.quaternions as tq
from helpers_data import rot

from posenet_ros.cli import main as cli_main
from posenet_ros.core.errors import BagError
from posenet_ros.core.geometry import invert, matrix_to_pose, pose_to_matrix
from posenet_ros.datasets import load_dataset, read_bag
from posenet_ros.tools import synthetic as syn

T0 = 2000.0
N = 16
W, H = 48, 40
# base_link -> camera_link: 0.25 m forward, 0.6 m up, pitched 12 deg down.
T_BASE_LINK = pose_to_matrix([0.25, 0.0, 0.6], tq.mat2quat(rot([0, 1, 0], 12)))
# camera_link (x forward, z up) -> camera_optical (z forward, x right, y down): REP 103.
T_LINK_OPT = np.array([[0.0, 0.0, 1.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
T_BASE_CAM = T_BASE_LINK @ T_LINK_OPT
CHAIN = 'tf_static base_link->camera_link->camera_optical'


def _truth():
    """True T_odom_cam of each frame (odom coincides with the rendered scene's map)."""
    return [pose_to_matrix(p, q) for p, q in syn.trajectory('train', 300, 0)[:N]]


def write_robot_bag(path, tf_static: bool = True, amcl: bool = False, storage='sqlite3'):
    """The robot bag described in the module docstring; returns the true camera poses."""
    cfg = syn.SceneConfig(width=W, height=H, fx=W / 2 / np.tan(np.pi / 6))
    scene, K = syn.make_scene(0), cfg.K()
    truth = _truth()
    with syn.RosbagWriter(path, storage) as bag:
        if tf_static:
            bag.tf(T0, [('base_link', 'camera_link', T_BASE_LINK),
                        ('camera_link', 'camera_optical', T_LINK_OPT)], static=True)
        for i, T_cam in enumerate(truth):
            t = T0 + i * 0.1
            T_base = T_cam @ invert(T_BASE_CAM)  # T_odom_base
            p, q = matrix_to_pose(T_base)
            bag.pose('/odom', t, p, q, frame_id='odom', msgtype='nav_msgs/msg/Odometry',
                     child_frame_id='base_link')
            if amcl:
                bag.pose('/amcl_pose', t, p, q, frame_id='map',
                         msgtype='geometry_msgs/msg/PoseWithCovarianceStamped')
            cp, cq = matrix_to_pose(T_cam)
            bag.image('/camera/image_raw', t, syn.render(scene, cp, cq, K, W, H),
                      frame_id='camera_optical')
            bag.camera_info('/camera/camera_info', t, K, W, H, frame_id='camera_optical')
    return truth


def _assert_camera_labels(samples, truth, first=0, step=1):
    """Each sample's label is the true camera pose of its frame (exact transforms: 1e-6)."""
    assert samples
    for s in samples:
        i = int(round((s.stamp - T0) / 0.1))
        T = truth[i]
        assert np.abs(s.matrix[:3, 3] - T[:3, 3]).max() < 1e-6, (i, s.matrix, T)
        assert np.abs(s.matrix[:3, :3] - T[:3, :3]).max() < 1e-6, i


@pytest.fixture(scope='module')
def robot_bags(tmp_path_factory):
    root = tmp_path_factory.mktemp('robot')
    truth = write_robot_bag(root / 'with_tf')
    write_robot_bag(root / 'no_tf', tf_static=False, amcl=True)
    return root, truth


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_base_odometry_with_tf_static_reads_as_camera_poses(tmp_path, storage):
    truth = write_robot_bag(tmp_path / 'b', storage=storage)
    samples, stats = read_bag(tmp_path / 'b')  # the bag's only image and pose topics
    assert len(samples) == N
    _assert_camera_labels(samples, truth)
    assert (stats.pose_of, stats.camera_frame, stats.pose_frame) == \
        ('base_link', 'camera_optical', 'odom')
    assert stats.extrinsic == CHAIN
    # The raw odometry is not the camera: without the extrinsic the labels would be ~0.6 m and
    # ~90 deg off (this is what the reader did before it read child_frame_id).
    T_base = truth[0] @ invert(T_BASE_CAM)
    assert np.linalg.norm(T_base[:3, 3] - samples[0].matrix[:3, 3]) > 0.5


@pytest.mark.slow
def test_extract_then_train_feed_camera_labels(robot_bags, tmp_path, capsys, monkeypatch):
    from posenet_ros import datasets
    from posenet_ros.training.config import load_config
    from posenet_ros.training.train import train

    root, truth = robot_bags
    out = tmp_path / 'ds'
    assert cli_main(['extract-bag', str(root / 'with_tf'), '--out', str(out), '--test-every',
                     '4', '--quiet']) == 0
    printed = capsys.readouterr().out
    assert "labels are of camera frame 'camera_optical'" in printed and CHAIN in printed
    info = json.loads((out / 'dataset.json').read_text())
    assert info['frames']['map_frame'] == 'odom'
    assert info['frames']['camera_frame'] == 'camera_optical'
    assert info['frames']['pose_of'] == 'base_link' and info['frames']['extrinsic'] == CHAIN
    _assert_camera_labels(load_dataset(out, 'all'), truth)

    # Train on the extracted dataset and on the bag itself; record what the trainer loads.
    fed = []
    real = datasets.load_dataset

    def spy(path, split='train', *a, **kw):
        samples = real(path, split, *a, **kw)
        fed.append((str(path), split, samples))
        return samples

    monkeypatch.setattr(datasets, 'load_dataset', spy)
    for name, data in (('extracted', out), ('bag', root / 'with_tf')):
        cfg = load_config(None, dict(
            dataset=str(data), backbone='mobilenet_v3_small', pretrained=None, resize=40,
            crop=32, epochs=1, batch_size=4, lr=1e-3, deterministic=True, num_threads=1,
            progress=False, export=False, val_split=None, run_dir=str(tmp_path / name),
            cache_dir=str(tmp_path / f'{name}_cache'), export_dir=str(tmp_path / name)))
        result = train(cfg)
        assert result.last_checkpoint.is_file()
    assert {(p, split) for p, split, _ in fed} >= {(str(out), 'train'),
                                                   (str(root / 'with_tf'), 'train')}
    for _, _, samples in fed:
        _assert_camera_labels(samples, truth)
    assert len(fed[0][2]) == N - N // 4 and len(fed[-1][2]) == N


def test_without_tf_static_every_reader_stops_naming_both_frames(robot_bags, tmp_path, capsys):
    from posenet_ros.sfm import label

    root, truth = robot_bags
    bag = root / 'no_tf'

    def check(msg):
        assert "'base_link'" in msg and "'camera_optical'" in msg, msg
        assert '/tf_static' in msg and '--camera-in-base' in msg, msg

    assert cli_main(['extract-bag', str(bag), '--out', str(tmp_path / 'ds'), '--pose-topic',
                     '/odom', '--quiet']) == 1
    check(capsys.readouterr().err)
    with pytest.raises(BagError) as exc:
        load_dataset(bag, 'train', pose_topic='/odom')  # what training on the bag does
    check(str(exc.value))
    model = tmp_path / 'model.ts'
    model.write_bytes(b'not reached: the bag is checked before the model is loaded')
    assert cli_main(['evaluate', '--model', str(model), '--bag', str(bag), '--pose-topic',
                     '/odom', '--out', str(tmp_path / 'ev'), '--quiet']) == 1
    check(capsys.readouterr().err)
    # label picks the bag's pose topic itself: with /odom and /amcl_pose it needs to be told;
    # told /odom, it refuses base_link poses as camera labels before any SfM work.
    with pytest.raises(BagError) as exc:
        label.label(bag, tmp_path / 'lab', pose_topic='/odom', progress=False)
    check(str(exc.value))
    # The explicit extrinsic fixes it.
    p, q = matrix_to_pose(T_BASE_CAM)
    xyzw = [q[1], q[2], q[3], q[0]]
    assert cli_main(['extract-bag', str(bag), '--out', str(tmp_path / 'ds2'), '--pose-topic',
                     '/odom', '--camera-in-base', *map(str, [*p, *xyzw]), '--quiet']) == 0
    _assert_camera_labels(load_dataset(tmp_path / 'ds2', 'all'), truth)
    info = json.loads((tmp_path / 'ds2' / 'dataset.json').read_text())
    assert info['frames']['extrinsic'] == 'camera_in_base'


def test_pose_with_covariance_needs_its_frame_named(robot_bags):
    root, truth = robot_bags
    with pytest.raises(BagError, match=r'PoseWithCovarianceStamped.*--pose-frame base_link'):
        read_bag(root / 'no_tf', pose_topic='/amcl_pose')
    p, q = matrix_to_pose(T_BASE_CAM)
    samples, stats = read_bag(root / 'no_tf', pose_topic='/amcl_pose', pose_frame='base_link',
                              camera_in_base=[*p, q[1], q[2], q[3], q[0]])
    _assert_camera_labels(samples, truth)
    assert stats.pose_frame == 'map' and stats.extrinsic == 'camera_in_base'
    with pytest.raises(BagError, match='contradicts the child_frame_id'):
        read_bag(root / 'no_tf', pose_topic='/odom', pose_frame='camera_optical')
    with pytest.raises(BagError, match=r'not a rigid transform.*must be unit.*norm is 2\.0'):
        read_bag(root / 'no_tf', pose_topic='/odom', camera_in_base=[0, 0, 0, 0, 0, 0, 2])
    with pytest.raises(BagError, match='not a rigid transform'):
        read_bag(root / 'no_tf', pose_topic='/odom', camera_in_base=np.diag([2.0, 1, 1, 1]))


@pytest.mark.slow
def test_evaluate_on_base_odometry_uses_camera_ground_truth(robot_bags, tmp_path):
    from helpers_model import make_tiny_export

    from posenet_ros.evaluation.evaluate import evaluate

    root, truth = robot_bags
    model = make_tiny_export(tmp_path, crop=32)
    evaluate(model, tmp_path / 'ev', bag=root / 'with_tf', pose_topic='/odom', progress=False,
             baselines=False)
    with open(tmp_path / 'ev' / 'frames.csv', newline='') as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N
    for row in rows:
        i = int(round((float(row['stamp']) - T0) / 0.1))
        p = np.array([float(row[f'true_{k}']) for k in 'xyz'])
        q = np.array([float(row[f'true_q{k}']) for k in 'wxyz'])
        assert np.abs(pose_to_matrix(p, q) - truth[i]).max() < 1e-6
    summary = json.loads((tmp_path / 'ev' / 'summary.json').read_text())
    assert CHAIN in json.dumps(summary)
