"""Fixture builders for dataset tests (importable by any test): tiny real files and bags.

Label files are written from the datasets' *published* conventions, independently of the
readers, so a reader that converts wrongly fails the geometric tests.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import transforms3d.quaternions as tq

from posenet_ros.core.geometry import invert, pose_to_matrix

TEST_K = np.array([[100.0, 0.0, 31.5], [0.0, 110.0, 23.5], [0.0, 0.0, 1.0]])


def rot(axis, deg) -> np.ndarray:
    """Rotation matrix about ``axis`` by ``deg`` degrees."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return tq.quat2mat(tq.axangle2quat(axis, np.radians(deg)))


def random_pose(rng) -> np.ndarray:
    """Random T_world_cam (4x4)."""
    T = np.eye(4)
    q = rng.normal(size=4)
    T[:3, :3] = tq.quat2mat(q / np.linalg.norm(q))
    T[:3, 3] = rng.uniform(-5, 5, size=3)
    return T


def project(K, T_map_cam, X) -> np.ndarray:
    """Pixel (u, v) of map point X seen by a camera with pose T_map_cam (optical frame)."""
    T_cam_map = invert(T_map_cam)
    pc = T_cam_map[:3, :3] @ np.asarray(X, float) + T_cam_map[:3, 3]
    assert pc[2] > 0
    uv = K @ (pc / pc[2])
    return uv[:2]


def point_in_front(T_world_cam, cam_point=(0.3, -0.2, 4.0)) -> np.ndarray:
    """World coordinates of a point given in the camera frame."""
    return T_world_cam[:3, :3] @ np.asarray(cam_point, float) + T_world_cam[:3, 3]


def write_png(path, rgb=None, size=(48, 64), seed=0) -> Path:
    """Write an RGB image (random if None) as PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if rgb is None:
        rgb = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def make_cambridge(root, train_poses, test_poses, images: bool = True,
                   extra_lines=()) -> Path:
    """Mini Cambridge scene from T_world_cam poses.

    Labels use the VisualSFM convention: C = camera centre, q = world-to-camera rotation (wxyz).
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, poses in (('train', train_poses), ('test', test_poses)):
        lines = ['Visual Landmark Dataset V1', 'ImageFile, Camera Position [X Y Z W P Q R]', '']
        for i, T in enumerate(poses):
            name = f'seq{1 if split == "train" else 2}/frame{i:05d}.png'
            C = T[:3, 3]
            q_cw = tq.mat2quat(T[:3, :3].T)  # world-to-camera rotation
            lines.append(f'{name} ' + ' '.join(f'{v:.9f}' for v in (*C, *q_cw)))
            if images:
                write_png(root / name, seed=i)
        lines += list(extra_lines) if split == 'train' else []
        (root / f'dataset_{split}.txt').write_text('\n'.join(lines) + '\n')
    return root


def make_seven_scenes(root, seqs: dict, train=('sequence1',), test=('sequence2',),
                      images: bool = True) -> Path:
    """Mini 7-Scenes scene: ``seqs`` maps 'seq-01' -> list of T_world_cam (4x4)."""
    root = Path(root)
    for name, poses in seqs.items():
        for i, T in enumerate(poses):
            base = root / name / f'frame-{i:06d}'
            base.parent.mkdir(parents=True, exist_ok=True)
            np.savetxt(f'{base}.pose.txt', T, fmt='%.9e', delimiter='\t')
            if images:
                write_png(f'{base}.color.png', seed=i)
    (root / 'TrainSplit.txt').write_text('\n'.join(train) + '\n')
    (root / 'TestSplit.txt').write_text('\n'.join(test) + '\n')
    return root


def render_tiny_scene(tmp_path, n_train: int = 8, n_test: int = 4, width: int = 64,
                      height: int = 48, seed: int = 0) -> Path:
    """A tiny synthetic manifest dataset (rendered courtyard) in ``tmp_path/synth``."""
    from posenet_ros.tools.synthetic import SceneConfig, write_dataset

    cfg = SceneConfig(seed=seed, width=width, height=height, fx=width / 2 / np.tan(np.pi / 6),
                      n_train=n_train, n_test=n_test)
    return write_dataset(Path(tmp_path) / 'synth', cfg, progress=False)


def render_segment_scene(tmp_path, n: int = 72, test_every: int = 6, width: int = 96,
                         height: int = 72, seed: int = 0) -> Path:
    """A manifest dataset of ``n`` consecutive views of one lap, every ``test_every``-th held out.

    The held-out views lie between training views (~3.6 deg and ~0.1 m apart, as in the SfM
    test), which a few seconds of training learn reliably on any CPU. :func:`render_tiny_scene`
    instead holds out other laps (-25 / +25 deg of heading from the nearest training lap): a
    generalisation test for which a tiny model's result depends on the kernels' rounding.
    """
    from posenet_ros.datasets.manifest import write_manifest
    from posenet_ros.datasets.types import PoseSample
    from posenet_ros.tools import synthetic as syn

    cfg = syn.SceneConfig(seed=seed, width=width, height=height,
                          fx=width / 2 / np.tan(np.pi / 6))
    scene, K = syn.make_scene(seed), cfg.K()
    out = Path(tmp_path) / 'segment'
    samples = []
    for i, (p, q) in enumerate(syn.trajectory('train', 300, seed)[:n]):
        path = write_png(out / 'images' / f'{i:05d}.png',
                         syn.render(scene, p, q, K, width, height))
        split = 'test' if i % test_every == test_every // 2 else 'train'
        samples.append(PoseSample(position=p, quaternion=q, split=split, image_path=path,
                                  stamp=cfg.start_time + i / cfg.rate, intrinsics=K))
    write_manifest(out, samples, info={
        'format': 'posenet_ros-manifest', 'version': 1, 'source': 'synthetic',
        'frames': {'map_frame': cfg.map_frame, 'camera_frame': cfg.camera_frame},
        'synthetic': {'seed': seed, 'segment_of': 'train lap, 300 frames', 'n': n}})
    return out


def motion(t: float):
    """Smooth known motion for bag tests: T_map_cam(t).

    Constant-rate translation and rotation, so linear/slerp interpolation is exact.
    """
    R0 = rot([0, 1, 0], 20) @ rot([1, 0, 0], -100)
    R = rot([0.2, 0.3, 1.0], 30.0 * t) @ R0
    return pose_to_matrix(np.array([1.0 + 0.5 * t, -2.0 + 0.25 * t, 1.5]),
                          tq.mat2quat(R))


def write_pose_bag(path, storage='sqlite3', n_images=10, image_dt=0.1, pose_times=None,
                   pose_type='geometry_msgs/msg/PoseStamped', t0=1000.0, encodings=('rgb8',),
                   row_padding=0, tf_chain=False, camera_info=True, compressed=False,
                   pose_topic='/gt/pose', size=(24, 32)):
    """Write a test bag and return the list of RGB frames written.

    Images go on ``/cam/<encoding>`` (+ ``/cam/rgb8/compressed`` PNG) at ``t0 + i * image_dt``;
    poses of :func:`motion` at ``t0 + pose_times`` go
    either on ``pose_topic`` or (``tf_chain``) as /tf map->odom->base + /tf_static
    base->cam_optical.
    """
    from posenet_ros.tools.synthetic import RosbagWriter

    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, size=(*size, 3), dtype=np.uint8) for _ in range(n_images)]
    if pose_times is None:
        pose_times = np.arange(-0.05, n_images * image_dt + 0.1, 0.05)
    T_base_cam = pose_to_matrix([0.1, 0.0, 0.3], tq.mat2quat(rot([1, 1, 0], 70)))
    with RosbagWriter(path, storage) as bag:
        if tf_chain:
            bag.tf(t0, [('base', 'cam_optical', T_base_cam)], static=True)
        for pt in pose_times:
            T = motion(pt)
            if tf_chain:
                # map->odom varies slowly, odom->base is the remainder
                T_map_odom = pose_to_matrix([0.2 * pt, 0.0, 0.0], tq.mat2quat(rot([0, 0, 1], 5)))
                T_odom_base = invert(T_map_odom) @ T @ invert(T_base_cam)
                bag.tf(t0 + pt, [('map', 'odom', T_map_odom), ('odom', 'base', T_odom_base)])
            else:
                bag.pose(pose_topic, t0 + pt, T[:3, 3], tq.mat2quat(T[:3, :3]), msgtype=pose_type,
                         child_frame_id='cam_optical')
        for i, rgb in enumerate(frames):
            stamp = t0 + i * image_dt
            for enc in encodings:
                bag.image(f'/cam/{enc}', stamp, rgb, frame_id='cam_optical', encoding=enc,
                          row_padding=row_padding)
            if compressed:
                bag.compressed('/cam/rgb8/compressed', stamp, rgb, frame_id='cam_optical',
                               fmt='png')
            if camera_info:
                bag.camera_info('/cam/camera_info', stamp, TEST_K, size[1], size[0],
                                frame_id='cam_optical')
    return frames
