"""The relocalization node as a child process, for live evaluation and the tests. No rclpy.

``NodeProcess(params, env, log_path)`` starts ``python -m posenet_ros.ros.relocalize_node
--ros-args [--params-file F] -p key:=value ...`` with stdout and stderr in ``log_path``; ``stop()``
asks it to shut down with one SIGINT (like Ctrl-C) and kills it only after a timeout.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ['NODE_MODULE', 'NodeProcess', 'node_command', 'ros_arg']

NODE_MODULE = 'posenet_ros.ros.relocalize_node'


def ros_arg(value) -> str:
    """A parameter value as ``-p key:=VALUE`` text (ROS booleans, ``[a,b]`` lists)."""
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(ros_arg(v) for v in value) + ']'
    return str(value)


def node_command(params: dict, params_file: str | Path | None = None,
                 extra_args: tuple[str, ...] = (), module: str = NODE_MODULE) -> list[str]:
    """The command line that runs the node with ``params`` (``-p`` overrides of the file).

    ``module``: the node's module (``posenet_ros.ros.node_lifecycle`` for the managed node).
    """
    cmd = [sys.executable, '-m', module, '--ros-args']
    if params_file is not None:
        cmd += ['--params-file', str(params_file)]
    for key, value in params.items():
        cmd += ['-p', f'{key}:={ros_arg(value)}']
    return cmd + list(extra_args)


class NodeProcess:
    """The relocalization node as a subprocess (stdout+stderr captured to ``log_path``)."""

    def __init__(self, params: dict, env: dict, log_path: str | Path,
                 params_file: str | Path | None = None, extra_args: tuple[str, ...] = (),
                 cwd: str | Path | None = None, module: str = NODE_MODULE):
        self.cmd = node_command(params, params_file, extra_args, module)
        self.log_path = Path(log_path)
        self._log = open(self.log_path, 'w', encoding='utf-8')  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT,
                                     cwd=None if cwd is None else str(cwd))
        self._interrupted = False

    def output(self) -> str:
        """Everything the node printed so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors='replace')

    def tail(self, n: int = 15) -> str:
        """The last ``n`` lines of the node's output."""
        return '\n'.join(self.output().splitlines()[-n:])

    def wait_for_output(self, text: str, timeout: float = 60.0) -> bool:
        """Wait until ``text`` appears in the node's output (False on timeout or exit)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc.poll() is None

    def interrupt(self) -> None:
        """Send SIGINT once (ask the node to shut down) without waiting.

        Only once: a second SIGINT that lands while Python finalises (handlers are back to the
        default then) kills the process with status -2, like a double Ctrl-C.
        """
        if self.proc.poll() is None and not self._interrupted:
            self.proc.send_signal(signal.SIGINT)
            self._interrupted = True

    def stop(self, timeout: float = 10.0) -> int:
        """SIGINT (once), then SIGKILL after ``timeout``; returns the exit code."""
        self.interrupt()
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode
