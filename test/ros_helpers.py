"""Run the relocalization node in its own process and talk to it from the test process.

Isolation: every :class:`RosSession` takes the next ``ROS_DOMAIN_ID`` of this test worker's slice
(``helpers_parallel``: workers never share a domain), restricts discovery
to localhost and gives the node its own ``ROS_LOG_DIR``; the test-side rclpy context joins the same
domain through ``rclpy.init(domain_id=...)``.

The PyPI ROS wheels install ``ros_wheels_bootstrapper.pth``, which re-executes Python once with
``LD_LIBRARY_PATH`` pointing at the wheels' libraries and marks the environment with
``_ROS_WHEELS_BOOTSTRAP_COMPLETE=1``. A child that inherits the marker but not the library path
cannot load rclpy's C extension, so :func:`ros_env` drops the marker whenever the path is missing
(the child then bootstraps itself).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from helpers_parallel import next_domain_id

from posenet_ros.ros.process import NODE_MODULE, NodeProcess, node_command

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / 'config' / 'relocalize.yaml'
SHM_PROFILE = ROOT / 'config' / 'fastdds_shm.xml'
__all__ = ['CONFIG', 'NODE_MODULE', 'ROOT', 'NodeProcess', 'RosSession', 'failed_starts',
           'ros_env', 'run_node_once']


def _venv_lib_dirs() -> list[str]:
    site = Path(sys.prefix) / 'lib' / f'python{sys.version_info.major}.{sys.version_info.minor}'
    return [str(Path(sys.prefix) / 'lib')] + [
        str(p.resolve()) for p in (site / 'site-packages').glob('ros_*.libs') if p.is_dir()]


def ros_env(domain_id: int, log_dir: str | os.PathLike, extra: dict | None = None) -> dict:
    """Environment for a ROS child process: isolated domain, own log dir, ament index = venv."""
    env = dict(os.environ)
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.pop('ROS_STATIC_PEERS', None)
    env['ROS_LOG_DIR'] = str(log_dir)
    env['AMENT_PREFIX_PATH'] = sys.prefix
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT)] + [p for p in
                                         env.get('PYTHONPATH', '').split(os.pathsep) if p])
    ld = env.get('LD_LIBRARY_PATH', '').split(os.pathsep)
    if env.get('_ROS_WHEELS_BOOTSTRAP_COMPLETE') and not all(d in ld for d in _venv_lib_dirs()):
        env.pop('_ROS_WHEELS_BOOTSTRAP_COMPLETE')  # let the child's .pth set the library path
    env.update(extra or {})
    return env


def run_node_once(params: dict, env: dict, timeout: float = 120.0, params_file: Path = CONFIG):
    """Run the node to completion (for start-up failures): ``(returncode, output)``."""
    out = subprocess.run(node_command(params, params_file), env=env, capture_output=True,
                         text=True, timeout=timeout, cwd=str(ROOT))
    return out.returncode, out.stdout + out.stderr


def failed_starts(cases: dict[str, dict], env: dict, timeout: float = 120.0) -> dict[str, str]:
    """Start the node once per case (``name -> params``) in parallel; each must fail cleanly.

    Asserts every process exits with status 1 and prints no traceback; returns each output.
    """
    procs = {name: subprocess.Popen(node_command(params, CONFIG), env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for name, params in cases.items()}
    outputs = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 1, f'{name}: rc {proc.returncode}\n{out}'
        assert 'Traceback' not in out, out
        outputs[name] = out
    return outputs


class RosSession:
    """A private DDS domain: a test-side rclpy node plus helpers to start node processes.

    Use as a context manager. ``node`` is an ``rclpy.node.Node`` in its own context; call
    :meth:`spin_until` to process callbacks while waiting for a condition.
    """

    def __init__(self, name: str = 'posenet_test_client', domain_id: int | None = None):
        self.domain_id = domain_id or next_domain_id()
        self.tmp = Path(tempfile.mkdtemp(prefix='posenet_ros_node_'))
        self.log_dir = self.tmp / 'ros_log'
        self.log_dir.mkdir()
        self._name = name
        self.processes: list[NodeProcess] = []

    def __enter__(self) -> RosSession:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        os.environ.setdefault('ROS_LOG_DIR', str(self.log_dir))
        self.context = Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.node = rclpy.create_node(self._name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for p in self.processes:
            p.interrupt()  # all at once: shutting down takes a moment each
        for p in self.processes:
            p.stop()
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        if exc_type is None and not os.environ.get('POSENET_KEEP_NODE_LOGS'):
            shutil.rmtree(self.tmp, ignore_errors=True)  # node logs stay after a failure

    def env(self, extra: dict | None = None) -> dict:
        """Child environment joined to this session's domain."""
        return ros_env(self.domain_id, self.log_dir, extra)

    def start_node(self, params: dict, tag: str = 'node', **kwargs) -> NodeProcess:
        """Start the relocalization node with ``params`` (-p overrides of the params file)."""
        kwargs.setdefault('params_file', CONFIG)
        proc = NodeProcess(params, self.env(kwargs.pop('env_extra', None)),
                           self.tmp / f'{tag}.log', cwd=ROOT, **kwargs)
        self.processes.append(proc)
        return proc

    def spin_until(self, predicate, timeout: float = 10.0, step: float = 0.02) -> bool:
        """Spin the test node until ``predicate()`` is true; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=step)
        return bool(predicate())

    def call(self, client, request, timeout: float = 10.0):
        """Call a service and spin until the answer arrives (None on timeout)."""
        if not client.wait_for_service(timeout_sec=timeout):
            return None
        future = client.call_async(request)
        self.spin_until(future.done, timeout)
        return future.result() if future.done() else None
