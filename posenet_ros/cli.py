"""``posenet-ros <command> ...``: one entry point dispatching to each tool's ``main(argv)``.

Commands are imported lazily so ``posenet-ros --help`` is instant and a command's heavy imports
(torch, rosbags, rclpy) are paid only when it runs.
"""

from __future__ import annotations

import importlib
import sys

from posenet_ros.core.errors import PoseNetError

# name -> (module, help). Each module exposes ``main(argv: list[str] | None) -> int``.
COMMANDS = {
    'train': ('posenet_ros.training.train', 'train a PoseNet on a dataset and export it'),
    'synth': ('posenet_ros.tools.synthetic', 'render the synthetic scene (dataset + rosbag2)'),
    'extract-bag': ('posenet_ros.datasets.extract', 'turn a rosbag2 into a dataset folder'),
    'bag-salvage': ('posenet_ros.datasets.salvage', 'copy the readable messages of a damaged bag'),
    'map': ('posenet_ros.verify.build', 'build the scene map that verifies/refines poses'),
    'evaluate': ('posenet_ros.evaluation.evaluate', 'evaluate an export on a dataset or a bag'),
    'replay': ('posenet_ros.ros.replay', 'publish a bag onto live ROS topics'),
    'predict': ('posenet_ros.model.relocalizer', 'predict the pose of image files with an export'),
    'quantize': ('posenet_ros.model.quantize', 'write a calibrated int8 CPU export'),
    'demo': ('posenet_ros.tools.demo', 'run the whole pipeline on the synthetic scene'),
    'study': ('posenet_ros.tools.studies', "run one of the paper's experiments (robustness, ...)"),
    'label': ('posenet_ros.sfm.label', 'label images/video/bag frames with structure from motion'),
    'import-sfm': ('posenet_ros.sfm.importers', 'turn a COLMAP/NVM reconstruction into a dataset'),
}


def _usage() -> str:
    lines = ['usage: posenet-ros <command> [options]', '', 'commands:']
    lines += [f'  {name:<12} {help_}' for name, (_, help_) in COMMANDS.items()]
    lines += ['', "run 'posenet-ros <command> --help' for a command's options"]
    return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``posenet-ros``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ('-h', '--help'):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f'posenet-ros: unknown command {name!r}\n\n{_usage()}', file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        return int(module.main(rest) or 0)
    except PoseNetError as exc:
        print(f'posenet-ros {name}: error: {exc}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'posenet-ros {name}: interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
