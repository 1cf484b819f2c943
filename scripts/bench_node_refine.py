#!/usr/bin/env python3
"""The node with verification: coarse latency with and without ``refine``, ~/relocalize timing.

In one run, on rendered 640x480 rgb8 frames of the synthetic courtyard streamed at 30 Hz:

1. ``refine: off`` - the node's coarse ``~/pose`` latency (image stamp -> pose receipt): the
   baseline;
2. ``refine: request`` with a scene map, no request pending - the same latency (the target:
   unchanged, verification only runs while a call waits);
3. the same node answering ``~/relocalize`` calls while frames stream: for each call, the time
   from publishing the frame that answered to the answer, the time from the call to the answer,
   and whether it was verified and how far from the renderer's pose;
4. ``refine: continuous`` - the coarse latency while every frame it keeps up with is also
   verified on the node's second thread, and the verified rate;
5. ``refine: request`` with supervision of a localizer (``recovery: report``, the default
   ``supervision_rate``) - the coarse latency while supervision's verified frames are made (no
   localizer runs here: verification costs the same whatever it is compared with).

The model is EfficientNet-Lite0 with its ImageNet trunk and an untrained pose head: its coarse
pose is meaningless, but its features retrieve map frames, which is what verification needs
from it (the cost of verification does not depend on the head). The map is built from 60
training-lap frames at 640x480 (SIFT).

    python scripts/bench_node_refine.py                    # ~3 min on a 2-core CPU
    python scripts/bench_node_refine.py --calls 20 --json bench_results/node_refine.json
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from posenet_ros.core.ros_conversions import camera_info_topic, stamp_to_ns

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))
import bench_node_latency as bnl  # noqa: E402  (the shared publisher, summary and process helpers)

TOPIC = bnl.TOPIC
# The synthetic scene's mount as [x, y, z, qx, qy, qz, qw] (optical frame in base_link).
CAMERA_IN_BASE = '[0.2, 0.0, 1.0, -0.541675, 0.541675, -0.454519, 0.454519]'


def _scene(tmp: Path, width: int, height: int, n_map: int, n_test: int):
    """Map dataset (training laps) and streamed test frames with their true poses."""
    from posenet_ros.tools.synthetic import (
        SceneConfig,
        make_scene,
        render,
        trajectory,
        write_dataset,
    )

    cfg = SceneConfig(seed=0, width=width, height=height, fx=width * 0.85, n_train=n_map,
                      n_test=1)
    ds = write_dataset(tmp / 'dataset', cfg, progress=False)
    scene, K = make_scene(0), cfg.K()
    poses = trajectory('test', n=n_test)
    frames = [render(scene, p, q, K, width, height) for p, q in poses]
    return ds, K, frames, poses


def _export(tmp: Path, crop: int) -> Path:
    import torch

    from posenet_ros.model.export import export_model
    from posenet_ros.model.network import build_posenet

    torch.manual_seed(0)
    net = build_posenet('efficientnet_lite0', 'imagenet').eval()
    return export_model(net, out_dir=tmp, name='bench_refine', resize=crop * 8 // 7, crop=crop,
                        pt2=False).ts_path


class RefineBench(bnl.Bench):
    """The latency bench plus CameraInfo and ~/relocalize calls."""

    def __init__(self, domain, frames, K):
        super().__init__(domain, frames)
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo
        from std_srvs.srv import Trigger

        self.info = CameraInfo()
        self.info.height, self.info.width = frames[0].shape[:2]
        self.info.k = [float(v) for v in np.asarray(K).reshape(-1)]
        self.info_pub = self.node.create_publisher(
            CameraInfo, camera_info_topic(TOPIC),
            QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        from geometry_msgs.msg import PoseWithCovarianceStamped

        self.trigger = Trigger
        self.client = self.node.create_client(Trigger, '/bench/posenet_relocalizer/relocalize')
        self.verified = 0
        self.node.create_subscription(
            PoseWithCovarianceStamped, '/bench/posenet_relocalizer/verified_pose',
            lambda _: setattr(self, 'verified', self.verified + 1),
            QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))

    def run(self, rate: float, duration: float):
        """The latency run, counting the verified poses published during it."""
        self.verified = 0
        return super().run(rate, duration)

    def calls(self, n: int, rate: float, truth, timeout: float = 5.0) -> list[dict]:
        """``n`` ~/relocalize calls, each while streaming frames at ``rate`` Hz."""
        from posenet_ros.core import geometry

        if not self.client.wait_for_service(timeout_sec=30.0):
            raise SystemExit('~/relocalize did not appear')
        out = []
        period = 1.0 / rate
        for c in range(n):
            sent = {}
            t_call = time.time()
            future = self.client.call_async(self.trigger.Request())
            i = c * 7  # start each call on another frame of the loop
            while not future.done() and time.time() - t_call < timeout:
                msg = self.msgs[i % len(self.msgs)]
                t, key = bnl.stamp_now(msg)
                self.info.header.stamp = msg.header.stamp
                self.info_pub.publish(self.info)
                self.pub.publish(msg)
                sent[key] = (t, i % len(self.msgs))
                i += 1
                time.sleep(period)
            t_done = time.time()
            if not future.done():
                out.append({'answered': False})
                continue
            res = future.result()
            row = {'answered': True, 'success': bool(res.success),
                   'call_to_answer_ms': round((t_done - t_call) * 1000.0, 1)}
            if res.success:
                doc = json.loads(res.message)
                t_pub, k = sent[stamp_to_ns(doc['stamp'])]
                row['frame_to_answer_ms'] = round((t_done - t_pub) * 1000.0, 1)
                p, q = truth[k]
                row['error_m'] = round(float(np.linalg.norm(
                    np.asarray(doc['camera']['position']) - p)), 4)
                row['error_deg'] = round(float(geometry.rotation_error_deg(
                    geometry.xyzw_to_wxyz(np.asarray(doc['camera']['orientation_xyzw'])), q)), 3)
                row['verification_ms'] = doc['verification']['ms']
            else:
                row['reason'] = res.message
            out.append(row)
            time.sleep(0.3)
        return out


def _pct(vals, q):
    vals = [v for v in vals if v is not None]
    return round(float(np.percentile(vals, q)), 1) if vals else None


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--height', type=int, default=480)
    ap.add_argument('--crop', type=int, default=112)
    ap.add_argument('--rate', type=float, default=30.0)
    ap.add_argument('--duration', type=float, default=10.0, help='seconds per latency run')
    ap.add_argument('--warmup', type=float, default=2.0)
    ap.add_argument('--threads', type=int, default=1, help='torch CPU threads of the node')
    ap.add_argument('--map-frames', type=int, default=60)
    ap.add_argument('--calls', type=int, default=10, help='~/relocalize calls')
    ap.add_argument('--no-shm', action='store_true', help='default Fast DDS transports')
    ap.add_argument('--json', help='write the results here')
    return ap.parse_args(argv)


def _build_map(model: Path, dataset: Path) -> dict:
    """Build the scene map beside ``model`` (where the node finds it); time, size and points."""
    from posenet_ros.verify import load_map
    from posenet_ros.verify.build import build_map

    t0 = time.monotonic()
    map_path, _ = build_map(model, dataset=dataset, progress=False)
    return {'build_s': round(time.monotonic() - t0, 1),
            'mb': round(map_path.stat().st_size / 1e6, 1),
            'points': int(len(load_map(map_path).points))}


def _relocalize(bench: RefineBench, calls: int, rate: float, truth) -> dict:
    """~/relocalize calls while frames stream: answer times and errors, with every call's row."""
    rows = bench.calls(calls, rate, truth)
    ok = [r for r in rows if r.get('success')]
    frame_ms = [r['frame_to_answer_ms'] for r in ok]
    summary = {
        'calls': len(rows), 'verified_answers': len(ok),
        'frame_to_answer_ms_p50': _pct(frame_ms, 50),
        'frame_to_answer_ms_max': _pct(frame_ms, 100),
        'call_to_answer_ms_p50': _pct([r['call_to_answer_ms'] for r in ok], 50),
        'error_m_max': max((r['error_m'] for r in ok), default=None)}
    print(f'relocalize: {json.dumps(summary)}', flush=True)
    return {**summary, 'rows': rows}


def _node_map_load_s(log: str) -> float | None:
    """The node's own start-up time for the map (file, matcher, features), from its log."""
    loaded = re.search(r'loaded scene map .* in ([0-9.]+) s', log)
    return float(loaded.group(1)) if loaded else None


def main(argv=None) -> int:
    args = _parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix='posenet_bench_refine_'))
    domain, env = bnl.ros_environment(tmp, shm=not args.no_shm)
    print(f'rendering {args.map_frames} map frames and 24 test frames at '
          f'{args.width}x{args.height}...', flush=True)
    ds, K, frames, truth = _scene(tmp, args.width, args.height, args.map_frames, 24)
    model = _export(tmp, args.crop)
    results = {'config': {k: v for k, v in vars(args).items() if k != 'json'},
               'map': _build_map(model, ds)}
    print(f'map: {json.dumps(results["map"])}', flush=True)
    bench = RefineBench(domain, frames, K)
    try:
        for name, refine, extra in (('refine_off', 'off', {}), ('refine_request', 'request', {}),
                                    ('refine_continuous', 'continuous', {}),
                                    ('supervised', 'request', {'recovery': 'report'})):
            # The synthetic scene's mount: ~/relocalize sends a base-frame hint, which needs the
            # extrinsic (the bench feeds no TF).
            cmd = bnl.node_cmd(model, 'cpu', args.threads, refine=refine,
                               relocalize_timeout='5.0', camera_in_base=CAMERA_IN_BASE,
                               tf_mode='none', **extra)
            with bnl.running(name, cmd, env, tmp / f'{name}.log', 'ready: model'):
                results[name] = bench.measure(name, '/bench/posenet_relocalizer/pose', args.rate,
                                              args.duration, args.warmup)
                if refine == 'continuous':
                    results[name]['verified_poses'] = bench.verified
                    results[name]['verified_per_s'] = round(bench.verified / args.duration, 1)
                print(f'{name}: {json.dumps(results[name])}', flush=True)
                if name == 'refine_request':
                    results['relocalize'] = _relocalize(bench, args.calls, args.rate, truth)
            log = (tmp / f'{name}.log').read_text(errors='replace')
            results[name]['log_tail'] = log.splitlines()[-3:]
            load_s = _node_map_load_s(log)
            if load_s is not None:
                results['map']['node_load_s'] = load_s
    finally:
        bench.close()
    off, req = results['refine_off'], results['refine_request']
    if 'p50_ms' in off and 'p50_ms' in req:
        results['ratio_request_vs_off_p50'] = round(req['p50_ms'] / off['p50_ms'], 2)
        results['ratio_request_vs_off_p99'] = round(req['p99_ms'] / off['p99_ms'], 2)
    sup = results.get('supervised', {})
    if 'p50_ms' in sup and 'p50_ms' in req:
        # The target: supervision's verification raises the coarse p50 by at most 10 %.
        results['ratio_supervised_vs_request_p50'] = round(sup['p50_ms'] / req['p50_ms'], 2)
        results['ratio_supervised_vs_request_p99'] = round(sup['p99_ms'] / req['p99_ms'], 2)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(json.dumps({k: v for k, v in results.items() if k != 'relocalize'}, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
