#!/usr/bin/env python3
"""End-to-end latency of the relocalization node vs a naive node, measured in one run.

Publishes rendered 640x480 rgb8 frames at 30 Hz (stamp = send time) and measures, for every pose
that comes back, ``receipt time - image stamp``. First the real node
(``posenet_ros.ros.relocalize_node``) with the fp32 TorchScript export, then the same node with
its int8 CPU export (``posenet-ros quantize``, calibrated on the benchmark frames), then
``scripts/naive_node.py`` (cv_bridge-style conversion, PIL transforms, eager fp32 model in the
callback, queue depth 10) with the same weights, each in its own process and on the same CPU
thread budget. Reports p50/p99, answered frames and the lag trend (slope of latency over the run:
a growing queue shows as a positive slope), and the ratios naive / node.

    python scripts/bench_node_latency.py                        # exports a mobilenet_v3_small
    python scripts/bench_node_latency.py --model m.ts --duration 20 --threads 2 --json out.json
    python scripts/bench_node_latency.py --crop 112 --no-int8     # fp32 node vs naive only
    python scripts/bench_node_latency.py --crop 112 --load 1      # next to one busy core
    python scripts/bench_node_latency.py --backbone googlenet --device cuda   # the GPU target

``--load N`` runs N single-threaded busy processes (a 256x256 matrix product in a loop, standing
in for the SLAM stack that shares the computer) while the nodes run, the same for every node.

Both nodes and the publisher use config/fastdds_shm.xml unless ``--no-shm``.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from posenet_ros.core.ros_conversions import fill_stamp, stamp_to_ns

ROOT = Path(__file__).resolve().parents[1]
TOPIC = '/bench/camera/image_raw'


def _env(domain: int, log_dir: str, shm: bool) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               ROS_LOG_DIR=log_dir, AMENT_PREFIX_PATH=sys.prefix, PYTHONUNBUFFERED='1')
    env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
    if shm:
        env['FASTDDS_DEFAULT_PROFILES_FILE'] = str(ROOT / 'config' / 'fastdds_shm.xml')
    return env


def ros_environment(tmp: Path, shm: bool) -> tuple[int, dict]:
    """A random DDS domain on localhost; the children's environment, also applied to this one.

    This process publishes the frames, so it needs the same discovery range, log folder and
    (with ``shm``) Fast DDS profile as the nodes it measures.
    """
    domain = random.randint(1, 101)
    env = _env(domain, str(tmp / 'log'), shm)
    os.environ.update({k: env[k] for k in ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_LOG_DIR')})
    if shm:
        os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = env['FASTDDS_DEFAULT_PROFILES_FILE']
    return domain, env


def node_cmd(model, device: str, threads: int, **params) -> list[str]:
    """Command line of the real node on the bench topic, in the /bench namespace.

    ``params``: further node parameters (``name=value`` becomes ``-p name:=value``).
    """
    cmd = [sys.executable, '-m', 'posenet_ros.ros.relocalize_node', '--ros-args',
           '--params-file', str(ROOT / 'config' / 'relocalize.yaml'),
           '-p', f'model_path:={model}', '-p', f'device:={device}',
           '-p', f'num_threads:={threads}', '-p', f'image_topic:={TOPIC}']
    for name, value in params.items():
        cmd += ['-p', f'{name}:={value}']
    return cmd + ['-r', '__ns:=/bench']


def _export_model(out_dir: Path, backbone: str, crop: int) -> Path:
    import torch

    from posenet_ros.model.export import export_model
    from posenet_ros.model.network import build_posenet
    torch.manual_seed(0)
    net = build_posenet(backbone).eval()
    return export_model(net, out_dir=out_dir, name=f'bench_{backbone}', resize=crop * 8 // 7,
                        crop=crop, pt2=False).ts_path


def _frames(width: int, height: int, n: int = 6) -> list[np.ndarray]:
    from posenet_ros.tools.synthetic import camera_matrix, make_scene, render, trajectory
    scene = make_scene(seed=0)
    K = camera_matrix(width, height, width * 0.85)
    return [render(scene, p, q, K, width, height) for p, q in trajectory('test', n=n)]


def stamp_now(msg) -> tuple[float, int]:
    """Stamp ``msg`` with the wall clock; the time (s) and the stamp (ns) as the answer's key."""
    t = time.time()
    fill_stamp(msg.header.stamp, round(t * 1e9))
    return t, stamp_to_ns(msg.header.stamp)


class Bench:
    """Publisher + pose subscription in this process (rclpy), one executor thread."""

    def __init__(self, domain: int, frames: list[np.ndarray]):
        import rclpy
        from geometry_msgs.msg import PoseStamped
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image

        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain)
        self.node = rclpy.create_node('latency_bench', context=self.ctx)
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.pub = self.node.create_publisher(Image, TOPIC, qos)
        self.msgs = []
        for rgb in frames:
            m = Image()
            m.height, m.width = rgb.shape[:2]
            m.encoding, m.step = 'rgb8', rgb.shape[1] * 3
            m.header.frame_id = 'camera_optical'
            m.data = array.array('B', rgb.tobytes())  # ~1 ms instead of ~46 ms for a list copy
            self.msgs.append(m)
        self.received: dict[tuple[int, int], float] = {}
        self._subs = []
        self._qos = qos
        self._pose_type = PoseStamped
        self.executor = SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self._spin_forever, daemon=True)
        self._running = True
        self._spin.start()

    def _spin_forever(self):
        while self._running and self.ctx.ok():
            self.executor.spin_once(timeout_sec=0.05)

    def _on_pose(self, msg):
        t = time.time()
        self.received[stamp_to_ns(msg.header.stamp)] = t

    def listen(self, topic: str):
        """Subscribe to a pose topic (replacing the previous subscription)."""
        for s in self._subs:
            self.node.destroy_subscription(s)
        self._subs = [self.node.create_subscription(self._pose_type, topic, self._on_pose,
                                                    self._qos)]
        self.received = {}

    def wait_matched(self, timeout: float = 60.0) -> bool:
        """Wait until the node subscribes to the images and publishes the pose topic."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pub.get_subscription_count() > 0 and self._subs[0].get_publisher_count() > 0:
                return True
            time.sleep(0.05)
        return False

    def run(self, rate: float, duration: float) -> list[tuple[float, tuple[int, int]]]:
        """Publish at ``rate`` Hz for ``duration`` s; returns (send time, stamp key) per frame."""
        sent = []
        period = 1.0 / rate
        t_next = time.perf_counter()
        i = 0
        end = t_next + duration
        while t_next < end:
            now = time.perf_counter()
            if now < t_next:
                time.sleep(t_next - now)
            msg = self.msgs[i % len(self.msgs)]
            t, key = stamp_now(msg)
            self.pub.publish(msg)
            sent.append((t, key))
            i += 1
            t_next += period
        time.sleep(1.5)  # let the last answers (or a queue) drain
        return sent

    def measure(self, name: str, topic: str, rate: float, duration: float,
                warmup: float) -> dict:
        """Stream frames at ``rate`` Hz for ``duration`` s to a started node; its summary."""
        self.listen(topic)
        if not self.wait_matched():
            raise SystemExit(f'{name}: topics did not match')
        time.sleep(0.5)
        sent = self.run(rate, duration)
        return summarize(sent, dict(self.received), warmup)

    def close(self):
        """Stop spinning and shut the context down."""
        self._running = False
        self._spin.join(2)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.ctx.try_shutdown()


def summarize(sent, received, warmup: float) -> dict:
    """p50/p99 latency (ms), answered fraction and lag slope over the steady part of the run."""
    t0 = sent[0][0] + warmup
    steady = [(t, k) for t, k in sent if t >= t0]
    lat = np.array([(received[k] - t) * 1000.0 for t, k in steady if k in received])
    times = np.array([t - t0 for t, k in steady if k in received])
    if lat.size < 3:
        return {'sent': len(steady), 'answered': int(lat.size)}
    slope = float(np.polyfit(times, lat, 1)[0])  # ms of extra latency per second of run
    half = lat.size // 2
    return {
        'sent': len(steady), 'answered': int(lat.size),
        'answered_fraction': round(lat.size / len(steady), 3),
        'p50_ms': round(float(np.percentile(lat, 50)), 2),
        'p99_ms': round(float(np.percentile(lat, 99)), 2),
        'mean_ms': round(float(lat.mean()), 2),
        'first_half_p50_ms': round(float(np.median(lat[:half])), 2),
        'second_half_p50_ms': round(float(np.median(lat[half:])), 2),
        'lag_slope_ms_per_s': round(slope, 2),
    }


def model_only(model: Path, frames: list[np.ndarray], threads: int, n: int = 40,
               device: str = 'cpu') -> dict:
    """``Relocalizer.predict`` alone on the same frames (the floor under any node's latency)."""
    import torch

    from posenet_ros.model.relocalizer import Relocalizer
    torch.set_num_threads(threads)
    reloc = Relocalizer(model, device, 3, warmup_size=frames[0].shape[:2])
    ms = []
    for i in range(n):
        t = time.perf_counter()
        reloc.predict(frames[i % len(frames)])
        ms.append((time.perf_counter() - t) * 1000.0)
    return {'p50_ms': round(float(np.percentile(ms, 50)), 2),
            'p99_ms': round(float(np.percentile(ms, 99)), 2)}


def _start(cmd, env, log: Path, ready: str, timeout: float = 180.0) -> subprocess.Popen:
    f = open(log, 'w')  # noqa: SIM115 - the process owns it until stopped
    proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=str(ROOT))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready in log.read_text(errors='replace'):
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f'{cmd[2] if len(cmd) > 2 else cmd} did not start:\n{log.read_text()}')


# One core's worth of unrelated work, as a SLAM front end would keep a core busy.
_BUSY = 'import numpy as np\na = np.random.rand(256, 256)\nwhile True:\n    a = (a @ a) / 256.0\n'


def _start_load(n: int) -> list[subprocess.Popen]:
    env = dict(os.environ, OMP_NUM_THREADS='1', OPENBLAS_NUM_THREADS='1', MKL_NUM_THREADS='1')
    return [subprocess.Popen([sys.executable, '-c', _BUSY], env=env) for _ in range(n)]


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@contextmanager
def running(name: str, cmd: list[str], env: dict, log: Path, ready: str):
    """A node process, started until it logs ``ready`` and stopped (SIGINT) on exit."""
    print(f'--- {name}: starting', flush=True)
    proc = _start(cmd, env, log, ready)
    try:
        yield proc
    finally:
        _stop(proc)


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--model', help='exported .ts (default: export a random-init backbone)')
    ap.add_argument('--backbone', default='mobilenet_v3_small')
    ap.add_argument('--crop', type=int, default=224)
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--height', type=int, default=480)
    ap.add_argument('--rate', type=float, default=30.0)
    ap.add_argument('--duration', type=float, default=12.0, help='seconds per node')
    ap.add_argument('--warmup', type=float, default=2.0, help='seconds ignored at the start')
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads of both nodes')
    ap.add_argument('--device', default='cpu',
                    help='cpu or cuda[:N] for both nodes (int8 runs on the CPU: skipped on cuda)')
    ap.add_argument('--no-shm', action='store_true', help='default Fast DDS transports')
    ap.add_argument('--skip-naive', action='store_true')
    ap.add_argument('--no-int8', action='store_true', help='skip the int8 export of the node')
    ap.add_argument('--load', type=int, default=0,
                    help='busy single-threaded processes running beside the nodes (default 0)')
    ap.add_argument('--json', help='write the results here')
    args = ap.parse_args(argv)
    from posenet_ros.core.errors import DeviceUnavailableError
    from posenet_ros.model.relocalizer import resolve_device
    try:
        resolve_device(args.device)  # fail before exporting anything
    except DeviceUnavailableError as exc:
        raise SystemExit(f'--device: {exc}') from exc
    return args


def _models_alone(args, model: Path, frames, tmp: Path, results: dict) -> Path | None:
    """Time the fp32 model (and its int8 export, written here on the CPU) in this process.

    Returns the int8 export, or None when it is skipped.
    """
    results['model_only'] = model_only(model, frames, args.threads, device=args.device)
    print(f'model only (predict in this process): {json.dumps(results["model_only"])}',
          flush=True)
    if args.no_int8 or args.device != 'cpu':
        return None
    from posenet_ros.model.quantize import quantize_export
    int8 = quantize_export(model, frames, tmp / f'{model.stem}.int8.ts').path
    results['model_only_int8'] = model_only(int8, frames, args.threads)
    print(f'int8 model only: {json.dumps(results["model_only_int8"])}', flush=True)
    return int8


def _runs(args, model: Path, int8: Path | None) -> list[tuple[str, list[str], str, str]]:
    """(name, command, ready line, pose topic) of each node to measure, in order."""
    topic = '/bench/posenet_relocalizer/pose'
    runs = [('node', node_cmd(model, args.device, args.threads, refine='off'), 'ready: model',
             topic)]
    if int8 is not None:
        runs.append(('node_int8', node_cmd(int8, 'cpu', args.threads, refine='off'),
                     'ready: model', topic))
    if not args.skip_naive:
        runs.append(('naive', [sys.executable, str(ROOT / 'scripts' / 'naive_node.py'),
                               str(model), str(args.threads), args.device, '--ros-args',
                               '-r', f'/camera/image_raw:={TOPIC}', '-r', '__ns:=/bench'],
                     'ready: naive', '/bench/naive_posenet/pose'))
    return runs


def _add_ratios(results: dict) -> None:
    """The latency ratios naive / node (p50, p99) of each node measured beside the naive one."""
    for name, suffix in (('node', ''), ('node_int8', '_int8')):
        if 'p50_ms' in results.get('naive', {}) and 'p50_ms' in results.get(name, {}):
            for q in ('p50', 'p99'):
                results[f'ratio_{q}{suffix}'] = round(
                    results['naive'][f'{q}_ms'] / results[name][f'{q}_ms'], 2)
            print(f'naive / {name} latency: p50 x{results[f"ratio_p50{suffix}"]}, '
                  f'p99 x{results[f"ratio_p99{suffix}"]}')


def main(argv=None) -> int:
    args = _parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix='posenet_bench_'))
    domain, env = ros_environment(tmp, shm=not args.no_shm)
    model = Path(args.model) if args.model else _export_model(tmp, args.backbone, args.crop)
    print(f'model {model}; rendering {args.width}x{args.height} frames...', flush=True)
    frames = _frames(args.width, args.height)
    results = {'config': {k: v for k, v in vars(args).items() if k != 'json'}}
    int8 = _models_alone(args, model, frames, tmp, results)
    bench = Bench(domain, frames)
    results['config'].update(model=str(model), cpu_count=os.cpu_count(),
                             loadavg_start=os.getloadavg())
    load = _start_load(args.load)
    try:
        for name, cmd, ready, topic in _runs(args, model, int8):
            with running(name, cmd, env, tmp / f'{name}.log', ready):
                results[name] = bench.measure(name, topic, args.rate, args.duration,
                                              args.warmup)
            print(f'{name}: {json.dumps(results[name])}', flush=True)
    finally:
        for proc in load:
            proc.kill()
        bench.close()
    results['config']['loadavg_end'] = os.getloadavg()
    _add_ratios(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)  # exported model, node logs
    return 0


if __name__ == '__main__':
    sys.exit(main())
