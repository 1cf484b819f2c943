#!/usr/bin/env python3
"""Geometric verification cost: refinement latency by stage, map build time, size and load time.

1. the demo scene (``posenet-ros demo``'s courtyard: seed 0, 320x240, ``--frames`` training
   frames): map build time, file size and load time;
2. refinement latency at 640x480 on the CPU: a map of the same scene rendered at 640x480, then
   ``--queries`` test-lap frames verified with a coarse pose 0.5 m / 10 deg off the truth (a
   typical PoseNet error); p50/p95 ms per stage (features, matching, pnp, total), the verified
   fraction and the median error of verified frames;
3. ``--large N``: a map of N frames (320x240): size and load time (the 1,000-frame target).

The model is a random-init MobileNetV3-small export (its id ties the map; latency and mapping
do not depend on its weights, the global features are computed but the pose prior picks the
candidates). OpenCV and torch run on one thread unless ``--threads``.

    python scripts/bench_refine.py [--frames 300] [--queries 60] [--large 1000] [--json F]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import transforms3d.quaternions as tq

from posenet_ros.core.geometry import rotation_error_deg, translation_error
from posenet_ros.datasets import load_dataset, load_image
from posenet_ros.model.export import export_model
from posenet_ros.model.network import build_posenet
from posenet_ros.tools.synthetic import SceneConfig, write_dataset
from posenet_ros.verify import MapLocalizer, load_map
from posenet_ros.verify.build import MapConfig, build_map


def _export(out: Path) -> Path:
    torch.manual_seed(0)
    net = build_posenet('mobilenet_v3_small').eval()
    return export_model(net, out_dir=out, name='bench', resize=72, crop=64,
                        training={'note': 'random init benchmark model'}, pt2=False).ts_path


def _pct(values, q) -> float:
    v = sorted(values)
    return float(np.percentile(v, q)) if v else math.nan


def _map_stats(model: Path, ds: Path, out: Path, feature: str) -> dict:
    t0 = time.perf_counter()
    path, header = build_map(model, out, dataset=ds, config=MapConfig(feature=feature),
                             progress=False)
    build_s = time.perf_counter() - t0
    loads = []
    for _ in range(3):
        t0 = time.perf_counter()
        load_map(path)
        loads.append(time.perf_counter() - t0)
    st = header['stats']
    return {'frames': st['frames'], 'points': st['points'], 'observations': st['observations'],
            'build_s': round(build_s, 1), 'size_mb': round(path.stat().st_size / 1e6, 2),
            'load_s': round(min(loads), 3), 'timings_s': header['timings_s']}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--frames', type=int, default=300, help='mapping frames (demo: 300)')
    ap.add_argument('--queries', type=int, default=60, help='640x480 query frames')
    ap.add_argument('--large', type=int, default=0, help='also build an N-frame map')
    ap.add_argument('--features', default='sift', choices=('sift', 'orb'))
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--work', type=Path, help='working folder (default: a temporary one)')
    ap.add_argument('--json', type=Path, help='write the results here')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix='bench_refine_'))
    work.mkdir(parents=True, exist_ok=True)
    model = _export(work)
    report = {'features': args.features, 'threads': args.threads,
              'cpu_count': __import__('os').cpu_count()}

    # 1. demo scene map (320x240)
    demo = write_dataset(work / 'demo', SceneConfig(seed=0, n_train=args.frames, n_test=1),
                         progress=False)
    report['demo_map'] = _map_stats(model, demo, work / 'demo.map.npz', args.features)
    print(f'demo scene map ({args.frames} frames, 320x240): {report["demo_map"]}', flush=True)

    # 2. 640x480 refinement latency
    cfg = SceneConfig(seed=0, width=640, height=480, fx=320 / math.tan(math.radians(30)),
                      n_train=args.frames, n_test=args.queries)
    vga = write_dataset(work / 'vga', cfg, progress=False)
    report['vga_map'] = _map_stats(model, vga, work / 'vga.map.npz', args.features)
    loc = MapLocalizer(load_map(work / 'vga.map.npz'))
    rng = np.random.default_rng(0)
    stages: dict[str, list[float]] = {'features': [], 'matching': [], 'pnp': [], 'total': []}
    t_err, r_err, n_ok = [], [], 0
    test = load_dataset(vga, 'test')
    loc.localize(load_image(test[0]), test[0].intrinsics, test[0].position,
                 test[0].quaternion)  # warm-up
    for s in test:
        frame = load_image(s)
        d = rng.normal(size=3)
        dq = tq.axangle2quat(rng.normal(size=3), math.radians(10.0))
        v = loc.localize(frame, s.intrinsics, s.position + 0.5 * d / np.linalg.norm(d),
                         tq.qmult(dq, s.quaternion))
        for k in stages:
            stages[k].append(v.ms[k])
        if v.verified:
            n_ok += 1
            t_err.append(float(translation_error(v.position, s.position)))
            r_err.append(float(rotation_error_deg(v.quaternion_wxyz, s.quaternion)))
    report['refine_640x480_ms'] = {k: {'p50': round(_pct(v, 50), 1), 'p95': round(_pct(v, 95), 1)}
                                   for k, v in stages.items()}
    report['refine_640x480_quality'] = {
        'queries': len(test), 'verified_fraction': n_ok / len(test),
        'median_t_m': statistics.median(t_err) if t_err else math.nan,
        'median_r_deg': statistics.median(r_err) if r_err else math.nan,
        'wrong_verified': int(sum(t > 0.25 or r > 2.0 for t, r in zip(t_err, r_err)))}
    print(f'640x480 map: {report["vga_map"]}')
    print('refinement at 640x480, ms p50/p95: ' + ', '.join(
        f'{k} {v["p50"]}/{v["p95"]}' for k, v in report['refine_640x480_ms'].items()))
    print(f'640x480 quality: {report["refine_640x480_quality"]}', flush=True)

    # 3. large map
    if args.large:
        big = write_dataset(work / 'large', SceneConfig(seed=0, n_train=args.large, n_test=1),
                            progress=False)
        report['large_map'] = _map_stats(model, big, work / 'large.map.npz', args.features)
        print(f'large map ({args.large} frames, 320x240): {report["large_map"]}')
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
