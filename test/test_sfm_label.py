"""``posenet-ros label``: real SfM (pycolmap, CPU SIFT) on rendered frames of the synthetic scene.

The frames are rendered from known poses, so the recovered labels are checked against the
truth: after the automatic alignment to the bag's pose topic they must be metric and close to
it. SfM is run once per module (~10-25 s); the whole module takes ~90 s on one core (training
a model on the labels is ~50 s of it).
"""

import json

import cv2
import numpy as np
import pytest
import torch
from helpers_learning import SABOTAGE, SEED, THREADS, check_below, sabotage_labels
from helpers_slow import slow_fixture

from posenet_ros.core.errors import SfMReconstructionError
from posenet_ros.core.geometry import rotation_error_deg, translation_error
from posenet_ros.datasets.manifest import read_manifest
from posenet_ros.sfm import importers, label
from posenet_ros.tools import synthetic as syn

pytest.importorskip('pycolmap')

N_FRAMES = 40
RATE = 10.0
EPOCHS = 30  # relocalization test: 3 steps of 8 frames per epoch, ~50 s on one core


@slow_fixture(scope='module')
def scene_bag(tmp_path_factory):
    """A bag with 40 frames (320x240) of the first lap, camera_info and ground-truth poses."""
    root = tmp_path_factory.mktemp('sfm_label')
    cfg = syn.SceneConfig(seed=SEED)
    scene, K = syn.make_scene(cfg.seed), cfg.K()
    # 40 consecutive poses of a 300-frame train trajectory: ~3.6 deg and ~0.1 m between frames.
    poses = syn.trajectory('train', 300, cfg.seed)[:N_FRAMES]
    # POSENET_TEST_SABOTAGE=labels: the bag's pose topic (the metric reference the SfM model is
    # aligned to) comes in shuffled order, so the label checks must fail.
    order = (np.random.default_rng(SEED).permutation(N_FRAMES) if SABOTAGE == 'labels'
             else np.arange(N_FRAMES))
    truth = {}
    with syn.RosbagWriter(root / 'bag') as bag:
        for i, (p, q) in enumerate(poses):
            t = 100.0 + i / RATE
            bag.image('/camera/image_raw', t, syn.render(scene, p, q, K, cfg.width, cfg.height))
            bag.camera_info('/camera/camera_info', t, K, cfg.width, cfg.height)
            bag.pose('/ground_truth/pose', t, *poses[order[i]])
            truth[f'images/frame_{i:06d}.png'] = (p, q)
    return root, truth, K


@pytest.fixture(scope='module')
def labelled(scene_bag):
    root, truth, K = scene_bag
    out = root / 'labels'
    rc = label.main([str(root / 'bag'), '--out', str(out), '--fps', str(RATE), '--matcher',
                     'sequential', '--test-every', '5'])
    assert rc == 0
    return out


@pytest.mark.learning
def test_label_bag_recovers_metric_poses(scene_bag, labelled):
    _, truth, K = scene_bag
    samples = read_manifest(labelled, 'all')
    info = json.loads((labelled / 'dataset.json').read_text())
    n_reg = info['sfm']['n_registered']
    assert info['sfm']['n_frames'] == N_FRAMES
    assert n_reg >= 0.75 * N_FRAMES, info['sfm']
    assert len(samples) == n_reg
    assert sorted(info['sfm']['unregistered'] + [s.name.split('/')[-1] for s in samples]) == \
        [f'frame_{i:06d}.png' for i in range(N_FRAMES)]
    assert info['units'] == 'metres'
    assert info['alignment']['reference_source'].startswith('bag topic /ground_truth/pose')
    assert info['sfm']['intrinsics_known'] and info['sfm']['matcher'] == 'sequential'
    # Labels in the true metric frame: the courtyard is 16 m x 12 m, the lap ~10 m across.
    t_err = [translation_error(s.position, truth[s.name][0]) for s in samples]
    r_err = [rotation_error_deg(s.quaternion, truth[s.name][1]) for s in samples]
    print(f'SfM labels: {n_reg}/{N_FRAMES} registered, median error {np.median(t_err):.3f} m '
          f'{np.median(r_err):.2f} deg, max {np.max(t_err):.3f} m, alignment residual median '
          f'{info["alignment"]["residual_m"]["median"]:.3f} m, SfM {info["sfm"]["seconds"]}')
    check_below('sfm.label_median_error_m', np.median(t_err), 0.10, str(t_err))
    check_below('sfm.label_median_error_deg', np.median(r_err), 1.0, str(r_err))
    check_below('sfm.alignment_residual_median_m', info['alignment']['residual_m']['median'],
                0.10)
    np.testing.assert_allclose(samples[0].intrinsics, K, atol=1e-6)
    assert {s.split for s in samples} == {'train', 'test'}
    assert all(s.stamp is not None and 100.0 <= s.stamp < 100.0 + N_FRAMES / RATE
               for s in samples)


# POSENET_TEST_SABOTAGE=extrinsic: an identity extrinsic (base poses taken as camera poses)
SABOTAGE_ARGS = ['--camera-in-base', *'0 0 0 0 0 0 1'.split()] if SABOTAGE == 'extrinsic' \
    else []


def test_label_bag_of_base_odometry_gives_camera_labels(scene_bag, tmp_path):
    """A robot bag: /odom of base_link (in odom) + /tf_static to the camera, no camera pose.

    label picks /odom itself, composes it with the static mounting, aligns SfM to the camera
    poses and writes the map frame it really used ('odom'), not 'map'.
    """
    import transforms3d.quaternions as tq
    from helpers_data import rot

    from posenet_ros.core.geometry import invert, matrix_to_pose, pose_to_matrix

    _, truth, K = scene_bag
    cfg = syn.SceneConfig(seed=SEED)
    scene = syn.make_scene(cfg.seed)
    T_base_link = pose_to_matrix([0.25, 0.0, 0.6], tq.mat2quat(rot([0, 1, 0], 12)))
    T_link_opt = syn.T_BASE_CAM  # any rigid mounting with the REP-103 optical rotation
    T_base_cam = T_base_link @ T_link_opt
    with syn.RosbagWriter(tmp_path / 'robot') as bag:
        bag.tf(100.0, [('base_link', 'camera_link', T_base_link),
                       ('camera_link', 'camera_optical', T_link_opt)], static=True)
        for i in range(N_FRAMES):
            t = 100.0 + i / RATE
            p, q = truth[f'images/frame_{i:06d}.png']
            bag.image('/camera/image_raw', t, syn.render(scene, p, q, K, cfg.width, cfg.height))
            bag.camera_info('/camera/camera_info', t, K, cfg.width, cfg.height)
            bp, bq = matrix_to_pose(pose_to_matrix(p, q) @ invert(T_base_cam))
            bag.pose('/odom', t, bp, bq, frame_id='odom', msgtype='nav_msgs/msg/Odometry',
                     child_frame_id='base_link')
    out = tmp_path / 'labels'
    assert label.main([str(tmp_path / 'robot'), '--out', str(out), '--fps', str(RATE),
                       '--matcher', 'sequential', '--test-every', '5', *SABOTAGE_ARGS]) == 0
    info = json.loads((out / 'dataset.json').read_text())
    assert info['frames']['map_frame'] == 'odom' and info['frames']['pose_of'] == 'base_link'
    assert info['frames']['camera_frame'] == 'camera_optical'
    assert info['alignment']['reference_source'] == (
        'bag topic /odom of base_link composed with tf_static '
        'base_link->camera_link->camera_optical') or SABOTAGE_ARGS
    samples = read_manifest(out, 'all')
    t_err = [translation_error(s.position, truth[s.name][0]) for s in samples]
    r_err = [rotation_error_deg(s.quaternion, truth[s.name][1]) for s in samples]
    # base_link is 0.6 m below and 0.25 m behind the camera: base poses taken as camera poses
    # would be off by more than the bound below.
    assert len(samples) >= 0.75 * N_FRAMES
    assert np.median(t_err) < 0.10 and np.median(r_err) < 1.0, (t_err, r_err)


def test_import_sfm_with_surveyed_points(scene_bag, labelled, tmp_path):
    """The label run's COLMAP model, re-imported with 5 surveyed positions, gives metres too."""
    _, truth, _ = scene_bag
    names = sorted(n for n in truth if (labelled / n).is_file())
    survey = tmp_path / 'survey.csv'
    picked = names[::max(1, len(names) // 5)][:5]
    survey.write_text('image,x,y,z\n' + ''.join(
        f'{n.split("/")[-1]},{truth[n][0][0]},{truth[n][0][1]},{truth[n][0][2]}\n'
        for n in picked))
    importers.import_sfm(labelled / 'sfm' / 'model', labelled / 'images', tmp_path / 'ds',
                         reference_csv=survey)
    samples = read_manifest(tmp_path / 'ds', 'all')
    t_err = [translation_error(s.position, truth['images/' + s.name.split('/')[-1]][0])
             for s in samples]
    assert np.median(t_err) < 0.15, t_err


def test_sfm_units_are_reported_without_reference(scene_bag, labelled, tmp_path, caplog):
    importers.import_sfm(labelled / 'sfm' / 'model', labelled / 'images', tmp_path / 'ds')
    info = json.loads((tmp_path / 'ds' / 'dataset.json').read_text())
    assert info['units'] == 'sfm_units' and 'arbitrary SfM units' in info['alignment']['note']
    assert 'arbitrary SfM units' in caplog.text


def test_unreconstructable_input_fails_with_advice(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / 'noise').mkdir()
    for i in range(4):
        img = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / 'noise' / f'{i}.png'), img)
    with pytest.raises(SfMReconstructionError, match='What to try'):
        label.label(tmp_path / 'noise', tmp_path / 'out', progress=False)


def test_video_frames_are_subsampled_by_time_and_motion(tmp_path):
    cfg = syn.SceneConfig(width=160, height=120, fx=138.5)
    scene = syn.make_scene(0)
    poses = syn.trajectory('train', 300, 0)[:12]
    video = tmp_path / 'walk.avi'
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*'MJPG'), 10.0, (160, 120))
    assert writer.isOpened()
    for i, (p, q) in enumerate(poses):
        if i in (4, 5, 6):  # the camera stands still: same view three more times
            p, q = poses[3]
        rgb = syn.render(scene, p, q, cfg.K(), 160, 120)
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    by_time = label.collect_frames(video, tmp_path / 'a', fps=2.5, progress=False)
    assert by_time.kind == 'video' and by_time.n_source == 12
    assert by_time.names == [f'frame_{i:06d}.png' for i in (0, 4, 8)]
    assert (tmp_path / 'a' / 'frame_000004.png').is_file()
    by_motion = label.collect_frames(video, tmp_path / 'b', fps=None, min_motion=0.01,
                                     progress=False)
    kept = [int(n[6:12]) for n in by_motion.names]
    assert not {4, 5, 6} & set(kept)  # no new view while standing still
    assert 0 in kept and len(kept) >= 6


@pytest.mark.learning
def test_model_trained_on_sfm_labels_relocalizes_in_true_metric_frame(scene_bag, labelled,
                                                                      tmp_path):
    """Train on the SfM labels only; judge the export on held-out frames against the TRUE poses.

    The held-out frames are the label command's test split (every 5th registered frame); their
    ground truth comes from the renderer, never from SfM, so a model that learned the SfM frame
    instead of the metric map frame fails here. No model selection on them either (no
    validation split: the export is the last epoch). The baselines know only the training
    labels: the mean pose, and the nearest training frame in ImageNet feature space (printed).

    ~30 training frames in batches of 8 need ``freeze_bn``: with batch statistics of a few
    near-identical frames (and running statistics that lag behind them, BatchNorm momentum
    0.01) the eval-mode export missed even its own training frames by ~25 deg. Centre crops
    (``augment: false``): a random 112 px crop of the ~170 x 128 px resized frame turns the view
    by up to +-11 deg of yaw (fx ~148 px) without changing the label (numbers: docs/sfm.md).
    """
    from posenet_ros.datasets import load_image
    from posenet_ros.evaluation.baselines import (
        imagenet_feature_extractor,
        mean_pose,
        nearest_neighbour,
    )
    from posenet_ros.evaluation.metrics import frame_errors
    from posenet_ros.model.network import build_posenet
    from posenet_ros.model.relocalizer import Relocalizer
    from posenet_ros.training.config import load_config
    from posenet_ros.training.train import train

    _, truth, _ = scene_bag
    cfg = load_config(None, dict(
        dataset=str(sabotage_labels(labelled)), val_split=None, backbone='efficientnet_lite0',
        pretrained='imagenet', freeze_bn=True, resize=128, crop=112, augment=False,
        loss='learned', s_q_init=-1.0, dropout=0.0, lr=5e-4, warmup_epochs=1, epochs=EPOCHS,
        batch_size=8, num_threads=THREADS, progress=False, run_dir=str(tmp_path / 'run'),
        export_dir=str(tmp_path / 'models'), name='sfm', export_pt2=False, seed=SEED))
    result = train(cfg)
    pretrained = build_posenet('efficientnet_lite0', 'imagenet').state_dict()
    trained = result.model.state_dict()
    bn_stats = [k for k in trained if k.endswith(('running_mean', 'running_var'))]
    assert bn_stats and all(torch.equal(trained[k], pretrained[k]) for k in bn_stats)
    train_s, test_s = read_manifest(labelled, 'train'), read_manifest(labelled, 'test')
    assert len(test_s) >= 5
    true_p = np.stack([truth[s.name][0] for s in test_s])
    true_q = np.stack([truth[s.name][1] for s in test_s])
    train_p = np.stack([s.position for s in train_s])
    train_q = np.stack([s.quaternion for s in train_s])
    mp, mq = mean_pose(train_p, train_q)
    base_t, base_r = frame_errors(np.tile(mp, (len(test_s), 1)), np.tile(mq, (len(test_s), 1)),
                                  true_p, true_q)
    test_images = [load_image(s) for s in test_s]
    preds = Relocalizer(result.export_ts).predict_batch(np.stack(test_images))
    t_err, r_err = frame_errors(np.stack([p.position for p in preds]),
                                np.stack([p.quaternion_wxyz for p in preds]), true_p, true_q)
    features = imagenet_feature_extractor(cfg.resize, cfg.crop)
    nn_idx = nearest_neighbour(features([load_image(s) for s in train_s]), features(test_images))
    nn_t, nn_r = frame_errors(train_p[nn_idx], train_q[nn_idx], true_p, true_q)
    ratio_t, ratio_r = np.median(t_err) / np.median(base_t), np.median(r_err) / np.median(base_r)
    print(f'trained on SfM labels ({len(train_s)} frames, {result.train_time_s:.0f} s): median '
          f'{np.median(t_err):.2f} m / {np.median(r_err):.1f} deg against the true poses of '
          f'{len(test_s)} held-out frames; mean pose {np.median(base_t):.2f} m / '
          f'{np.median(base_r):.1f} deg; nearest neighbour (ImageNet features) '
          f'{np.median(nn_t):.2f} m / {np.median(nn_r):.1f} deg; ratios to the mean pose '
          f'{ratio_t:.2f} / {ratio_r:.2f}')
    # Positions prove the metric map frame (SfM units or an unaligned frame would be off by
    # metres), orientations that the model learned the views rather than an average one.
    # Measured (4 module runs with fresh SfM, training seeds 0-4 on fixed labels): ratios
    # 0.04-0.11 (0.11-0.27 m) and 0.08-0.16 (1.3-2.7 deg against 16.8 deg); bounds with a 3x
    # margin, since 7 held-out frames make the medians noisy. Over seeds 0-2 and six CPU
    # kernel paths: worst 0.09 and 0.13 (docs/testing.md).
    check_below('sfm.trained_error_vs_mean_pose_m', ratio_t, 0.4, str((t_err, base_t)))
    check_below('sfm.trained_error_vs_mean_pose_deg', ratio_r, 0.5, str((r_err, base_r)))
