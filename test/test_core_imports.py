"""The core runs without ROS: importing it must not import rclpy (only posenet_ros.ros may)."""

import pkgutil
import subprocess
import sys

import pytest

import posenet_ros


def _core_modules():
    names = []
    for info in pkgutil.walk_packages(posenet_ros.__path__, 'posenet_ros.'):
        if info.name.startswith('posenet_ros.ros'):
            continue
        names.append(info.name)
    return names


@pytest.mark.slow
def test_core_imports_no_rclpy():
    modules = _core_modules()
    assert 'posenet_ros.core.geometry' in modules
    code = (
        'import importlib, sys\n'
        f'for name in {modules!r}:\n'
        '    importlib.import_module(name)\n'
        "bad = sorted(m for m in sys.modules if m == 'rclpy' or m.startswith('rclpy.'))\n"
        "print('RCLPY:' + ','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'RCLPY:\n' in out.stdout, f'core imported rclpy: {out.stdout}'
