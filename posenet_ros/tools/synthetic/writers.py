"""The synthetic scene written out: a manifest dataset folder and a rosbag2 of a trajectory."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import cv2

from posenet_ros.core.errors import ConfigError
from posenet_ros.core.geometry import compose, invert, matrix_to_pose, pose_to_matrix
from posenet_ros.datasets.manifest import write_manifest
from posenet_ros.datasets.types import PoseSample
from posenet_ros.tools.synthetic.raycast import render
from posenet_ros.tools.synthetic.rig import (
    T_BASE_CAM,
    T_BASE_CAMLINK,
    T_CAMLINK_OPTICAL,
    SceneConfig,
    iter_frames,
    t_map_odom,
)
from posenet_ros.tools.synthetic.robot_bag import RobotProfile, robot_config, write_robot_frames
from posenet_ros.tools.synthetic.rosbag_writer import RosbagWriter
from posenet_ros.tools.synthetic.scene import make_scene

__all__ = ['write_dataset', 'write_bag']


def _progress(iterable, total, desc, show):
    from posenet_ros.core.progress import progress

    return progress(iterable, total=total, desc=desc, unit='frame', disable=not show)


def write_dataset(out_dir, cfg: SceneConfig | None = None, progress: bool = True) -> Path:
    """Render train + test frames into a manifest dataset folder (PNG images, intrinsics)."""
    cfg = cfg or SceneConfig()
    out_dir = Path(out_dir)
    (out_dir / 'images').mkdir(parents=True, exist_ok=True)
    scene = make_scene(cfg.seed)
    K = cfg.K()
    samples = []
    total = cfg.n_train + cfg.n_test
    for split, i, p, q, stamp in _progress(iter_frames(cfg, 'all'), total, 'render', progress):
        path = out_dir / 'images' / f'{split}_{i:05d}.png'
        img = render(scene, p, q, K, cfg.width, cfg.height)
        if not cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
            raise ConfigError(f'cannot write {path}; check that the folder is writable')
        samples.append(PoseSample(position=p, quaternion=q, split=split, image_path=path,
                                  stamp=stamp, intrinsics=K, name=path.name))
    info = {'format': 'posenet_ros-manifest', 'version': 1, 'source': 'synthetic',
            'frames': {'map_frame': cfg.map_frame, 'camera_frame': cfg.camera_frame},
            'synthetic': asdict(cfg)}
    write_manifest(out_dir, samples, info=info)
    return out_dir


def write_bag(out_path, cfg: SceneConfig | None = None, storage: str = 'sqlite3',
              compressed: bool = False, which: str = 'test', progress: bool = True,
              overwrite: bool = False, profile: str = 'scene') -> Path:
    """Render a trajectory into a rosbag2 (``which`` = 'test', 'train' or 'all').

    ``profile='robot'`` records it as a Nav2 robot running AMCL would (Nav2's frame names,
    15 Hz JPEG images, 50 Hz odometry, 5 Hz future-dated ``map -> odom``, ``/amcl_pose``):
    :mod:`posenet_ros.tools.synthetic.robot_bag`. The default ``'scene'`` profile is below.

    The camera follows the scene's trajectory (so a model trained on the scene relocalizes
    it); the robot's base is derived from it through the fixed mount ``T_BASE_CAM``, so the
    base has the small roll and pitch the camera path has (within ~10 deg) and floats 0.3 to
    0.8 m above the ground: a synthetic rig, not a wheeled robot's dynamics.

    Topics, header stamps advancing at ``cfg.rate``:

    * ``/camera/image_raw`` (Image rgb8), ``/camera/image_raw/compressed`` (JPEG, if
      ``compressed``), ``/camera/camera_info``;
    * ``/tf``: ``map -> odom`` (the odometry's slowly drifting error, :func:`t_map_odom`) and
      ``odom -> base_link`` per frame; ``/tf_static``: ``base_link -> camera_link ->
      camera_optical`` (:data:`T_BASE_CAMLINK`, :data:`T_CAMLINK_OPTICAL`);
    * ``/odom`` (nav_msgs/Odometry, frame odom, child base_link; twist left zero);
    * ``/ground_truth/pose`` (PoseStamped of the camera optical frame in ``map``) and
      ``/ground_truth/base_pose`` (PoseStamped of base_link in ``map``), for evaluation.
    """
    cfg = cfg or SceneConfig()
    if which not in ('train', 'test', 'all'):
        raise ConfigError(f"which must be 'train', 'test' or 'all', got {which!r}")
    if profile not in ('scene', 'robot'):
        raise ConfigError(f"profile must be 'scene' or 'robot', got {profile!r}")
    out_path = Path(out_path)
    if out_path.exists():
        if not overwrite:
            raise ConfigError(f'{out_path} exists; remove it or pass overwrite=True (--force)')
        shutil.rmtree(out_path)
    scene = make_scene(cfg.seed)
    K = cfg.K()
    total = {'train': cfg.n_train, 'test': cfg.n_test, 'all': cfg.n_train + cfg.n_test}[which]
    T_cam_base = invert(T_BASE_CAM)
    if profile == 'robot':
        robot = RobotProfile()
        with RosbagWriter(out_path, storage) as bag:
            write_robot_frames(bag, robot_config(cfg, robot), which, scene, K, robot,
                               lambda events: _progress(events, None, 'bag', progress))
        return out_path
    with RosbagWriter(out_path, storage) as bag:
        bag.tf(cfg.start_time, [(cfg.base_frame, cfg.camera_link_frame, T_BASE_CAMLINK),
                                (cfg.camera_link_frame, cfg.camera_frame, T_CAMLINK_OPTICAL)],
               static=True)
        for _, _, p, q, stamp in _progress(iter_frames(cfg, which), total, 'bag', progress):
            T_map_base = compose(pose_to_matrix(p, q), T_cam_base)
            T_map_odom = t_map_odom(stamp - cfg.start_time)
            T_odom_base = compose(invert(T_map_odom), T_map_base)
            # TF first: a node looking up the image's stamp finds it already buffered.
            bag.tf(stamp, [(cfg.map_frame, cfg.odom_frame, T_map_odom),
                           (cfg.odom_frame, cfg.base_frame, T_odom_base)])
            bag.pose('/odom', stamp, *matrix_to_pose(T_odom_base), frame_id=cfg.odom_frame,
                     msgtype='nav_msgs/msg/Odometry', child_frame_id=cfg.base_frame)
            img = render(scene, p, q, K, cfg.width, cfg.height)
            bag.image('/camera/image_raw', stamp, img, frame_id=cfg.camera_frame)
            if compressed:
                bag.compressed('/camera/image_raw/compressed', stamp, img,
                               frame_id=cfg.camera_frame)
            bag.camera_info('/camera/camera_info', stamp, K, cfg.width, cfg.height,
                            frame_id=cfg.camera_frame)
            bag.pose('/ground_truth/pose', stamp, p, q, frame_id=cfg.map_frame)
            bag.pose('/ground_truth/base_pose', stamp, *matrix_to_pose(T_map_base),
                     frame_id=cfg.map_frame)
    return out_path
