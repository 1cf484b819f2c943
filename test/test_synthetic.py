"""The synthetic courtyard: geometry of the renderer, determinism, trajectories, bag round trip."""

import time

import numpy as np
import pytest
from helpers_data import render_tiny_scene

from posenet_ros.cli import main as cli_main
from posenet_ros.core.geometry import (
    matrix_to_quat,
    pose_to_matrix,
    rotation_error_deg,
    translation_error,
)
from posenet_ros.datasets import load_dataset, load_image, read_bag
from posenet_ros.tools.synthetic import (
    SceneConfig,
    camera_matrix,
    look_rotation,
    make_scene,
    render,
    trajectory,
    write_bag,
)


@pytest.fixture(scope='module')
def scene():
    return make_scene(0)


def _magenta_blobs(img):
    """Centroids of magenta blobs that do not touch the image border."""
    import cv2

    m = ((img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] > 200)).astype(np.uint8)
    n, labels, stats, centroids = cv2.connectedComponentsWithStats(m, connectivity=8)
    h, w = m.shape
    keep = []
    for i in range(1, n):
        x, y, bw, bh, area = stats[i]
        if x > 0 and y > 0 and x + bw < w and y + bh < h and area > 10:
            keep.append(centroids[i])
    return np.array(keep).reshape(-1, 2)


def test_rendered_markers_land_on_projected_pixels(scene):
    # Every marker, seen from two poses (with yaw offset and roll): each magenta blob in the
    # rendered image must sit on the pinhole projection of one marker, and the target marker
    # must be found.
    K = camera_matrix(160, 120, 140.0)
    for marker in scene.markers:
        for dist, yaw_off, roll in ((2.0, 8.0, 0.0), (3.0, -12.0, 20.0)):
            normal = np.zeros(3)
            axis = int(np.argmin([min(abs(marker[0] - b) for b in (-8, 8)),
                                  min(abs(marker[1] - b) for b in (-6, 6)), 99]))
            normal[axis] = -np.sign(marker[axis])  # stand in front of the marker's wall
            cam = marker + normal * dist + np.array([0, 0, 0.3])
            view = marker - cam
            yaw = np.arctan2(view[1], view[0]) + np.radians(yaw_off)
            pitch = np.arctan2(view[2], np.linalg.norm(view[:2]))
            R = look_rotation(yaw, pitch, np.radians(roll))
            img = render(scene, cam, matrix_to_quat(R), K, 160, 120)
            pc = (scene.markers - cam) @ R  # all markers in the camera frame
            proj = (pc @ K.T)[:, :2] / pc[:, 2:3]
            proj[pc[:, 2] <= 0] = np.inf
            target = (K @ (R.T @ (marker - cam)))
            target = target[:2] / target[2]
            blobs = _magenta_blobs(img)
            assert len(blobs), 'marker not visible'
            assert np.linalg.norm(blobs - target, axis=1).min() < 0.5
            for c in blobs:
                assert np.linalg.norm(proj - c, axis=1).min() < 0.5, (c, proj)


def test_same_seed_same_images_and_speed(scene):
    cfg = SceneConfig()
    p, q = trajectory('train', 10, 0)[3]
    a = render(scene, p, q, cfg.K(), cfg.width, cfg.height)
    b = render(make_scene(0), p, q, cfg.K(), cfg.width, cfg.height)
    c = render(make_scene(1), p, q, cfg.K(), cfg.width, cfg.height)
    assert a.shape == (240, 320, 3) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.std() > 30  # textured, not blank
    t0 = time.perf_counter()
    for p, q in trajectory('test', 10, 0):
        render(scene, p, q, cfg.K(), cfg.width, cfg.height)
    ms = (time.perf_counter() - t0) / 10 * 1e3
    assert ms < 100, f'{ms:.1f} ms per 320x240 frame'  # ~12 ms measured; loose for shared CPU


def test_trajectories_differ_and_stay_in_the_courtyard(scene):
    train, test = trajectory('train', 300, 0), trajectory('test', 100, 0)
    assert trajectory('train', 300, 0)[5][0].tolist() == train[5][0].tolist()
    pt = np.array([p for p, _ in train])
    qt = np.array([q for _, q in train])
    for p, q in test[::7]:
        d = translation_error(pt, p)
        assert d.min() > 1e-3  # never a training pose
        near = d < 0.6  # but close to training poses in position and heading
        assert near.any() and rotation_error_deg(qt[near], q).min() < 45
    for lo, hi, _ in scene.boxes:  # no camera inside a crate
        inside = np.all((pt > lo - 0.2) & (pt < hi + 0.2), axis=1)
        assert not inside.any()


def test_write_dataset_manifest(tmp_path):
    out = render_tiny_scene(tmp_path, n_train=6, n_test=3)
    train, test = load_dataset(out, 'train'), load_dataset(out, 'test')
    assert len(train) == 6 and len(test) == 3
    p, q = trajectory('test', 3, 0)[1]
    assert np.allclose(test[1].position, p) and np.allclose(test[1].quaternion, q)
    assert load_image(test[1]).shape == (48, 64, 3)
    assert np.allclose(test[1].intrinsics, camera_matrix(64, 48, 64 / 2 / np.tan(np.pi / 6)))


@pytest.mark.parametrize('storage', ['sqlite3', 'mcap'])
def test_bag_round_trip(tmp_path, scene, storage):
    cfg = SceneConfig(width=64, height=48, fx=55.4, n_train=4, n_test=5, rate=30.0)
    write_bag(tmp_path / 'bag', cfg, storage=storage, compressed=True, progress=False)
    expected = trajectory('test', 5, 0)
    for kwargs in ({'pose_topic': '/ground_truth/pose'}, {'tf': ('map', 'camera_optical')}):
        samples, stats = read_bag(tmp_path / 'bag', image_topic='/camera/image_raw', **kwargs)
        assert stats.n_used == 5 and stats.intrinsics_source == '/camera/camera_info'
        for s, (p, q) in zip(samples, expected):
            assert translation_error(s.position, p) < 1e-9
            assert rotation_error_deg(s.quaternion, q) < 1e-5
            assert np.allclose(s.intrinsics, cfg.K())
        # the stored image is exactly what the scene looks like from the stored pose
        assert np.array_equal(samples[2].image, render(scene, *expected[2], cfg.K(), 64, 48))
    stamps = [s.stamp for s in samples]
    assert np.allclose(np.diff(stamps), 1 / 30.0, atol=1e-6)
    jpeg, _ = read_bag(tmp_path / 'bag', image_topic='/camera/image_raw/compressed',
                       pose_topic='/ground_truth/pose')
    assert np.abs(jpeg[0].image.astype(int) - samples[0].image).mean() < 25  # JPEG, tiny image


def test_synth_cli(tmp_path, capsys):
    rc = cli_main(['synth', '--out', str(tmp_path), '--n-train', '3', '--n-test', '2',
                   '--width', '32', '--height', '24', '--bag', '--storage', 'mcap'])
    assert rc == 0
    assert len(load_dataset(tmp_path / 'dataset', 'all')) == 5
    # several pose topics now (camera and base truth, /odom): the camera's is named
    samples, _ = read_bag(tmp_path / 'bag', image_topic='/camera/image_raw',
                          pose_topic='/ground_truth/pose')
    assert len(samples) == 2 and samples[0].image.shape == (24, 32, 3)


def test_bag_tf_tree_odometry_and_base_truth(tmp_path):
    """The bag's TF tree, /odom and base truth agree with the camera's truth.

    map -> odom -> base_link on /tf, base_link -> camera_link -> camera_optical on /tf_static.
    """
    from rosbags.highlevel import AnyReader

    from posenet_ros.tools.synthetic import T_BASE_CAM, t_map_odom
    cfg = SceneConfig(width=32, height=24, fx=28.0, n_train=2, n_test=6, rate=10.0)
    bag = write_bag(tmp_path / 'bag', cfg, progress=False)
    expected = trajectory('test', 6, 0)
    # The TF chain to the optical frame reproduces the camera truth (through odom and the mount).
    cams, _ = read_bag(bag, image_topic='/camera/image_raw', tf=('map', 'camera_optical'))
    # TF to base_link: the reader composes the base poses with the bag's /tf_static mount, so it
    # gives the camera truth again, by another path.
    via_base, stats = read_bag(bag, image_topic='/camera/image_raw', tf=('map', 'base_link'))
    assert stats.frames['chain'] == ['map->odom', 'odom->base_link']
    assert stats.frames['extrinsic'] == 'tf_static base_link->camera_link->camera_optical'
    by_topic = {}
    with AnyReader([bag]) as reader:
        for conn, _, raw in reader.messages():
            by_topic.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    base_truth = [m.pose.position for m in by_topic['/ground_truth/base_pose']]
    for cam, cam2, base, (p, q) in zip(cams, via_base, base_truth, expected):
        assert translation_error(cam.position, p) < 1e-9
        assert rotation_error_deg(cam.quaternion, q) < 1e-5
        assert translation_error(cam2.position, p) < 1e-9
        assert rotation_error_deg(cam2.quaternion, q) < 1e-5
        t_map_base = pose_to_matrix(p, q) @ np.linalg.inv(T_BASE_CAM)
        assert translation_error(np.array([base.x, base.y, base.z]), t_map_base[:3, 3]) < 1e-9
    assert len(by_topic['/tf_static']) == 1 and len(by_topic['/odom']) == 6
    static = {(tf.header.frame_id, tf.child_frame_id)
              for tf in by_topic['/tf_static'][0].transforms}
    assert static == {('base_link', 'camera_link'), ('camera_link', 'camera_optical')}
    odom = by_topic['/odom'][-1]
    assert (odom.header.frame_id, odom.child_frame_id) == ('odom', 'base_link')
    # map -> odom is not the identity and drifts slowly (0.2 deg/s, 1 cm/s).
    first, last = t_map_odom(0.0), t_map_odom(5 / cfg.rate)
    assert np.linalg.norm(first[:3, 3]) > 0.3
    assert 0 < np.linalg.norm(last[:3, 3] - first[:3, 3]) < 0.01
    # The camera looks forward from 1 m above the base, pitched down 10 deg.
    assert np.isclose(T_BASE_CAM[2, 3], 1.0) and np.isclose(T_BASE_CAM[0, 3], 0.2)
    assert np.isclose(np.degrees(np.arcsin(-T_BASE_CAM[2, 2])), 10.0)
