"""``posenet-ros synth``: render the synthetic courtyard into a dataset folder and a rosbag2."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from posenet_ros.core.errors import ConfigError
from posenet_ros.tools.synthetic.rig import SceneConfig
from posenet_ros.tools.synthetic.writers import write_bag, write_dataset

__all__ = ['main']


def main(argv: list[str] | None = None) -> int:
    """``posenet-ros synth``: render the synthetic dataset folder and optionally a bag."""
    ap = argparse.ArgumentParser(
        prog='posenet-ros synth',
        description='A procedurally textured 3D courtyard rendered from known poses (dataset '
                    'folder + rosbag2).')
    ap.add_argument('--out', required=True, type=Path, help='output folder')
    ap.add_argument('--bag', action='store_true', help='also write a rosbag2 to OUT/bag')
    ap.add_argument('--bag-frames', choices=('test', 'train', 'all'), default='test',
                    help='trajectory recorded into the bag (default: test)')
    ap.add_argument('--storage', choices=('sqlite3', 'mcap'), default='sqlite3')
    ap.add_argument('--compressed', action='store_true',
                    help='also write /camera/image_raw/compressed (JPEG)')
    ap.add_argument('--profile', choices=('scene', 'robot'), default='scene',
                    help="bag profile: 'scene' (every topic at --rate, frames base_link and "
                         "camera_optical) or 'robot' (as a Nav2 robot with AMCL records it: "
                         '15 Hz JPEG images, 50 Hz odometry, 5 Hz map -> odom future-dated '
                         'by 1 s, /amcl_pose, base_footprint and camera_color_optical_frame)')
    ap.add_argument('--no-dataset', action='store_true', help='skip the dataset folder')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--n-train', type=int, default=300)
    ap.add_argument('--n-test', type=int, default=100)
    ap.add_argument('--width', type=int, default=320)
    ap.add_argument('--height', type=int, default=240)
    ap.add_argument('--fx', type=float, default=None,
                    help='focal length in px (default: 60 deg horizontal field of view)')
    ap.add_argument('--rate', type=float, default=30.0, help='frame rate of the stamps (Hz)')
    ap.add_argument('--force', action='store_true', help='overwrite an existing bag')
    args = ap.parse_args(argv)
    if args.width < 16 or args.height < 16 or args.n_train < 1 or args.n_test < 1:
        raise ConfigError('need --width/--height >= 16 and --n-train/--n-test >= 1')
    fx = args.fx or (args.width / 2) / math.tan(math.radians(30.0))
    cfg = SceneConfig(seed=args.seed, width=args.width, height=args.height, fx=fx,
                      n_train=args.n_train, n_test=args.n_test, rate=args.rate)
    if not args.no_dataset:
        out = write_dataset(args.out / 'dataset', cfg)
        print(f'dataset: {out} ({cfg.n_train} train + {cfg.n_test} test frames, '
              f'{cfg.width}x{cfg.height})')
    if args.bag:
        out = write_bag(args.out / 'bag', cfg, storage=args.storage, compressed=args.compressed,
                        which=args.bag_frames, overwrite=args.force, profile=args.profile)
        print(f'bag: {out} ({args.storage}, {args.bag_frames} trajectory, '
              f'{args.profile} profile)')
    return 0
